// OpenCudaDevice for FERRY_CUDA=OFF builds: answers kBuiltWithoutCuda.
#include "cuda/device.h"
#include "cuda/driver.h"

namespace ferry::internal::cuda {

StatusOr<std::unique_ptr<Device>> OpenCudaDevice(const Driver&, int) {
  return absl::FailedPreconditionError(kBuiltWithoutCuda);
}

}  // namespace ferry::internal::cuda
