// The cuda::Device of each GPU this process uses, opened on first use and shared by the
// transports: the TCP server stages a device region through the Device of the GPU holding it,
// and a target stages into the Device of its destination's GPU.
//
// Thread-safety: thread-safe.
#ifndef FERRY_CUDA_DEVICE_POOL_H_
#define FERRY_CUDA_DEVICE_POOL_H_

#include <cstdint>
#include <map>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "cuda/device.h"
#include "ferry/status.h"

namespace ferry::internal::cuda {

class DevicePool {
 public:
  DevicePool() = default;
  DevicePool(const DevicePool&) = delete;
  DevicePool& operator=(const DevicePool&) = delete;

  // The Device of GPU `ordinal` (owned by the pool). Errors as OpenCudaDevice, and
  // Driver::Default's FailedPrecondition where there is no usable driver.
  StatusOr<Device*> ForOrdinal(int ordinal);
  // The Device of the GPU holding device memory at `address`; InvalidArgument when the driver
  // does not know the address as device memory.
  StatusOr<Device*> ForAddress(uint64_t address);

 private:
  absl::Mutex mu_;
  std::map<int, std::unique_ptr<Device>> devices_ ABSL_GUARDED_BY(mu_);
};

// The ordinal of the GPU holding device memory at `address` (CUDA builds; FailedPrecondition
// kBuiltWithoutCuda otherwise).
StatusOr<int> DeviceOfAddress(const Driver& driver, uint64_t address);

}  // namespace ferry::internal::cuda

#endif  // FERRY_CUDA_DEVICE_POOL_H_
