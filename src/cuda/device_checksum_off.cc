// DeviceChecksummer for FERRY_CUDA=OFF builds: Create answers kBuiltWithoutCuda, so no object
// ever exists.
#include "cuda/device_checksum.h"

namespace ferry::internal::cuda {

struct DeviceChecksummer::Impl {};

DeviceChecksummer::DeviceChecksummer(std::unique_ptr<Impl> impl, int device)
    : impl_(std::move(impl)), device_(device) {}

DeviceChecksummer::~DeviceChecksummer() = default;

StatusOr<std::unique_ptr<DeviceChecksummer>> DeviceChecksummer::Create(const Driver&, int) {
  return absl::FailedPreconditionError(kBuiltWithoutCuda);
}

Status DeviceChecksummer::LeafHashes(uint64_t, uint64_t, uint64_t*, void*) {
  return absl::FailedPreconditionError(kBuiltWithoutCuda);
}

}  // namespace ferry::internal::cuda
