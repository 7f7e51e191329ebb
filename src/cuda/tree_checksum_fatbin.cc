// The tree checksum kernel's fatbin, embedded at build time: nvcc compiles
// tree_checksum_kernel.cu into a fatbin and bin2c turns it into the array included here
// (src/cuda/CMakeLists.txt, cmake/FerryBin2c.cmake). FERRY_WITH_CUDA builds only.
#include <cstdint>
#include <cstring>

#include "cuda/tree_checksum_kernel.h"

namespace ferry::internal::cuda {
namespace {

// static const unsigned long long ferry_tree_kernel_fatbin[] = {...};
#include "tree_checksum_kernel_fatbin.inc"

}  // namespace

const unsigned char* TreeKernelFatbin() {
  return reinterpret_cast<const unsigned char*>(ferry_tree_kernel_fatbin);
}

size_t TreeKernelFatbinSize() {
  // bin2c pads the last word with zeros; the fatbin's header (magic, version, header size,
  // payload size) gives its exact length.
  static_assert(sizeof(ferry_tree_kernel_fatbin) >= 16);
  uint16_t header_size = 0;
  uint64_t payload_size = 0;
  std::memcpy(&header_size, TreeKernelFatbin() + 6, sizeof(header_size));
  std::memcpy(&payload_size, TreeKernelFatbin() + 8, sizeof(payload_size));
  const uint64_t size = header_size + payload_size;
  return size <= sizeof(ferry_tree_kernel_fatbin) ? size : sizeof(ferry_tree_kernel_fatbin);
}

}  // namespace ferry::internal::cuda
