// DeviceAllocation for CUDA builds.
#include "cuda/device_allocation.h"

#include "absl/strings/str_cat.h"
#include "cuda/driver.h"
#include "cuda/driver_api.h"

namespace ferry::internal::cuda {

StatusOr<std::unique_ptr<DeviceAllocation>> DeviceAllocation::Create(const Driver& driver,
                                                                     int device, uint64_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("a device allocation needs bytes > 0");
  if (device < 0 || device >= driver.device_count()) {
    return absl::InvalidArgumentError(absl::StrCat("cuda:", device,
                                                   " does not exist: this process sees ",
                                                   driver.device_count(), " device(s)"));
  }
  const DriverApi& api = driver.api();
  CUdevice dev;
  FERRY_RETURN_IF_ERROR(driver.Check(api.cuDeviceGet(&dev, device), "cuDeviceGet"));
  CUcontext context;
  FERRY_RETURN_IF_ERROR(driver.Check(api.cuDevicePrimaryCtxRetain(&context, dev),
                                     "cuDevicePrimaryCtxRetain",
                                     absl::StatusCode::kFailedPrecondition));
  CUdeviceptr ptr = 0;
  Status s = driver.Check(api.cuCtxSetCurrent(context), "cuCtxSetCurrent");
  if (s.ok()) {
    const CUresult r = api.cuMemAlloc(&ptr, bytes);
    s = driver.Check(r, "cuMemAlloc",
                     r == CUDA_ERROR_OUT_OF_MEMORY ? absl::StatusCode::kResourceExhausted
                                                   : absl::StatusCode::kInternal);
  }
  if (!s.ok()) {
    api.cuDevicePrimaryCtxRelease(dev);
    return Status(s.code(),
                  absl::StrCat("allocating ", bytes, " bytes on cuda:", device, ": ", s.message()));
  }
  return std::unique_ptr<DeviceAllocation>(new DeviceAllocation(driver, device, ptr, bytes));
}

DeviceAllocation::~DeviceAllocation() {
  const DriverApi& api = driver_.api();
  CUdevice dev;
  CUcontext context;
  if (api.cuDeviceGet(&dev, device_) != CUDA_SUCCESS) return;
  // Retained again only to make it current; released twice below (this one and Create's).
  if (api.cuDevicePrimaryCtxRetain(&context, dev) == CUDA_SUCCESS) {
    api.cuCtxSetCurrent(context);
    api.cuMemFree(address_);
    api.cuDevicePrimaryCtxRelease(dev);
  }
  api.cuDevicePrimaryCtxRelease(dev);
}

}  // namespace ferry::internal::cuda
