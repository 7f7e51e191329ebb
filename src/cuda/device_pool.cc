#include "cuda/device_pool.h"

#include "cuda/driver.h"

namespace ferry::internal::cuda {

StatusOr<Device*> DevicePool::ForOrdinal(int ordinal) {
  FERRY_ASSIGN_OR_RETURN(const Driver* driver, Driver::Default());
  absl::MutexLock lock(&mu_);
  auto it = devices_.find(ordinal);
  if (it != devices_.end()) return it->second.get();
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<Device> device, OpenCudaDevice(*driver, ordinal));
  return devices_.emplace(ordinal, std::move(device)).first->second.get();
}

StatusOr<Device*> DevicePool::ForAddress(uint64_t address) {
  FERRY_ASSIGN_OR_RETURN(const Driver* driver, Driver::Default());
  FERRY_ASSIGN_OR_RETURN(int ordinal, DeviceOfAddress(*driver, address));
  return ForOrdinal(ordinal);
}

}  // namespace ferry::internal::cuda
