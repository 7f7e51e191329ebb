#include "cuda/testing/host_device.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace ferry::internal::cuda::testing {
namespace {

class HostPinned final : public PinnedMemory {
 public:
  explicit HostPinned(uint64_t size)
      : data_(static_cast<char*>(std::aligned_alloc(4096, (size + 4095) / 4096 * 4096))),
        size_(size) {}
  ~HostPinned() override { std::free(data_); }
  char* data() const override { return data_; }
  uint64_t size() const override { return size_; }

 private:
  char* const data_;
  const uint64_t size_;
};

}  // namespace

// One stream: a queue of copies and markers run by its worker thread, started by the
// constructor and joined by the destructor after the queue drained.
class HostStream final : public CopyStream {
 public:
  HostStream(HostDevice* device, bool held) : device_(device), held_(held) {
    worker_ = std::thread([this] { Run(); });
  }
  ~HostStream() override {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      held_ = false;  // a stream being destroyed drains its queue like cuStreamSynchronize
    }
    worker_.join();
    device_->Deregister(this);
  }

  Status ToDevice(uint64_t dst, const void* src, uint64_t n) override {
    return Enqueue(
        Entry{true, reinterpret_cast<char*>(dst), static_cast<const char*>(src), n, dst, 0});
  }
  Status ToHost(void* dst, uint64_t src, uint64_t n) override {
    return Enqueue(
        Entry{false, static_cast<char*>(dst), reinterpret_cast<const char*>(src), n, src, 0});
  }
  StatusOr<CopyMarker> Record() override {
    absl::MutexLock lock(&mu_);
    if (!failed_.ok()) return failed_;
    const uint64_t seq = ++last_seq_;
    if (device_->options_.report_reached_early) {
      reached_seq_ = seq;
    } else {
      queue_.push_back(Entry{false, nullptr, nullptr, 0, 0, seq});
    }
    return CopyMarker{seq};
  }
  StatusOr<bool> Reached(const CopyMarker& marker) override {
    absl::MutexLock lock(&mu_);
    if (!failed_.ok()) return failed_;
    return marker.seq <= reached_seq_;
  }
  StatusOr<bool> WaitUntil(const CopyMarker& marker, absl::Time deadline) override {
    absl::MutexLock lock(&mu_);
    auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !failed_.ok() || marker.seq <= reached_seq_;
    };
    mu_.AwaitWithDeadline(absl::Condition(&done), deadline);
    if (!failed_.ok()) return failed_;
    return marker.seq <= reached_seq_;
  }

  void SetHeld(bool held) {
    absl::MutexLock lock(&mu_);
    if (!stopping_) held_ = held;
  }

 private:
  struct Entry {
    bool to_device;
    char* dst;
    const char* src;
    uint64_t n;
    uint64_t device_address;
    uint64_t marker;  // non-zero: a marker, not a copy
  };

  Status Enqueue(Entry e) {
    absl::MutexLock lock(&mu_);
    if (!failed_.ok()) return failed_;
    device_->enqueued_.fetch_add(1);
    queue_.push_back(e);
    return absl::OkStatus();
  }

  void Run() {
    const HostDeviceOptions& options = device_->options_;
    for (;;) {
      Entry e;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return (!queue_.empty() && !held_) || (stopping_ && queue_.empty());
        };
        mu_.Await(absl::Condition(&ready));
        if (queue_.empty()) return;  // stopping
        e = queue_.front();
        if (e.marker != 0) {
          queue_.pop_front();
          if (failed_.ok()) reached_seq_ = e.marker;
          continue;
        }
      }
      bool fail =
          !Failed() && options.fail_copy && options.fail_copy(e.to_device, e.device_address, e.n);
      if (!fail && !Failed()) {
        if (options.bytes_per_second > 0) {
          // The copy's duration: it reads its source at the end, as late as a real copy may.
          absl::SleepFor(absl::Seconds(static_cast<double>(e.n) / options.bytes_per_second));
        }
        std::memcpy(e.dst, e.src, e.n);
      }
      absl::MutexLock lock(&mu_);
      queue_.pop_front();
      device_->finished_.fetch_add(1);
      if (fail && failed_.ok()) {
        failed_ = absl::InternalError(absl::StrCat(
            options.name, ": injected failure copying ", e.n, " bytes ",
            e.to_device ? "to" : "from", " device address 0x", absl::Hex(e.device_address)));
        // As on a CUDA stream after a failed copy, nothing queued behind it runs; drop it in the
        // same step, so that whoever sees the failure sees no copy in flight.
        for (const Entry& rest : queue_) {
          if (rest.marker == 0) device_->finished_.fetch_add(1);
        }
        queue_.clear();
      }
    }
  }

  bool Failed() {
    absl::MutexLock lock(&mu_);
    return !failed_.ok();
  }

  HostDevice* const device_;
  std::thread worker_;
  absl::Mutex mu_;
  bool held_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  Status failed_ ABSL_GUARDED_BY(mu_);
  uint64_t last_seq_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t reached_seq_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<Entry> queue_ ABSL_GUARDED_BY(mu_);
};

HostDevice::HostDevice(HostDeviceOptions options) : options_(std::move(options)) {}

HostDevice::~HostDevice() = default;

StatusOr<std::unique_ptr<CopyStream>> HostDevice::CreateStream() {
  absl::MutexLock lock(&mu_);
  auto stream = std::make_unique<HostStream>(this, held_);
  streams_.push_back(stream.get());
  return stream;
}

StatusOr<std::unique_ptr<PinnedMemory>> HostDevice::AllocatePinned(uint64_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("pinned memory of 0 bytes requested");
  pinned_.fetch_add(1);
  return std::make_unique<HostPinned>(bytes);
}

void HostDevice::Hold() {
  absl::MutexLock lock(&mu_);
  held_ = true;
  for (HostStream* s : streams_) s->SetHeld(true);
}

void HostDevice::Resume() {
  absl::MutexLock lock(&mu_);
  held_ = false;
  for (HostStream* s : streams_) s->SetHeld(false);
}

void HostDevice::Deregister(HostStream* s) {
  absl::MutexLock lock(&mu_);
  streams_.erase(std::remove(streams_.begin(), streams_.end(), s), streams_.end());
}

}  // namespace ferry::internal::cuda::testing
