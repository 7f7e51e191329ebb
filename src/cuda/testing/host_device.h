// A fake Device for tests (device.h): its "device memory" is host memory (an address is a host
// pointer as uint64_t) and its copies run LATER, in stream order, on a worker thread per stream,
// throttled to a rate. A pipeline that reuses host memory before the copy reading it completed
// therefore gets wrong bytes, as it would on a GPU. It can hold copies back (so a test can see a
// copy in flight without timing), fail chosen copies, and report markers reached too early (the
// bug a correct pipeline must not depend on). Linked into tests only.
//
// Thread-safety: thread-safe.
#ifndef FERRY_CUDA_TESTING_HOST_DEVICE_H_
#define FERRY_CUDA_TESTING_HOST_DEVICE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "cuda/device.h"

namespace ferry::internal::cuda::testing {

struct HostDeviceOptions {
  std::string name = "host fake device";
  // Copy rate of each stream, bytes per second; 0: as fast as memcpy.
  uint64_t bytes_per_second = 0;
  // Called before each copy runs; true fails it (and the stream from then on).
  std::function<bool(bool to_device, uint64_t device_address, uint64_t n)> fail_copy;
  // Markers are reached as soon as they are recorded, whatever the copies before them: a lying
  // device, to show that a pipeline trusting it reuses memory too early and corrupts data.
  bool report_reached_early = false;
};

class HostStream;

class HostDevice final : public Device {
 public:
  explicit HostDevice(HostDeviceOptions options = {});
  ~HostDevice() override;

  static uint64_t Address(const void* p) { return reinterpret_cast<uint64_t>(p); }

  const std::string& name() const override { return options_.name; }
  StatusOr<std::unique_ptr<CopyStream>> CreateStream() override;
  StatusOr<std::unique_ptr<PinnedMemory>> AllocatePinned(uint64_t bytes) override;

  // While held, copies queue on their streams but none starts.
  void Hold();
  void Resume();

  // Copies enqueued on any stream, and those that finished (run or failed).
  uint64_t copies_enqueued() const { return enqueued_.load(); }
  uint64_t copies_finished() const { return finished_.load(); }
  uint64_t copies_in_flight() const { return enqueued_.load() - finished_.load(); }
  uint64_t pinned_allocations() const { return pinned_.load(); }

 private:
  friend class HostStream;
  void Deregister(HostStream* s);

  const HostDeviceOptions options_;
  std::atomic<uint64_t> enqueued_{0};
  std::atomic<uint64_t> finished_{0};
  std::atomic<uint64_t> pinned_{0};
  absl::Mutex mu_;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<HostStream*> streams_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::internal::cuda::testing

#endif  // FERRY_CUDA_TESTING_HOST_DEVICE_H_
