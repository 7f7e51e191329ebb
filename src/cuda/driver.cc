// Driver::Open for CUDA builds: dlopen, cuGetProcAddress for every entry point, cuInit.
#include "cuda/driver.h"

#include <dlfcn.h>

#include "absl/strings/str_cat.h"
#include "cuda/driver_api.h"

namespace ferry::internal::cuda {
namespace {

using GetProcAddressFn = CUresult (*)(const char*, void**, int, cuuint64_t,
                                      CUdriverProcAddressQueryResult*);

// Names for the results a driver that cannot work (the toolkit's stub, a driver without a
// device) returns without being able to name them itself: its cuGetErrorName fails too.
const char* FallbackErrorName(CUresult r) {
  switch (r) {
    case CUDA_ERROR_STUB_LIBRARY:
      return "CUDA_ERROR_STUB_LIBRARY (the toolkit's stub libcuda, not a driver)";
    case CUDA_ERROR_NO_DEVICE:
      return "CUDA_ERROR_NO_DEVICE (no CUDA-capable device)";
    case CUDA_ERROR_NOT_INITIALIZED:
      return "CUDA_ERROR_NOT_INITIALIZED";
    default:
      return nullptr;
  }
}

}  // namespace

bool BuiltWithCuda() { return true; }

Driver::Driver(std::unique_ptr<DriverApi> api, int version, int device_count)
    : api_(std::move(api)), version_(version), device_count_(device_count) {}

Driver::~Driver() = default;

StatusOr<std::unique_ptr<Driver>> Driver::Open(const DriverOptions& options) {
  dlerror();
  void* library = dlopen(options.library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    const char* why = dlerror();
    return absl::FailedPreconditionError(
        absl::StrCat("the CUDA driver (", options.library,
                     ") could not be loaded: ", why != nullptr ? why : "unknown dlopen error",
                     "; install the NVIDIA driver (R525 or newer) on this machine, or use host "
                     "memory"));
  }
  // cuInit first, through plain dlsym: a stub library or a machine without a device fails here
  // with the driver's own reason, before anything else is asked of it.
  auto table = std::make_unique<DriverApi>();
  table->cuInit = reinterpret_cast<decltype(table->cuInit)>(dlsym(library, "cuInit"));
  table->cuGetErrorName =
      reinterpret_cast<decltype(table->cuGetErrorName)>(dlsym(library, "cuGetErrorName"));
  table->cuGetErrorString =
      reinterpret_cast<decltype(table->cuGetErrorString)>(dlsym(library, "cuGetErrorString"));
  if (table->cuInit == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        options.library, " has no cuInit: it is not a CUDA driver; install the NVIDIA driver"));
  }
  std::unique_ptr<Driver> driver(new Driver(std::move(table), 0, 0));
  const CUresult init = driver->api_->cuInit(0);
  if (init != CUDA_SUCCESS) {
    Status s = driver->Check(init, "cuInit", absl::StatusCode::kFailedPrecondition);
    return absl::FailedPreconditionError(
        absl::StrCat("the CUDA driver ", options.library, " is not usable: ", s.message(),
                     "; check that a GPU and its driver are visible to this process "
                     "(nvidia-smi, CUDA_VISIBLE_DEVICES, the container's device mounts)"));
  }
  auto get_proc = reinterpret_cast<GetProcAddressFn>(dlsym(library, "cuGetProcAddress_v2"));
  if (get_proc == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the CUDA driver ", options.library,
        " has no cuGetProcAddress_v2: it is older than CUDA 12 (R525); update the NVIDIA driver"));
  }
  DriverApi* api = driver->api_.get();
  std::string missing;
#define FERRY_CUDA_RESOLVE(name)                                                      \
  {                                                                                   \
    void* fn = nullptr;                                                               \
    CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;      \
    if (get_proc(#name, &fn, kCudaAbiVersion, CU_GET_PROC_ADDRESS_DEFAULT, &found) != \
            CUDA_SUCCESS ||                                                           \
        fn == nullptr) {                                                              \
      absl::StrAppend(&missing, missing.empty() ? "" : ", ", #name);                  \
    } else {                                                                          \
      api->name = reinterpret_cast<decltype(api->name)>(fn);                          \
    }                                                                                 \
  }
  FERRY_CUDA_DRIVER_FUNCTIONS(FERRY_CUDA_RESOLVE)
#undef FERRY_CUDA_RESOLVE
  if (!missing.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the CUDA driver ", options.library, " lacks entry points ferry needs (",
                     missing, "); update the NVIDIA driver to R525 or newer"));
  }
  FERRY_RETURN_IF_ERROR(driver->Check(api->cuDriverGetVersion(&driver->version_),
                                      "cuDriverGetVersion", absl::StatusCode::kFailedPrecondition));
  int count = 0;
  FERRY_RETURN_IF_ERROR(driver->Check(driver->api().cuDeviceGetCount(&count), "cuDeviceGetCount",
                                      absl::StatusCode::kFailedPrecondition));
  driver->device_count_ = count;
  return driver;
}

StatusOr<const Driver*> Driver::Default() {
  // Opened once and kept for the process's life (never destroyed: see ~Driver).
  static const auto* const opened =
      new StatusOr<std::unique_ptr<Driver>>(Driver::Open(DriverOptions{}));
  if (!opened->ok()) return opened->status();
  return opened->value().get();
}

Status Driver::Check(int result, const char* call, absl::StatusCode code) const {
  if (result == CUDA_SUCCESS) return absl::OkStatus();
  const char* name = nullptr;
  const char* text = nullptr;
  const auto r = static_cast<CUresult>(result);
  if (api_->cuGetErrorName == nullptr || api_->cuGetErrorName(r, &name) != CUDA_SUCCESS) {
    name = nullptr;
  }
  if (api_->cuGetErrorString == nullptr || api_->cuGetErrorString(r, &text) != CUDA_SUCCESS) {
    text = nullptr;
  }
  if (name == nullptr) {
    if (const char* fallback = FallbackErrorName(r)) {
      return Status(code, absl::StrCat(call, " failed: ", fallback));
    }
    return Status(code, absl::StrCat(call, " failed: CUresult ", result));
  }
  return Status(code, absl::StrCat(call, " failed: ", name,
                                   text != nullptr ? absl::StrCat(" (", text, ")") : ""));
}

}  // namespace ferry::internal::cuda
