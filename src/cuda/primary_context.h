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

  // Makes the context current on the calling thread and leaves it there: for threads ferry
  // owns. On a caller's thread use ScopedContext, which restores the caller's context.
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

// The first device whose primary context is active in this process (retained by someone: PyTorch,
// the runtime, ferry), or -1 when none is. Asks only; creates nothing.
inline int ActivePrimaryDevice(const Driver& driver) {
  for (int ordinal = 0; ordinal < driver.device_count(); ++ordinal) {
    CUdevice device = 0;
    unsigned int flags = 0;
    int active = 0;
    if (driver.api().cuDeviceGet(&device, ordinal) == CUDA_SUCCESS &&
        driver.api().cuDevicePrimaryCtxGetState(device, &flags, &active) == CUDA_SUCCESS &&
        active != 0) {
      return ordinal;
    }
  }
  return -1;
}

// Makes a context current on the calling thread for the guard's life, then restores the one that
// was current before. Every driver call ferry makes on a thread it does not own goes through one:
// the CUDA runtime (and so PyTorch's current device) follows the thread's current context, so
// leaving another device's context current would move the caller's later work to that device.
class ScopedContext {
 public:
  explicit ScopedContext(const Driver& driver) : driver_(driver) {}
  ~ScopedContext() {
    if (entered_) driver_.api().cuCtxSetCurrent(previous_);
  }
  ScopedContext(const ScopedContext&) = delete;
  ScopedContext& operator=(const ScopedContext&) = delete;

  // Errors carry `code` and name the driver call. Entering again keeps the first saved context.
  Status Enter(CUcontext context, absl::StatusCode code = absl::StatusCode::kInternal) {
    if (!entered_) {
      FERRY_RETURN_IF_ERROR(
          driver_.Check(driver_.api().cuCtxGetCurrent(&previous_), "cuCtxGetCurrent", code));
    }
    FERRY_RETURN_IF_ERROR(
        driver_.Check(driver_.api().cuCtxSetCurrent(context), "cuCtxSetCurrent", code));
    entered_ = true;
    return absl::OkStatus();
  }
  Status Enter(const PrimaryContext& context, absl::StatusCode code = absl::StatusCode::kInternal) {
    return Enter(context.get(), code);
  }

  // For calls that need some context but not a particular one (pointer queries): keeps the
  // caller's context when there is one, else enters the primary context of a device that
  // already has one active (retained for the guard's life; none is ever created here).
  // FailedPrecondition when no device's primary context is active (then the process holds no
  // device memory, unless in contexts of its own made with cuCtxCreate).
  Status EnterAny() {
    CUcontext current = nullptr;
    FERRY_RETURN_IF_ERROR(
        driver_.Check(driver_.api().cuCtxGetCurrent(&current), "cuCtxGetCurrent"));
    if (current != nullptr) return absl::OkStatus();
    const int ordinal = ActivePrimaryDevice(driver_);
    if (ordinal >= 0) {
      FERRY_ASSIGN_OR_RETURN(borrowed_, PrimaryContext::Retain(driver_, ordinal));
      return Enter(*borrowed_);
    }
    return absl::FailedPreconditionError(
        "no device's primary context is active in this process (ferry queries pointers in "
        "primary contexts only; memory of a context made with cuCtxCreate is not seen)");
  }

 private:
  const Driver& driver_;
  CUcontext previous_ = nullptr;
  bool entered_ = false;
  // Released (as members are) after the destructor's body has restored the previous context.
  std::unique_ptr<PrimaryContext> borrowed_;
};

}  // namespace ferry::internal::cuda

#endif  // FERRY_CUDA_PRIMARY_CONTEXT_H_
