// The remote keys of one region as a target sees them: host memory has one key over the whole
// region; device memory served with GPUDirect RDMA has one per allocation behind it
// (RegionInfo.ucx_pieces), and a read that crosses an allocation's edge needs one get per key.
// Pure functions over the blob's fields, so the checks and the splitting are tested on their own.
//
// Thread-safety: thread-compatible.
#ifndef FERRY_TRANSFER_UCX_KEY_PIECES_H_
#define FERRY_TRANSFER_UCX_KEY_PIECES_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "ferry/status.h"
#include "ferry/v1/transfer.pb.h"

namespace ferry::internal::ucx {

// DataLoss naming the region unless `region`'s ucx_pieces cover its size in order, without
// gaps, each non-empty with a key. (The blob is the source's word; a target checks it before
// any read.)
Status CheckKeyPieces(const ferry::v1::RegionInfo& region);

// One get of a read: `length` bytes at region offset `offset`, under key number `piece`.
struct KeySpan {
  size_t piece = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
};

// Splits [offset, offset + length) of a region at its pieces' edges. `starts`: each piece's
// first offset, ascending, starts[0] == 0 (pieces cover the region, as CheckKeyPieces makes
// sure). REQUIRES: offset + length <= the region's size. Empty for length 0.
absl::InlinedVector<KeySpan, 2> SplitAtKeyEdges(const std::vector<uint64_t>& starts,
                                                uint64_t region_size, uint64_t offset,
                                                uint64_t length);

}  // namespace ferry::internal::ucx

#endif  // FERRY_TRANSFER_UCX_KEY_PIECES_H_
