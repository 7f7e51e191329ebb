// What the transports' fuzzers (tcp/tcp_peer_fuzz.cc, shm/shm_peer_fuzz.cc) share: a ChunkFeed
// that checks the transport's bookkeeping, and the failures transport.h lets Execute report.
// Header-only: each fuzzer is one translation unit compiled by cmake/FerryFuzz.cmake.
#ifndef FERRY_TRANSFER_FUZZ_FEED_H_
#define FERRY_TRANSFER_FUZZ_FEED_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "transfer/transport.h"

namespace ferry::internal {

// Hands out `pieces` (to any number of streams), traps unless each is reported done exactly
// once, counts the bytes reported moved, and hands out nothing more after `deadline`.
class FuzzFeed final : public ChunkFeed {
 public:
  FuzzFeed(std::vector<Chunk> pieces, std::vector<uint32_t> regions,
           absl::Time deadline = absl::InfiniteFuture())
      : pieces_(std::move(pieces)),
        regions_(std::move(regions)),
        done_(pieces_.size()),
        deadline_(deadline) {}
  bool Next(Chunk* chunk) override {
    if (stopping()) return false;
    const size_t i = next_.fetch_add(1);
    if (i >= pieces_.size()) return false;
    *chunk = pieces_[i];
    return true;
  }
  void Moved(uint64_t bytes) override { moved.fetch_add(bytes); }
  void Done(const Chunk& chunk) override {
    if (chunk.index >= done_.size() || done_[chunk.index].fetch_add(1) != 0) __builtin_trap();
  }
  bool stopping() const override { return absl::Now() > deadline_; }
  const std::vector<uint32_t>& regions() const override { return regions_; }
  bool AllDone() const {
    for (const auto& d : done_) {
      if (d.load() != 1) return false;
    }
    return true;
  }

  std::atomic<uint64_t> moved{0};

 private:
  const std::vector<Chunk> pieces_;
  const std::vector<uint32_t> regions_;
  std::vector<std::atomic<int>> done_;
  const absl::Time deadline_;
  std::atomic<size_t> next_{0};
};

// A failure Execute (or creating the connection) may report: transport.h's list, plus
// PermissionDenied (the source refused the secret) and FailedPrecondition (another protocol
// version, or a connection an earlier failure left unusable).
inline bool TransportFailure(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kFailedPrecondition:
      return true;
    default:
      return false;
  }
}

}  // namespace ferry::internal

#endif  // FERRY_TRANSFER_FUZZ_FEED_H_
