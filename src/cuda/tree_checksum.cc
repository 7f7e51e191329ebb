#include "cuda/tree_checksum.h"

#include <algorithm>
#include <thread>
#include <vector>

#include "cuda/xxh3_core.h"

namespace ferry::internal::cuda {
namespace {

// Leaves [first, last) of data[0, n).
void HashLeafRun(const uint8_t* data, uint64_t n, uint64_t first, uint64_t last, uint64_t* out) {
  for (uint64_t i = first; i < last; ++i) {
    const uint64_t begin = i * kTreeLeafBytes;
    out[i] = xxh3::Hash64(data + begin, std::min(kTreeLeafBytes, n - begin));
  }
}

}  // namespace

uint64_t TreeLeafHash(const void* data, uint64_t size) {
  return xxh3::Hash64(static_cast<const uint8_t*>(data), size);
}

void TreeLeafHashes(const void* data, uint64_t n, uint64_t* out, int threads) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  const uint64_t count = TreeLeafCount(n);
  const uint64_t workers = std::min<uint64_t>(static_cast<uint64_t>(std::max(threads, 1)), count);
  if (workers <= 1) {
    HashLeafRun(bytes, n, 0, count, out);
    return;
  }
  // Contiguous runs of count / workers leaves, the first count % workers runs one longer.
  std::vector<std::thread> pool;
  pool.reserve(workers);
  uint64_t first = 0;
  for (uint64_t w = 0; w < workers; ++w) {
    const uint64_t last = first + count / workers + (w < count % workers ? 1 : 0);
    pool.emplace_back(HashLeafRun, bytes, n, first, last, out);
    first = last;
  }
  for (std::thread& t : pool) t.join();
}

uint64_t TreeRoot(const uint64_t* leaves, uint64_t count) {
  // xxh3_core.h requires a little-endian host, so the array's bytes are the little-endian
  // encoding the algorithm specifies.
  return xxh3::Hash64(reinterpret_cast<const uint8_t*>(leaves), count * sizeof(uint64_t));
}

uint64_t TreeChecksum(const void* data, uint64_t n, int threads) {
  std::vector<uint64_t> leaves(TreeLeafCount(n));
  TreeLeafHashes(data, n, leaves.data(), threads);
  return TreeRoot(leaves.data(), leaves.size());
}

}  // namespace ferry::internal::cuda
