// Per-tensor checksums. The algorithm's name travels with the values (TransferInfo's
// checksum_algorithm) so that a reader can tell which function produced them:
//   "xxh3-64"           XXH3-64 (seed 0) of the tensor's bytes: one core per tensor; what every
//                       ferry source of host memory advertises;
//   "xxh3-64-tree-64k"  the tree checksum (src/cuda/tree_checksum.h): XXH3-64 of 64 KiB leaves,
//                       then of the leaf hashes; its leaves are independent work, for CPU threads
//                       or a GPU kernel, so device memory is verified where it lies.
#ifndef FERRY_WEIGHTS_TENSOR_CHECKSUM_H_
#define FERRY_WEIGHTS_TENSOR_CHECKSUM_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "ferry/status.h"
#include "weights/safetensors.h"

namespace ferry::weights {

enum class ChecksumAlgorithm { kXxh3_64, kXxh3Tree64k };

// "xxh3-64" or "xxh3-64-tree-64k".
const char* ChecksumAlgorithmName(ChecksumAlgorithm algorithm);
// The algorithm named `name`; InvalidArgument listing the known names otherwise.
StatusOr<ChecksumAlgorithm> ParseChecksumAlgorithm(std::string_view name);

// The checksum of data[0, size) (seed 0). `data` may be null when size is 0. Thread-safe.
uint64_t TensorChecksum(const void* data, uint64_t size,
                        ChecksumAlgorithm algorithm = ChecksumAlgorithm::kXxh3_64);

// Returns TensorChecksum of each tensor, in the order of `tensors`, reading
// base[t.offset, t.offset + t.size). Tensors are spread over up to `threads` threads (values
// below 1 mean 1), largest first, each to the least-loaded thread; one tensor is never split, so
// a model dominated by one tensor runs at about one core's speed. The threads are joined before
// returning. REQUIRES: base covers every tensor's range.
std::vector<uint64_t> ChecksumTensors(const uint8_t* base, const std::vector<TensorInfo>& tensors,
                                      int threads,
                                      ChecksumAlgorithm algorithm = ChecksumAlgorithm::kXxh3_64);

// One range of memory to checksum.
struct ByteRange {
  const void* data = nullptr;  // may be null when size is 0
  uint64_t size = 0;
};

// ChecksumTensors for ranges anywhere in memory (tensors in many allocations).
std::vector<uint64_t> ChecksumRanges(const std::vector<ByteRange>& ranges, int threads,
                                     ChecksumAlgorithm algorithm = ChecksumAlgorithm::kXxh3_64);

}  // namespace ferry::weights

#endif  // FERRY_WEIGHTS_TENSOR_CHECKSUM_H_
