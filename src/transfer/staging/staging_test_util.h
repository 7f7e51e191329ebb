// Test support for the staging pipeline: a host-memory PeerConnection standing in for the wire
// and a checksum.
#ifndef FERRY_TRANSFER_STAGING_STAGING_TEST_UTIL_H_
#define FERRY_TRANSFER_STAGING_STAGING_TEST_UTIL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "transfer/transport.h"

namespace ferry::internal::staging::testing {

// FNV-1a over `n` bytes.
inline uint64_t Checksum(const void* data, uint64_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t h = 14695981039346656037ull;
  for (uint64_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// A PeerConnection over host memory: each of `threads` workers takes up to `window` pieces
// from the feed (as a TCP stream keeps requests in flight), then delivers the oldest by copying
// it from `source` (remote region 0), reports it Done, and asks again. With bytes_per_second,
// the workers share one link of that rate: a piece arrives when the link has carried it.
class FakeWire final : public PeerConnection {
 public:
  FakeWire(const char* source, int threads, int window)
      : source_(source), threads_(threads), window_(window) {}

  Status Execute(ChunkFeed& feed) override {
    {
      absl::MutexLock lock(&mu_);
      error_ = absl::OkStatus();
    }
    failed_.store(false);
    std::vector<std::thread> workers;
    for (int t = 1; t < threads_; ++t) workers.emplace_back([&] { Run(feed); });
    Run(feed);
    for (std::thread& w : workers) w.join();
    absl::MutexLock lock(&mu_);
    return error_;
  }
  void Close() override {}

  // Called after each piece was Done, with the number delivered so far (from a worker).
  std::function<void(uint64_t delivered)> on_delivered;
  // Fails the read instead of delivering the piece after this many (0: never).
  uint64_t fail_after = 0;
  // The link's rate (0: as fast as memcpy). Set before Execute.
  uint64_t bytes_per_second = 0;
  std::atomic<uint64_t> delivered{0};

 private:
  void Run(ChunkFeed& feed) {
    std::deque<Chunk> held;
    bool exhausted = false;
    for (;;) {
      if (feed.stopping() || failed_.load()) return;
      Chunk c;
      while (!exhausted && held.size() < static_cast<size_t>(window_)) {
        if (!feed.Next(&c)) {
          exhausted = true;
          break;
        }
        held.push_back(c);
      }
      if (held.empty()) return;
      c = held.front();
      held.pop_front();
      if (fail_after > 0 && delivered.load() >= fail_after) {
        absl::MutexLock lock(&mu_);
        if (error_.ok()) {
          error_ = absl::UnavailableError(
              absl::StrCat("fake wire failed: connection lost while receiving ", RangeText(c)));
        }
        failed_.store(true);
        return;
      }
      if (bytes_per_second > 0) {
        absl::Time arrives;
        {
          absl::MutexLock lock(&mu_);
          link_free_ = std::max(link_free_, absl::Now()) +
                       absl::Seconds(static_cast<double>(c.length) / bytes_per_second);
          arrives = link_free_;
        }
        absl::SleepFor(arrives - absl::Now());  // the link carrying the piece
      }
      std::memcpy(c.local, source_ + c.remote_offset, c.length);
      feed.Moved(c.length);
      feed.Done(c);
      const uint64_t n = delivered.fetch_add(1) + 1;
      if (on_delivered) on_delivered(n);
      exhausted = false;
    }
  }

  const char* const source_;
  const int threads_;
  const int window_;
  std::atomic<bool> failed_{false};
  absl::Mutex mu_;
  Status error_ ABSL_GUARDED_BY(mu_);
  absl::Time link_free_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();  // when the link is idle
};

}  // namespace ferry::internal::staging::testing

#endif  // FERRY_TRANSFER_STAGING_STAGING_TEST_UTIL_H_
