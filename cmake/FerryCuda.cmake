# CUDA support (docs/architecture.md, "GPU memory"). FERRY_CUDA:
#   AUTO  build it when the CUDA toolkit (nvcc and headers) is found (the default),
#   ON    require the toolkit (configure fails without it),
#   OFF   never; ferry_cuda's functions then answer FailedPrecondition "built without CUDA".
# Nothing links the driver: libcuda.so.1 is opened at run time (src/cuda/driver.cc), so every
# binary starts on a machine without one. Only the toolkit's headers, nvcc (the checksum kernel)
# and bin2c (to embed the kernel's fatbin) are used at build time.
set(FERRY_CUDA "AUTO" CACHE STRING "CUDA support: AUTO, ON or OFF")
set_property(CACHE FERRY_CUDA PROPERTY STRINGS AUTO ON OFF)
if(NOT FERRY_CUDA MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "FERRY_CUDA=${FERRY_CUDA}: use AUTO, ON or OFF")
endif()

set(FERRY_WITH_CUDA OFF)
if(NOT FERRY_CUDA STREQUAL "OFF")
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND AND CUDAToolkit_NVCC_EXECUTABLE AND EXISTS "${CUDAToolkit_BIN_DIR}/bin2c")
    set(FERRY_WITH_CUDA ON)
  elseif(FERRY_CUDA STREQUAL "ON")
    message(FATAL_ERROR "FERRY_CUDA=ON but no CUDA toolkit (nvcc, cuda.h, bin2c) was found; "
                        "install it (e.g. /usr/local/cuda), set CUDAToolkit_ROOT, or use -DFERRY_CUDA=AUTO")
  endif()
endif()
message(STATUS "ferry: CUDA support ${FERRY_WITH_CUDA} (FERRY_CUDA=${FERRY_CUDA})")
