#include "transfer/ucx/key_pieces.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ferry::internal::ucx {

Status CheckKeyPieces(const ferry::v1::RegionInfo& region) {
  uint64_t at = 0;
  for (const auto& piece : region.ucx_pieces()) {
    if (piece.offset() != at || piece.length() == 0 || piece.length() > region.size() - at ||
        piece.rkey().empty()) {
      return absl::DataLossError(
          absl::StrCat("region ", region.id(), ": its UCX key pieces do not cover its ",
                       region.size(), " bytes in order (piece at ", piece.offset(), " of ",
                       piece.length(), " bytes); the source's transfer blob is corrupt"));
    }
    at += piece.length();
  }
  if (at != region.size()) {
    return absl::DataLossError(absl::StrCat("region ", region.id(), ": its UCX key pieces cover ",
                                            at, " of its ", region.size(),
                                            " bytes; the source's transfer blob is corrupt"));
  }
  return absl::OkStatus();
}

absl::InlinedVector<KeySpan, 2> SplitAtKeyEdges(const std::vector<uint64_t>& starts,
                                                uint64_t region_size, uint64_t offset,
                                                uint64_t length) {
  absl::InlinedVector<KeySpan, 2> spans;
  if (length == 0 || starts.empty()) return spans;
  // The last piece starting at or before `offset`.
  size_t piece =
      static_cast<size_t>(std::upper_bound(starts.begin(), starts.end(), offset) - starts.begin()) -
      1;
  for (uint64_t done = 0; done < length; ++piece) {
    const uint64_t at = offset + done;
    const uint64_t end = piece + 1 < starts.size() ? starts[piece + 1] : region_size;
    if (at >= end) break;  // past the region's end (REQUIRES broken): no span, no endless loop
    const uint64_t n = std::min(length - done, end - at);
    spans.push_back({piece, at, n});
    done += n;
  }
  return spans;
}

}  // namespace ferry::internal::ucx
