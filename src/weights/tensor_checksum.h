// Per-tensor checksums: XXH3-64 (seed 0) of each tensor's bytes. The algorithm name travels with
// the values so that a reader can tell which function produced them.
#ifndef FERRY_WEIGHTS_TENSOR_CHECKSUM_H_
#define FERRY_WEIGHTS_TENSOR_CHECKSUM_H_

#include <cstdint>
#include <vector>

#include "weights/safetensors.h"

namespace ferry::weights {

inline constexpr char kChecksumAlgorithm[] = "xxh3-64";

// XXH3_64bits(data, size) with seed 0. `data` may be null when size is 0. Thread-safe.
uint64_t TensorChecksum(const void* data, uint64_t size);

// Returns TensorChecksum of each tensor, in the order of `tensors`, reading
// base[t.offset, t.offset + t.size). Tensors are spread over up to `threads` threads (values
// below 1 mean 1), largest first, each to the least-loaded thread; one tensor is never split, so
// a model dominated by one tensor runs at about one core's speed. The threads are joined before
// returning. REQUIRES: base covers every tensor's range.
std::vector<uint64_t> ChecksumTensors(const uint8_t* base, const std::vector<TensorInfo>& tensors,
                                      int threads);

// One range of memory to checksum.
struct ByteRange {
  const void* data = nullptr;  // may be null when size is 0
  uint64_t size = 0;
};

// ChecksumTensors for ranges anywhere in memory (tensors in many allocations).
std::vector<uint64_t> ChecksumRanges(const std::vector<ByteRange>& ranges, int threads);

}  // namespace ferry::weights

#endif  // FERRY_WEIGHTS_TENSOR_CHECKSUM_H_
