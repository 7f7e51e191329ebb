#include "flows/device_landing.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cuda/device.h"
#include "cuda/device_checksum.h"
#include "cuda/driver.h"
#include "cuda/tree_checksum.h"

namespace ferry::weights {

StatusOr<DeviceLanding> MakeDeviceLanding(int ordinal, ChecksumAlgorithm algorithm) {
  using internal::cuda::CopyMarker;
  FERRY_ASSIGN_OR_RETURN(const internal::cuda::Driver* driver, internal::cuda::Driver::Default());
  FERRY_ASSIGN_OR_RETURN(std::shared_ptr<internal::cuda::Device> device,
                         internal::cuda::OpenCudaDevice(*driver, ordinal));
  FERRY_ASSIGN_OR_RETURN(std::shared_ptr<internal::cuda::CopyStream> stream,
                         device->CreateStream());
  DeviceLanding landing;
  // `device` stays alive as long as the stream that needs it: both captured.
  landing.to_host = [device, stream](void* host, const void* local, uint64_t n) -> Status {
    if (n == 0) return absl::OkStatus();
    FERRY_RETURN_IF_ERROR(stream->ToHost(host, reinterpret_cast<uint64_t>(local), n));
    FERRY_ASSIGN_OR_RETURN(CopyMarker marker, stream->Record());
    FERRY_ASSIGN_OR_RETURN(bool reached, stream->WaitUntil(marker, absl::InfiniteFuture()));
    if (!reached) return absl::InternalError("a device-to-host copy never completed");
    return absl::OkStatus();
  };
  if (algorithm == ChecksumAlgorithm::kXxh3Tree64k) {
    FERRY_ASSIGN_OR_RETURN(std::shared_ptr<internal::cuda::DeviceChecksummer> checksummer,
                           internal::cuda::DeviceChecksummer::Create(*driver, ordinal));
    landing.checksum = [checksummer](const void* data, uint64_t n) -> StatusOr<uint64_t> {
      std::vector<uint64_t> leaves(internal::cuda::TreeLeafCount(n));
      if (n > 0) {
        FERRY_RETURN_IF_ERROR(
            checksummer->LeafHashes(reinterpret_cast<uint64_t>(data), n, leaves.data(), nullptr));
      }
      return internal::cuda::TreeRoot(leaves.data(), leaves.size());
    };
  } else {
    landing.checksum = [to_host = landing.to_host, algorithm](const void* data,
                                                              uint64_t n) -> StatusOr<uint64_t> {
      std::string host(n, '\0');
      FERRY_RETURN_IF_ERROR(to_host(host.data(), data, n));
      return TensorChecksum(host.data(), n, algorithm);
    };
  }
  return landing;
}

namespace {

// Runs `enqueue` on a fresh stream of GPU `ordinal` and waits for it.
Status Synchronous(int ordinal, const std::function<Status(internal::cuda::CopyStream&)>& enqueue) {
  FERRY_ASSIGN_OR_RETURN(const internal::cuda::Driver* driver, internal::cuda::Driver::Default());
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<internal::cuda::Device> device,
                         internal::cuda::OpenCudaDevice(*driver, ordinal));
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<internal::cuda::CopyStream> stream,
                         device->CreateStream());
  FERRY_RETURN_IF_ERROR(enqueue(*stream));
  FERRY_ASSIGN_OR_RETURN(internal::cuda::CopyMarker marker, stream->Record());
  FERRY_ASSIGN_OR_RETURN(bool reached, stream->WaitUntil(marker, absl::InfiniteFuture()));
  if (!reached) return absl::InternalError("a copy never completed");
  return absl::OkStatus();
}

}  // namespace

Status CopyDeviceToHost(int ordinal, const void* device_ptr, uint64_t n, void* host) {
  if (n == 0) return absl::OkStatus();
  return Synchronous(ordinal, [&](internal::cuda::CopyStream& stream) {
    return stream.ToHost(host, reinterpret_cast<uint64_t>(device_ptr), n);
  });
}

Status CopyHostToDevice(int ordinal, const void* host, uint64_t n, void* device_ptr) {
  if (n == 0) return absl::OkStatus();
  return Synchronous(ordinal, [&](internal::cuda::CopyStream& stream) {
    return stream.ToDevice(reinterpret_cast<uint64_t>(device_ptr), host, n);
  });
}

}  // namespace ferry::weights
