#include "transfer/cuda_ipc/ipc_memory.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ferry::internal::cuda_ipc {

SegmentMapping::SegmentMapping(std::vector<Segment> segments) {
  for (const Segment& s : segments) {
    if (s.length == 0) continue;
    if (!segments_.empty()) {
      Segment& last = segments_.back();
      if (last.region_offset + last.length == s.region_offset &&
          last.address + last.length == s.address) {
        last.length += s.length;
        continue;
      }
    }
    segments_.push_back(s);
  }
}

std::pair<uint64_t, uint64_t> SegmentMapping::At(uint64_t offset) const {
  auto it =
      std::upper_bound(segments_.begin(), segments_.end(), offset,
                       [](uint64_t value, const Segment& s) { return value < s.region_offset; });
  if (it == segments_.begin()) return {0, 0};
  --it;
  if (offset - it->region_offset >= it->length) return {0, 0};
  const uint64_t into = offset - it->region_offset;
  return {it->address + into, it->length - into};
}

Status ValidateRecords(const std::vector<PieceRecord>& records, size_t fd_count, uint64_t size) {
  uint64_t covered = 0;
  size_t next_fd = 0;
  for (size_t i = 0; i < records.size(); ++i) {
    const PieceRecord& r = records[i];
    auto bad = [&](const std::string& why) {
      return absl::InvalidArgumentError(absl::StrCat("record ", i, " of ", records.size(), " ", why,
                                                     "; the source's export is corrupt"));
    };
    if (r.region_offset != covered) {
      return bad(absl::StrCat("starts at region offset ", r.region_offset, ", expected ", covered));
    }
    if (r.length == 0 || r.offset > r.allocation_size || r.length > r.allocation_size - r.offset ||
        r.length > size - covered) {
      return bad(absl::StrCat("claims [", r.offset, ", +", r.length, ") of an allocation of ",
                              r.allocation_size, " bytes"));
    }
    // Only the first piece may start inside its allocation, only the last may end early: any
    // other layout would not be contiguous.
    if ((i > 0 && r.offset != 0) ||
        (i + 1 < records.size() && r.offset + r.length != r.allocation_size)) {
      return bad("leaves a gap between allocations");
    }
    if (r.kind == static_cast<uint32_t>(cuda::ExportKind::kPosixFd)) {
      if (r.fd_index != next_fd || r.fd_index >= fd_count) {
        return bad(absl::StrCat("names descriptor ", r.fd_index, " of ", fd_count));
      }
      ++next_fd;
    } else if (r.kind != static_cast<uint32_t>(cuda::ExportKind::kLegacyIpc) &&
               r.kind != static_cast<uint32_t>(cuda::ExportKind::kFabric)) {
      return bad(absl::StrCat("has export kind ", r.kind));
    }
    covered += r.length;
  }
  if (covered != size || next_fd != fd_count) {
    return absl::InvalidArgumentError(absl::StrCat("the records cover ", covered, " of ", size,
                                                   " bytes and name ", next_fd, " of ", fd_count,
                                                   " descriptors; the source's export is corrupt"));
  }
  return absl::OkStatus();
}

}  // namespace ferry::internal::cuda_ipc
