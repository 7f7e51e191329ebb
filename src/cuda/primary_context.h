// A device's primary context (the one PyTorch and the CUDA runtime use), retained for the
// object's life: one RAII wrapper for every user in src/cuda/ and the CUDA IPC transport.
// Included only by files compiled in CUDA builds (it needs cuda.h through driver_api.h).
//
// Thread-safety: thread-safe (the driver calls are).
#ifndef FERRY_CUDA_PRIMARY_CONTEXT_H_
#define FERRY_CUDA_PRIMARY_CONTEXT_H_

#include <memory>

#include "absl/strings/str_cat.h"
#include "cuda/driver.h"
#include "cuda/driver_api.h"

namespace ferry::internal::cuda {

class PrimaryContext {
 public:
  // Retains device `ordinal`'s primary context. InvalidArgument for a device the driver does
  // not list; FailedPrecondition naming the driver call that failed.
  static StatusOr<std::unique_ptr<PrimaryContext>> Retain(const Driver& driver, int ordinal) {
    if (ordinal < 0 || ordinal >= driver.device_count()) {
      return absl::InvalidArgumentError(
          absl::StrCat("CUDA device cuda:", ordinal, " does not exist: this process sees ",
                       driver.device_count(), " device(s); check CUDA_VISIBLE_DEVICES"));
    }
    constexpr auto kCode = absl::StatusCode::kFailedPrecondition;
    CUdevice device = 0;
    FERRY_RETURN_IF_ERROR(
        driver.Check(driver.api().cuDeviceGet(&device, ordinal), "cuDeviceGet", kCode));
    CUcontext context = nullptr;
    FERRY_RETURN_IF_ERROR(driver.Check(driver.api().cuDevicePrimaryCtxRetain(&context, device),
                                       "cuDevicePrimaryCtxRetain", kCode));
    return std::unique_ptr<PrimaryContext>(new PrimaryContext(driver, device, context));
  }
  ~PrimaryContext() { driver_.api().cuDevicePrimaryCtxRelease(device_); }
  PrimaryContext(const PrimaryContext&) = delete;
  PrimaryContext& operator=(const PrimaryContext&) = delete;

  // Makes the context current on the calling thread.
  Status Enter() const {
    return driver_.Check(driver_.api().cuCtxSetCurrent(context_), "cuCtxSetCurrent");
  }
  CUcontext get() const { return context_; }
  CUdevice device() const { return device_; }
  const Driver& driver() const { return driver_; }

 private:
  PrimaryContext(const Driver& driver, CUdevice device, CUcontext context)
      : driver_(driver), device_(device), context_(context) {}

  const Driver& driver_;
  const CUdevice device_;
  const CUcontext context_;
};

}  // namespace ferry::internal::cuda

#endif  // FERRY_CUDA_PRIMARY_CONTEXT_H_
