#include "weights/tensor_checksum.h"

#include <xxhash.h>

#include <algorithm>
#include <numeric>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cuda/tree_checksum.h"

namespace ferry::weights {

namespace {

// The one table of names.
constexpr std::pair<ChecksumAlgorithm, const char*> kNames[] = {
    {ChecksumAlgorithm::kXxh3_64, "xxh3-64"},
    {ChecksumAlgorithm::kXxh3Tree64k, internal::cuda::kTreeChecksumAlgorithm},
};

}  // namespace

const char* ChecksumAlgorithmName(ChecksumAlgorithm algorithm) {
  for (const auto& [a, name] : kNames) {
    if (a == algorithm) return name;
  }
  return "unknown";
}

StatusOr<ChecksumAlgorithm> ParseChecksumAlgorithm(std::string_view name) {
  std::string known;
  for (const auto& [a, n] : kNames) {
    if (std::string_view(n) == name) return a;
    absl::StrAppend(&known, known.empty() ? "" : ", ", std::string(n));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown checksum algorithm '", std::string(name), "'; known: ", known));
}

uint64_t TensorChecksum(const void* data, uint64_t size, ChecksumAlgorithm algorithm) {
  if (algorithm == ChecksumAlgorithm::kXxh3Tree64k) {
    return internal::cuda::TreeChecksum(data, size, /*threads=*/1);
  }
  return XXH3_64bits(data, static_cast<size_t>(size));
}

std::vector<uint64_t> ChecksumTensors(const uint8_t* base, const std::vector<TensorInfo>& tensors,
                                      int threads, ChecksumAlgorithm algorithm) {
  std::vector<ByteRange> ranges;
  ranges.reserve(tensors.size());
  for (const TensorInfo& t : tensors) ranges.push_back(ByteRange{base + t.offset, t.size});
  return ChecksumRanges(ranges, threads, algorithm);
}

std::vector<uint64_t> ChecksumRanges(const std::vector<ByteRange>& ranges, int threads,
                                     ChecksumAlgorithm algorithm) {
  std::vector<uint64_t> sums(ranges.size());
  const size_t workers = std::min<size_t>(static_cast<size_t>(std::max(threads, 1)),
                                          std::max<size_t>(ranges.size(), 1));
  if (workers <= 1) {
    for (size_t i = 0; i < ranges.size(); ++i) {
      sums[i] = TensorChecksum(ranges[i].data, ranges[i].size, algorithm);
    }
    return sums;
  }
  // Longest-processing-time-first assignment: biggest range to the least-loaded worker.
  std::vector<size_t> order(ranges.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return ranges[a].size > ranges[b].size; });
  std::vector<std::vector<size_t>> assigned(workers);
  std::vector<uint64_t> load(workers, 0);
  for (size_t i : order) {
    const size_t w = std::min_element(load.begin(), load.end()) - load.begin();
    assigned[w].push_back(i);
    load[w] += ranges[i].size + 1;  // + 1: empty ranges still cost a call
  }
  std::vector<std::thread> pool;
  pool.reserve(workers);
  for (size_t w = 0; w < workers; ++w) {
    pool.emplace_back([&, w] {
      for (size_t i : assigned[w]) {
        sums[i] = TensorChecksum(ranges[i].data, ranges[i].size, algorithm);
      }
    });
  }
  for (std::thread& t : pool) t.join();
  return sums;
}

}  // namespace ferry::weights
