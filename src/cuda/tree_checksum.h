// The tree checksum of a byte range ("xxh3-64-tree-64k"), the checksum that a GPU kernel
// (device_checksum.h) and CPU threads compute identically:
//   - the range is cut into leaves of kTreeLeafBytes (the last one may be shorter);
//   - leaf i is XXH3-64 (seed 0) of bytes [i * kTreeLeafBytes, min((i + 1) * kTreeLeafBytes, n));
//   - the root is XXH3-64 (seed 0) of the leaf hashes written as little-endian uint64, in order;
//   - an empty range has no leaves, and its root is XXH3-64 of the empty input.
// Leaves can be checked one by one as the bytes land (a receiver verifies each staged piece), and
// every leaf is independent work for a thread or a group of GPU threads.
//
// The host path uses xxh3_core.h, the same code the kernel runs, not libxxhash.
//
// Thread-safety: pure functions; TreeLeafHashes and TreeChecksum start and join their own threads.
#ifndef FERRY_CUDA_TREE_CHECKSUM_H_
#define FERRY_CUDA_TREE_CHECKSUM_H_

#include <cstdint>

namespace ferry::internal::cuda {

inline constexpr char kTreeChecksumAlgorithm[] = "xxh3-64-tree-64k";
inline constexpr uint64_t kTreeLeafBytes = 64 * 1024;

// Number of leaves of an n-byte range: ceil(n / kTreeLeafBytes); 0 for n == 0.
inline constexpr uint64_t TreeLeafCount(uint64_t n) {
  return (n + kTreeLeafBytes - 1) / kTreeLeafBytes;
}

// The hash of one leaf: XXH3-64 of its bytes. REQUIRES: size <= kTreeLeafBytes (a full leaf, or
// the last leaf of a range); `data` may be null when size is 0.
uint64_t TreeLeafHash(const void* data, uint64_t size);

// Writes the TreeLeafCount(n) leaf hashes of data[0, n) to out[0, TreeLeafCount(n)). The leaves
// are split into up to `threads` contiguous runs, one per thread (values <= 1: the calling thread
// does all); the threads are joined before returning. REQUIRES: out holds TreeLeafCount(n) values.
void TreeLeafHashes(const void* data, uint64_t n, uint64_t* out, int threads);

// The root over `count` leaf hashes (leaves may be null when count is 0).
uint64_t TreeRoot(const uint64_t* leaves, uint64_t count);

// TreeRoot of TreeLeafHashes: the whole checksum of data[0, n).
uint64_t TreeChecksum(const void* data, uint64_t n, int threads);

}  // namespace ferry::internal::cuda

#endif  // FERRY_CUDA_TREE_CHECKSUM_H_
