// Driver for FERRY_CUDA=OFF builds: every entry answers kBuiltWithoutCuda.
#include "cuda/allocation_pieces.h"
#include "cuda/device_allocation.h"
#include "cuda/device_pool.h"
#include "cuda/driver.h"

namespace ferry::internal::cuda {

// Never defined in this build; declared complete so unique_ptr<DriverApi> can be destroyed.
struct DriverApi {};

bool BuiltWithCuda() { return false; }

Driver::Driver(std::unique_ptr<DriverApi> api, int version, int device_count)
    : api_(std::move(api)), version_(version), device_count_(device_count) {}

Driver::~Driver() = default;

StatusOr<std::unique_ptr<Driver>> Driver::Open(const DriverOptions&) {
  return absl::FailedPreconditionError(kBuiltWithoutCuda);
}

StatusOr<const Driver*> Driver::Default() {
  return absl::FailedPreconditionError(kBuiltWithoutCuda);
}

Status Driver::Check(int result, const char* call, absl::StatusCode code) const {
  if (result == 0) return absl::OkStatus();
  return Status(code, kBuiltWithoutCuda);
}

StatusOr<std::unique_ptr<AllocationQuery>> DriverAllocationQuery(const Driver&) {
  return absl::FailedPreconditionError(kBuiltWithoutCuda);
}

StatusOr<std::unique_ptr<DeviceAllocation>> DeviceAllocation::Create(const Driver&, int, uint64_t) {
  return absl::FailedPreconditionError(kBuiltWithoutCuda);
}

// Never constructed in this build; defined so that unique_ptr<DeviceAllocation> links.
class PrimaryContext {};
DeviceAllocation::~DeviceAllocation() = default;

StatusOr<int> DeviceOfAddress(const Driver&, uint64_t) {
  return absl::FailedPreconditionError(kBuiltWithoutCuda);
}

}  // namespace ferry::internal::cuda
