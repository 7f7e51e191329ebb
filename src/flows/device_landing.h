// What a pull needs when its destination is device memory: checksums computed where the tensors
// landed (the tree checksum on the GPU, leaf hashes by the kernel and the root on the host;
// whole-tensor XXH3-64, which cannot be split, over a copy in host memory), and copies back to
// host memory (to compare a failed copy with a verified one, and to write `-o`).
//
// Thread-safety: the functions are thread-safe (the verifier calls them from several threads).
#ifndef FERRY_FLOWS_DEVICE_LANDING_H_
#define FERRY_FLOWS_DEVICE_LANDING_H_

#include <cstdint>
#include <functional>

#include "ferry/status.h"
#include "flows/landing_verifier.h"
#include "weights/tensor_checksum.h"

namespace ferry::weights {

struct DeviceLanding {
  ChecksumFunction checksum;
  std::function<Status(void* host, const void* local, uint64_t n)> to_host;
};

// For GPU `ordinal` and the source's `algorithm`. FailedPrecondition where CUDA is not usable
// (the driver's or the build's reason), InvalidArgument for a GPU that does not exist.
StatusOr<DeviceLanding> MakeDeviceLanding(int ordinal, ChecksumAlgorithm algorithm);

// One synchronous copy between host memory and device memory of GPU `ordinal` (writing a pulled
// model to a file, loading a file into device memory). Errors as MakeDeviceLanding, and the
// copy's.
Status CopyDeviceToHost(int ordinal, const void* device_ptr, uint64_t n, void* host);
Status CopyHostToDevice(int ordinal, const void* host, uint64_t n, void* device_ptr);

}  // namespace ferry::weights

#endif  // FERRY_FLOWS_DEVICE_LANDING_H_
