// The CUDA driver entry points ferry uses, one table resolved at run time (driver.cc). Included
// only by files compiled in CUDA builds (FERRY_WITH_CUDA): it needs the toolkit's cuda.h.
//
// Each member has the type of the function cuda.h declares under that name. cuda.h maps some
// names to versioned symbols (cuMemAlloc -> cuMemAlloc_v2); the member then carries the
// versioned name too, so `api.cuMemAlloc(...)` reads naturally, while cuGetProcAddress is asked
// for the plain name at the ABI of kCudaAbiVersion, which returns that same version.
#ifndef FERRY_CUDA_DRIVER_API_H_
#define FERRY_CUDA_DRIVER_API_H_

#include <cuda.h>

namespace ferry::internal::cuda {

// The ABI the table is resolved at (CUDA 12.0: drivers R525 and newer).
inline constexpr int kCudaAbiVersion = 12000;

// X(name) for every entry point. Add a function here and it is resolved (and required) at Open.
#define FERRY_CUDA_DRIVER_FUNCTIONS(X)      \
  X(cuInit)                                 \
  X(cuDriverGetVersion)                     \
  X(cuGetErrorName)                         \
  X(cuGetErrorString)                       \
  X(cuDeviceGetCount)                       \
  X(cuDeviceGet)                            \
  X(cuDeviceGetAttribute)                   \
  X(cuDeviceGetName)                        \
  X(cuDevicePrimaryCtxRetain)               \
  X(cuDevicePrimaryCtxRelease)              \
  X(cuDevicePrimaryCtxGetState)             \
  X(cuCtxSetCurrent)                        \
  X(cuCtxGetCurrent)                        \
  X(cuCtxSynchronize)                       \
  X(cuPointerGetAttribute)                  \
  X(cuMemGetAddressRange)                   \
  X(cuMemAlloc)                             \
  X(cuMemFree)                              \
  X(cuMemHostAlloc)                         \
  X(cuMemFreeHost)                          \
  X(cuMemHostRegister)                      \
  X(cuMemHostUnregister)                    \
  X(cuMemcpyAsync)                          \
  X(cuMemcpyHtoDAsync)                      \
  X(cuMemcpyDtoHAsync)                      \
  X(cuMemcpyDtoDAsync)                      \
  X(cuStreamCreate)                         \
  X(cuStreamDestroy)                        \
  X(cuStreamSynchronize)                    \
  X(cuEventCreate)                          \
  X(cuEventDestroy)                         \
  X(cuEventRecord)                          \
  X(cuEventQuery)                           \
  X(cuEventSynchronize)                     \
  X(cuIpcGetMemHandle)                      \
  X(cuIpcOpenMemHandle)                     \
  X(cuIpcCloseMemHandle)                    \
  X(cuMemCreate)                            \
  X(cuMemRelease)                           \
  X(cuMemRetainAllocationHandle)            \
  X(cuMemGetAllocationPropertiesFromHandle) \
  X(cuMemGetAllocationGranularity)          \
  X(cuMemExportToShareableHandle)           \
  X(cuMemImportFromShareableHandle)         \
  X(cuMemAddressReserve)                    \
  X(cuMemAddressFree)                       \
  X(cuMemMap)                               \
  X(cuMemUnmap)                             \
  X(cuMemSetAccess)                         \
  X(cuModuleLoadData)                       \
  X(cuModuleUnload)                         \
  X(cuModuleGetFunction)                    \
  X(cuLaunchKernel)

struct DriverApi {
#define FERRY_CUDA_DECLARE_ENTRY(name) decltype(&::name) name = nullptr;
  FERRY_CUDA_DRIVER_FUNCTIONS(FERRY_CUDA_DECLARE_ENTRY)
#undef FERRY_CUDA_DECLARE_ENTRY
};

}  // namespace ferry::internal::cuda

#endif  // FERRY_CUDA_DRIVER_API_H_
