// The CUDA driver, opened at run time. ferry never links libcuda (a binary linked against the
// toolkit's stub does not even start on a machine without a driver): `Driver::Open` loads
// libcuda.so.1 with dlopen, resolves every entry point ferry uses through cuGetProcAddress, and
// calls cuInit. Every host-only path works without it; whatever needs a GPU asks for a Driver
// and gets a FailedPrecondition that says what is missing.
//
// Thread-safety: Driver is thread-safe (the driver API is); Default() may be called from any
// thread.
#ifndef FERRY_CUDA_DRIVER_H_
#define FERRY_CUDA_DRIVER_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "ferry/status.h"

namespace ferry::internal::cuda {

// The message every CUDA entry point of a FERRY_CUDA=OFF build answers with (FailedPrecondition).
inline constexpr char kBuiltWithoutCuda[] =
    "this ferry was built without CUDA (FERRY_CUDA=OFF or no CUDA toolkit at build time); "
    "rebuild with the toolkit installed, or use host memory";

// Whether this build has CUDA support (FERRY_CUDA=ON, or AUTO with the toolkit found).
bool BuiltWithCuda();

struct DriverOptions {
  // The driver library to open: its soname by default, found by the dynamic loader. Tests name
  // a missing file or the toolkit's stub to reach the failure paths.
  std::string library = "libcuda.so.1";
};

// The resolved entry points (driver_api.h, compiled in CUDA builds only).
struct DriverApi;

class Driver {
 public:
  // Opens the driver. FailedPrecondition naming what failed: the build has no CUDA; the library
  // did not load (dlerror's text; install the NVIDIA driver); it has no cuGetProcAddress_v2 or
  // lacks an entry point ferry needs (a driver older than CUDA 12 / R525); cuInit failed (its
  // error name and text, e.g. CUDA_ERROR_NO_DEVICE, CUDA_ERROR_STUB_LIBRARY).
  static StatusOr<std::unique_ptr<Driver>> Open(const DriverOptions& options);
  // The process's driver, opened with default options on first use; every later call returns
  // the same answer (a failure included), so a machine without a GPU pays for one dlopen.
  static StatusOr<const Driver*> Default();

  // The library is deliberately never closed (its handle is dropped): drivers are not built to
  // be unloaded, and mappings or threads they made may outlive any object of ours.
  ~Driver();
  Driver(const Driver&) = delete;
  Driver& operator=(const Driver&) = delete;

  const DriverApi& api() const { return *api_; }
  // cuDriverGetVersion, e.g. 13000 for CUDA 13.0.
  int version() const { return version_; }
  // Devices visible to this process (cuDeviceGetCount).
  int device_count() const { return device_count_; }

  // OK for CUDA_SUCCESS (0); otherwise `code` with "<call> failed: <NAME> (<text>)".
  Status Check(int result, const char* call,
               absl::StatusCode code = absl::StatusCode::kInternal) const;

 private:
  Driver(std::unique_ptr<DriverApi> api, int version, int device_count);

  std::unique_ptr<DriverApi> api_;
  int version_;
  int device_count_;
};

}  // namespace ferry::internal::cuda

#endif  // FERRY_CUDA_DRIVER_H_
