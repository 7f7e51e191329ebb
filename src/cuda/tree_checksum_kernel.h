// What the tree checksum kernel (tree_checksum_kernel.cu) and its launcher (device_checksum.cc)
// share: the kernel's name and launch geometry, and the embedded fatbin that carries it.
//
// The kernel computes the leaf hashes of tree_checksum.h for a device buffer:
//   extern "C" __global__ void ferry_tree_leaf_hashes(const unsigned char* data,
//       unsigned long long n, unsigned long long* out, unsigned long long leaf_count);
// Each leaf is hashed by kTreeKernelThreadsPerLeaf consecutive threads of one block, one
// XXH3 accumulator lane each (xxh3_core.h), merged through shared memory; leaves of at most 240
// bytes (only ever the last leaf) are hashed by the first thread of their group alone.
// REQUIRES of a launch: blockDim.x == kTreeKernelThreadsPerBlock, and grid * block threads cover
// leaf_count * kTreeKernelThreadsPerLeaf.
#ifndef FERRY_CUDA_TREE_CHECKSUM_KERNEL_H_
#define FERRY_CUDA_TREE_CHECKSUM_KERNEL_H_

#include <cstddef>

namespace ferry::internal::cuda {

inline constexpr char kTreeKernelName[] = "ferry_tree_leaf_hashes";
inline constexpr int kTreeKernelThreadsPerLeaf = 8;
inline constexpr int kTreeKernelThreadsPerBlock = 256;
static_assert(kTreeKernelThreadsPerBlock % kTreeKernelThreadsPerLeaf == 0);

#ifndef __CUDACC__
// The kernel's fatbin (SASS for sm_80, sm_90, sm_100 and PTX for compute_100), embedded at build
// time (FERRY_WITH_CUDA builds only; tree_checksum_fatbin.cc). 8-byte aligned, as
// cuModuleLoadData expects.
const unsigned char* TreeKernelFatbin();
size_t TreeKernelFatbinSize();
#endif

}  // namespace ferry::internal::cuda

#endif  // FERRY_CUDA_TREE_CHECKSUM_KERNEL_H_
