#include "bench_stats.h"

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace ferry::bench {

double Percentile(const std::vector<double>& sorted, double q) {
  size_t rank = static_cast<size_t>(std::ceil(q * sorted.size()));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

Summary Summarize(std::vector<double>& values) {
  Summary s;
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  s.count = static_cast<int64_t>(values.size());
  s.p50 = Percentile(values, 0.50);
  s.p99 = Percentile(values, 0.99);
  s.max = values.back();
  double sum = 0;
  for (double v : values) sum += v;
  s.mean = sum / values.size();
  return s;
}

}  // namespace ferry::bench
