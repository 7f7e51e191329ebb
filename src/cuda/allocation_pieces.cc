#include "cuda/allocation_pieces.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ferry::internal::cuda {

std::string_view ExportKindName(ExportKind kind) {
  switch (kind) {
    case ExportKind::kLegacyIpc:
      return "legacy IPC (cudaMalloc)";
    case ExportKind::kPosixFd:
      return "POSIX fd (cuMemCreate)";
    case ExportKind::kNotExportable:
      return "not exportable";
    case ExportKind::kFabric:
      return "fabric handle (cuMemCreate)";
  }
  return "unknown";
}

StatusOr<std::vector<AllocationPiece>> FindAllocationPieces(uint64_t address, uint64_t size,
                                                            const AllocationQuery& query,
                                                            bool require_exportable) {
  const uint64_t end = address + size;
  auto region = [&] { return absl::StrFormat("device region [0x%x, 0x%x)", address, end); };
  if (size == 0 || end < address) {
    return absl::InvalidArgumentError(
        absl::StrCat(region(), ": a region needs a size > 0 that does not wrap around"));
  }
  std::vector<AllocationPiece> pieces;
  for (uint64_t at = address; at < end;) {
    auto info = query.Find(at);
    if (!info.ok()) {
      if (info.status().code() == absl::StatusCode::kNotFound) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s has a hole at 0x%x (no device allocation holds it); register only memory the "
            "CUDA allocator gave out, one tensor storage or allocation range at a time",
            region(), at));
      }
      return Status(info.status().code(), absl::StrCat(region(), ": ", info.status().message()));
    }
    if (info->size == 0 || info->base > at || at - info->base >= info->size) {
      return absl::InternalError(absl::StrFormat(
          "%s: the allocation query answered [0x%x, 0x%x) for address 0x%x, which it does not "
          "contain",
          region(), info->base, info->base + info->size, at));
    }
    if (require_exportable && info->kind == ExportKind::kNotExportable) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s lies in the allocation [0x%x, 0x%x), which cannot be exported to another process "
          "(no legacy IPC, POSIX fd or fabric handle type); allocate it with cudaMalloc or "
          "cuMemCreate with CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, or let ferry stage it "
          "through host memory (--transport tcp)",
          region(), info->base, info->base + info->size));
    }
    AllocationPiece piece;
    piece.allocation = *info;
    piece.region_offset = at - address;
    piece.offset = at - info->base;
    piece.length = std::min(end, info->base + info->size) - at;
    pieces.push_back(piece);
    at += piece.length;
  }
  return pieces;
}

}  // namespace ferry::internal::cuda
