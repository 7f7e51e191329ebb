// The tree checksum kernel (tree_checksum_kernel.h): leaf hashes of a device buffer, the same
// values as TreeLeafHashes on the host (both run xxh3_core.h). Compiled by nvcc into a fatbin
// that is embedded in ferry_cuda and loaded through the driver (no CUDA runtime).
#include <cstdint>

#include "cuda/tree_checksum.h"
#include "cuda/tree_checksum_kernel.h"
#include "cuda/xxh3_core.h"

namespace xxh3 = ::ferry::internal::cuda::xxh3;
using ::ferry::internal::cuda::kTreeKernelThreadsPerBlock;
using ::ferry::internal::cuda::kTreeKernelThreadsPerLeaf;
using ::ferry::internal::cuda::kTreeLeafBytes;

static_assert(kTreeKernelThreadsPerLeaf == xxh3::kLanes, "one thread per accumulator lane");

extern "C" __global__ void __launch_bounds__(kTreeKernelThreadsPerBlock)
    ferry_tree_leaf_hashes(const unsigned char* __restrict__ data, unsigned long long n,
                           unsigned long long* __restrict__ out, unsigned long long leaf_count) {
  __shared__ uint64_t lanes[kTreeKernelThreadsPerBlock];
  const uint64_t thread = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const uint64_t leaf = thread / kTreeKernelThreadsPerLeaf;
  const int lane = static_cast<int>(threadIdx.x % kTreeKernelThreadsPerLeaf);
  const bool active = leaf < leaf_count;
  const uint8_t* p = nullptr;
  uint64_t len = 0;
  uint64_t acc = 0;
  if (active) {
    p = data + leaf * kTreeLeafBytes;
    len = n - leaf * kTreeLeafBytes;
    if (len > kTreeLeafBytes) len = kTreeLeafBytes;
    if (len > xxh3::kMidSizeMax) acc = xxh3::LongLane(p, len, lane, xxh3::KeysForLane(lane));
  }
  // Every thread of the block reaches the barrier (no early return above).
  lanes[threadIdx.x] = acc;
  __syncthreads();
  if (active && lane == 0) {
    out[leaf] = len > xxh3::kMidSizeMax ? xxh3::MergeLanes(&lanes[threadIdx.x], len)
                                        : xxh3::Hash64Short(p, len);
  }
}
