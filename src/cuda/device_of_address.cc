// DeviceOfAddress for CUDA builds.
#include "absl/strings/str_format.h"
#include "cuda/device_pool.h"
#include "cuda/driver.h"
#include "cuda/driver_api.h"
#include "cuda/primary_context.h"

namespace ferry::internal::cuda {

StatusOr<int> DeviceOfAddress(const Driver& driver, uint64_t address) {
  // The query needs a context; the thread may be one of ferry's, with none current.
  ScopedContext context(driver);
  if (Status s = context.EnterAny(); !s.ok()) {
    if (s.code() != absl::StatusCode::kFailedPrecondition) return s;
    return absl::InvalidArgumentError(absl::StrFormat(
        "0x%x is not device memory (%s); register a device pointer (a CUDA tensor's storage) "
        "as MemoryKind::kCuda, or host memory as kHost",
        address, s.message()));
  }
  int ordinal = -1;
  const CUresult r = driver.api().cuPointerGetAttribute(
      &ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, static_cast<CUdeviceptr>(address));
  if (r != CUDA_SUCCESS || ordinal < 0) {
    Status s = driver.Check(r, "cuPointerGetAttribute(DEVICE_ORDINAL)",
                            absl::StatusCode::kInvalidArgument);
    return absl::InvalidArgumentError(absl::StrFormat(
        "0x%x is not device memory the CUDA driver knows (%s); register a device pointer "
        "(a CUDA tensor's storage) as MemoryKind::kCuda, or host memory as kHost",
        address, s.ok() ? "no device ordinal" : std::string(s.message())));
  }
  return ordinal;
}

}  // namespace ferry::internal::cuda
