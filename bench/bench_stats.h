// Shared by the bench/ programs: latency summaries.
#ifndef FERRY_BENCH_BENCH_STATS_H_
#define FERRY_BENCH_BENCH_STATS_H_

#include <cstdint>
#include <vector>

namespace ferry::bench {

// p-quantile (0 < q <= 1) of an ascending, non-empty vector: the nearest-rank value.
double Percentile(const std::vector<double>& sorted, double q);

// Count, nearest-rank p50/p99, max and mean of a set of values; all zero when it is empty.
struct Summary {
  int64_t count = 0;
  double p50 = 0, p99 = 0, max = 0, mean = 0;
};
// Sorts `values` in place.
Summary Summarize(std::vector<double>& values);

}  // namespace ferry::bench

#endif  // FERRY_BENCH_BENCH_STATS_H_
