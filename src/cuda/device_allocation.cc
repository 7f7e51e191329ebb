// DeviceAllocation for CUDA builds.
#include "cuda/device_allocation.h"

#include "absl/strings/str_cat.h"
#include "cuda/driver.h"
#include "cuda/driver_api.h"
#include "cuda/primary_context.h"

namespace ferry::internal::cuda {

DeviceAllocation::DeviceAllocation(std::unique_ptr<PrimaryContext> context, int device,
                                   uint64_t address, uint64_t size)
    : context_(std::move(context)), device_(device), address_(address), size_(size) {}

StatusOr<std::unique_ptr<DeviceAllocation>> DeviceAllocation::Create(const Driver& driver,
                                                                     int device, uint64_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("a device allocation needs bytes > 0");
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<PrimaryContext> context,
                         PrimaryContext::Retain(driver, device));
  ScopedContext in(driver);
  FERRY_RETURN_IF_ERROR(in.Enter(*context));
  CUdeviceptr ptr = 0;
  const CUresult r = driver.api().cuMemAlloc(&ptr, bytes);
  if (r != CUDA_SUCCESS) {
    Status s = driver.Check(r, "cuMemAlloc",
                            r == CUDA_ERROR_OUT_OF_MEMORY ? absl::StatusCode::kResourceExhausted
                                                          : absl::StatusCode::kInternal);
    return Status(s.code(),
                  absl::StrCat("allocating ", bytes, " bytes on cuda:", device, ": ", s.message()));
  }
  return std::unique_ptr<DeviceAllocation>(
      new DeviceAllocation(std::move(context), device, ptr, bytes));
}

DeviceAllocation::~DeviceAllocation() {
  // Freed in its own context, which is released after this body (context_).
  ScopedContext in(context_->driver());
  if (in.Enter(*context_).ok()) context_->driver().api().cuMemFree(address_);
}

}  // namespace ferry::internal::cuda
