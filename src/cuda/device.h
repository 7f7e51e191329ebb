// A device with asynchronous copies: the one interface the staging pipeline
// (src/transfer/staging/) runs against, implemented over the CUDA driver (cuda_device.cc) and,
// for tests, over host memory with copies that run later (testing/host_device.h). Device
// memory is named by its address as a uint64_t (a CUdeviceptr); host memory by a pointer.
//
// Thread-safety: Device and CopyStream are thread-safe. Copies of one stream run in the order
// their calls returned; a stream's markers are reached in the order they were recorded.
#ifndef FERRY_CUDA_DEVICE_H_
#define FERRY_CUDA_DEVICE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "ferry/status.h"

namespace ferry::internal::cuda {

class Driver;

// A point in a CopyStream: reached once every copy enqueued before it completed. A default
// marker (seq 0) is always reached.
struct CopyMarker {
  uint64_t seq = 0;
};

// An ordered queue of asynchronous copies. A failed copy fails the stream: the markers after it
// (and every later call) answer its error, which names the device, the direction and the range.
// The destructor waits for the copies in flight, so the memory they touch may be freed after it.
class CopyStream {
 public:
  virtual ~CopyStream() = default;
  // Enqueues a copy of `n` bytes from host `src` to device address `dst`. `src` must stay valid
  // and unchanged until a marker recorded after this call is reached.
  virtual Status ToDevice(uint64_t dst, const void* src, uint64_t n) = 0;
  // Enqueues a copy of `n` bytes from device address `src` to host `dst`; `dst` holds them once
  // a marker recorded after this call is reached.
  virtual Status ToHost(void* dst, uint64_t src, uint64_t n) = 0;
  // A marker after every copy enqueued so far.
  virtual StatusOr<CopyMarker> Record() = 0;
  // Whether `marker` was reached, without blocking; the error of a failed copy before it.
  virtual StatusOr<bool> Reached(const CopyMarker& marker) = 0;
  // Waits until `marker` is reached (true) or `deadline` passes (false); the error of a failed
  // copy before it. Callers that must stay cancellable pass a deadline ~50 ms ahead and loop.
  virtual StatusOr<bool> WaitUntil(const CopyMarker& marker, absl::Time deadline) = 0;
};

// Page-locked host memory that a device copies to and from at full speed; freed on destruction.
// REQUIRES: the Device it came from outlives it.
class PinnedMemory {
 public:
  virtual ~PinnedMemory() = default;
  virtual char* data() const = 0;
  virtual uint64_t size() const = 0;
};

class Device {
 public:
  virtual ~Device() = default;
  // For messages: "cuda:0 (NVIDIA H100 80GB HBM3)", "host fake device".
  virtual const std::string& name() const = 0;
  // A new stream. REQUIRES: the device outlives it.
  virtual StatusOr<std::unique_ptr<CopyStream>> CreateStream() = 0;
  // `bytes` (> 0) of pinned host memory. ResourceExhausted when the system refuses it.
  virtual StatusOr<std::unique_ptr<PinnedMemory>> AllocatePinned(uint64_t bytes) = 0;
};

// CUDA device `ordinal` of `driver`, through its primary context (retained until the Device is
// destroyed). InvalidArgument for an ordinal the driver does not list; the driver's error naming
// the call otherwise; FailedPrecondition kBuiltWithoutCuda in a FERRY_CUDA=OFF build.
// REQUIRES: `driver` outlives the Device.
StatusOr<std::unique_ptr<Device>> OpenCudaDevice(const Driver& driver, int ordinal);

}  // namespace ferry::internal::cuda

#endif  // FERRY_CUDA_DEVICE_H_
