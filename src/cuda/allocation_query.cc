// DriverAllocationQuery for CUDA builds.
#include "absl/strings/str_format.h"
#include "cuda/allocation_pieces.h"
#include "cuda/driver.h"
#include "cuda/driver_api.h"
#include "cuda/primary_context.h"

namespace ferry::internal::cuda {
namespace {

class DriverQuery : public AllocationQuery {
 public:
  explicit DriverQuery(const Driver& driver) : driver_(driver) {}

  StatusOr<AllocationInfo> Find(uint64_t address) const override {
    const DriverApi& api = driver_.api();
    ScopedContext context(driver_);
    if (Status s = context.EnterAny(); !s.ok()) {
      if (s.code() != absl::StatusCode::kFailedPrecondition) return s;
      return absl::NotFoundError(
          absl::StrFormat("no device allocation holds 0x%x (%s)", address, s.message()));
    }
    CUdeviceptr base = 0;
    size_t size = 0;
    const CUresult r = api.cuMemGetAddressRange(&base, &size, static_cast<CUdeviceptr>(address));
    if (r == CUDA_ERROR_NOT_FOUND || r == CUDA_ERROR_INVALID_VALUE) {
      return absl::NotFoundError(absl::StrFormat("no device allocation holds 0x%x", address));
    }
    FERRY_RETURN_IF_ERROR(driver_.Check(r, "cuMemGetAddressRange"));
    AllocationInfo info;
    info.base = base;
    info.size = size;
    int ordinal = -1;
    if (api.cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                  static_cast<CUdeviceptr>(address)) == CUDA_SUCCESS) {
      info.device = ordinal;
    }
    int rdma = 1;
    if (api.cuPointerGetAttribute(&rdma, CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE,
                                  static_cast<CUdeviceptr>(address)) == CUDA_SUCCESS) {
      info.rdma_capable = rdma != 0;
    }
    // Stream-ordered (cudaMallocAsync) pool memory is not a VMM mapping ferry can retain and
    // export by its own, even where the pool allows POSIX fd handles.
    CUmemoryPool pool = nullptr;
    if (api.cuPointerGetAttribute(&pool, CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE,
                                  static_cast<CUdeviceptr>(address)) == CUDA_SUCCESS &&
        pool != nullptr) {
      return info;
    }
    int legacy = 0;
    if (api.cuPointerGetAttribute(&legacy, CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE,
                                  static_cast<CUdeviceptr>(address)) == CUDA_SUCCESS &&
        legacy != 0) {
      info.kind = ExportKind::kLegacyIpc;
      return info;
    }
    uint64_t types = 0;
    if (api.cuPointerGetAttribute(&types, CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES,
                                  static_cast<CUdeviceptr>(address)) == CUDA_SUCCESS &&
        (types & (CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR | CU_MEM_HANDLE_TYPE_FABRIC)) != 0) {
      // A descriptor where allowed: it needs no IMEX channel.
      info.kind = (types & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) != 0 ? ExportKind::kPosixFd
                                                                          : ExportKind::kFabric;
    }
    return info;
  }

 private:
  const Driver& driver_;
};

}  // namespace

StatusOr<std::unique_ptr<AllocationQuery>> DriverAllocationQuery(const Driver& driver) {
  return std::unique_ptr<AllocationQuery>(new DriverQuery(driver));
}

}  // namespace ferry::internal::cuda
