// OpenCudaIpcMemory for FERRY_CUDA=OFF builds.
#include "cuda/driver.h"
#include "transfer/cuda_ipc/ipc_memory.h"

namespace ferry::internal::cuda_ipc {

StatusOr<std::shared_ptr<IpcMemory>> OpenCudaIpcMemory() {
  return absl::FailedPreconditionError(cuda::kBuiltWithoutCuda);
}

}  // namespace ferry::internal::cuda_ipc
