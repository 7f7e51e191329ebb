// Device memory ferry allocates itself (a pull's destination, `ferry publish --device`): one
// cuMemAlloc on the device's primary context, so that CUDA IPC exports it as one allocation
// (a legacy IPC handle) and the staging pipeline copies to and from it.
//
// Thread-safety: thread-compatible; the memory itself is the caller's to synchronise.
#ifndef FERRY_CUDA_DEVICE_ALLOCATION_H_
#define FERRY_CUDA_DEVICE_ALLOCATION_H_

#include <cstdint>
#include <memory>

#include "ferry/status.h"

namespace ferry::internal::cuda {

class Driver;
class PrimaryContext;

class DeviceAllocation {
 public:
  // `bytes` (> 0) on device `device` of `driver` (which must outlive the allocation).
  // InvalidArgument for a device that does not exist (naming how many do); ResourceExhausted
  // when the device is out of memory; FailedPrecondition kBuiltWithoutCuda in OFF builds.
  static StatusOr<std::unique_ptr<DeviceAllocation>> Create(const Driver& driver, int device,
                                                            uint64_t bytes);
  ~DeviceAllocation();  // cuMemFree, then releases the primary context
  DeviceAllocation(const DeviceAllocation&) = delete;
  DeviceAllocation& operator=(const DeviceAllocation&) = delete;

  uint64_t address() const { return address_; }
  void* data() const { return reinterpret_cast<void*>(address_); }
  uint64_t size() const { return size_; }
  int device() const { return device_; }

 private:
  DeviceAllocation(std::unique_ptr<PrimaryContext> context, int device, uint64_t address,
                   uint64_t size);

  std::unique_ptr<PrimaryContext> context_;
  const int device_;
  const uint64_t address_;
  const uint64_t size_;
};

}  // namespace ferry::internal::cuda

#endif  // FERRY_CUDA_DEVICE_ALLOCATION_H_
