// The device allocations behind a region. A region of device memory is whatever range the caller
// registered: a PyTorch storage lives inside a caching-allocator block that holds other tensors
// too, and an expandable-segments storage spans many cuMemCreate chunks mapped back to back.
// CUDA exports whole allocations only (an IPC handle for an interior pointer, or one handle over
// several allocations, maps the wrong bytes or faults), so a transport that exports device
// memory first splits each region into the allocations it touches, each exported by its base.
//
// Thread-safety: the functions are thread-safe when the AllocationQuery is.
#ifndef FERRY_CUDA_ALLOCATION_PIECES_H_
#define FERRY_CUDA_ALLOCATION_PIECES_H_

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "ferry/status.h"

namespace ferry::internal::cuda {

class Driver;

// How an allocation can be handed to another process.
// The values travel in CUDA IPC records (cuda_ipc::PieceRecord::kind): append, never renumber.
enum class ExportKind {
  kLegacyIpc,      // cudaMalloc / cuMemAlloc memory: a legacy IPC handle (cuIpcGetMemHandle)
  kPosixFd,        // cuMemCreate memory created with POSIX fd handles: an fd over SCM_RIGHTS
  kNotExportable,  // anything else (VMM memory without a shareable handle type, managed memory)
  kFabric,         // cuMemCreate memory with fabric handles only (IMEX hosts, e.g. GB200 NVL72):
                   // a 64-byte CUmemFabricHandle
};
std::string_view ExportKindName(ExportKind kind);
// Whether the allocation is cuMemCreate (VMM) memory the target maps into a reserved range,
// back to back with its neighbours (kPosixFd, kFabric).
inline bool IsVmmExport(ExportKind kind) {
  return kind == ExportKind::kPosixFd || kind == ExportKind::kFabric;
}

// One allocation, as the driver reports it for an address inside it.
struct AllocationInfo {
  uint64_t base = 0;
  uint64_t size = 0;
  ExportKind kind = ExportKind::kNotExportable;
  int device = -1;  // the ordinal of the GPU holding it; -1 where the query does not know
  // Whether an RDMA NIC may register it (CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE; true
  // where the driver does not say).
  bool rdma_capable = true;
};

// Answers "which allocation holds this device address". The CUDA implementation asks the
// driver (cuMemGetAddressRange, cuPointerGetAttribute); tests use a table.
class AllocationQuery {
 public:
  virtual ~AllocationQuery() = default;
  // NotFound when no allocation holds `address`; other codes when the query itself failed.
  virtual StatusOr<AllocationInfo> Find(uint64_t address) const = 0;
};

// The query over the real driver (CUDA builds; otherwise FailedPrecondition kBuiltWithoutCuda).
// Each Find runs in the caller's current context, or in an active primary context when the
// thread has none, and restores the thread's context. `driver` must outlive the query.
StatusOr<std::unique_ptr<AllocationQuery>> DriverAllocationQuery(const Driver& driver);

// One allocation a region touches, and the part of the region inside it.
struct AllocationPiece {
  AllocationInfo allocation;   // exported whole, by its base
  uint64_t region_offset = 0;  // where this piece starts in the region
  uint64_t offset = 0;         // ... and in the allocation (non-zero for the first piece only)
  uint64_t length = 0;         // bytes of the region in this allocation
};

// Splits [address, address + size) into the allocations behind it, in address order, so that
// the pieces' lengths add up to `size`. REQUIRES: size > 0. Errors name the region:
// InvalidArgument for a hole (an address no allocation holds: register only memory the CUDA
// allocator gave out); FailedPrecondition when `require_exportable` and an allocation cannot be
// exported (it names the allocation; staging through host memory still serves such a region);
// Internal when the query answers an allocation that does not contain the address asked about.
StatusOr<std::vector<AllocationPiece>> FindAllocationPieces(uint64_t address, uint64_t size,
                                                            const AllocationQuery& query,
                                                            bool require_exportable);

}  // namespace ferry::internal::cuda

#endif  // FERRY_CUDA_ALLOCATION_PIECES_H_
