// Tree checksum leaf hashes (tree_checksum.h) of device memory, computed on the GPU by the
// embedded kernel (tree_checksum_kernel.h). The values equal TreeLeafHashes of the same bytes on
// the host, so a receiver can check each leaf of a GPU buffer against hashes a sender computed on
// CPU threads, and the other way round.
//
// Thread-safety: thread-safe; calls to LeafHashes on one object are serialised (they share one
// scratch buffer). Use one object per thread for concurrent checksums on different streams.
#ifndef FERRY_CUDA_DEVICE_CHECKSUM_H_
#define FERRY_CUDA_DEVICE_CHECKSUM_H_

#include <cstdint>
#include <memory>

#include "cuda/driver.h"
#include "ferry/status.h"

namespace ferry::internal::cuda {

class DeviceChecksummer {
 public:
  // Retains `device`'s primary context and loads the kernel's module into it. `driver` is
  // borrowed and must outlive the checksummer. Errors: InvalidArgument for a device outside
  // [0, driver.device_count()); FailedPrecondition naming the driver call that failed (e.g.
  // cuModuleLoadData with CUDA_ERROR_NO_BINARY_FOR_GPU on a GPU older than sm_80 whose driver
  // cannot JIT the embedded PTX); kBuiltWithoutCuda in a FERRY_CUDA=OFF build.
  static StatusOr<std::unique_ptr<DeviceChecksummer>> Create(const Driver& driver, int device);

  // Unloads the module, frees the scratch buffer and releases the primary context.
  ~DeviceChecksummer();
  DeviceChecksummer(const DeviceChecksummer&) = delete;
  DeviceChecksummer& operator=(const DeviceChecksummer&) = delete;

  // Writes the TreeLeafCount(n) leaf hashes of the device bytes [device_ptr, device_ptr + n) to
  // host_out, running the kernel on `stream` (a CUstream; null: the legacy default stream) and
  // waiting for it: on return host_out is filled and no work of this call is pending. Work
  // queued earlier on `stream` (the copy that filled the buffer) runs first.
  // REQUIRES: host_out holds TreeLeafCount(n) values; the bytes stay unchanged until the call
  // returns; `stream`, if any, belongs to this device's primary context.
  // Errors: InvalidArgument when host_out or device_ptr is null for n > 0, or when some byte of
  // the range is not in an allocation of this device the driver knows (cuMemGetAddressRange,
  // allocation by allocation), checked before launching so a bad pointer cannot fault the kernel
  // and poison the shared context; Internal naming the driver call for a failure in the launch,
  // the copy or the wait.
  Status LeafHashes(uint64_t device_ptr, uint64_t n, uint64_t* host_out, void* stream);

  int device() const { return device_; }

 private:
  struct Impl;
  DeviceChecksummer(std::unique_ptr<Impl> impl, int device);

  std::unique_ptr<Impl> impl_;
  int device_;
};

}  // namespace ferry::internal::cuda

#endif  // FERRY_CUDA_DEVICE_CHECKSUM_H_
