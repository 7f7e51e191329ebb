// Shared by the benchmark programs' main files: failing loudly, JSON lines, medians.
#ifndef FERRY_BENCH_BENCH_CLI_H_
#define FERRY_BENCH_BENCH_CLI_H_

#include <errno.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "ferry/status.h"
#include "nlohmann/json.hpp"

namespace ferry::bench {

// Prints "PROGRAM: WHAT: MESSAGE" to stderr and exits 1.
[[noreturn]] inline void Die(const std::string& what, const ferry::Status& s) {
  std::fprintf(stderr, "%s: %s: %s\n", program_invocation_short_name, what.c_str(),
               std::string(s.message()).c_str());
  std::exit(1);
}

inline void Check(const ferry::Status& s, const std::string& what) {
  if (!s.ok()) Die(what, s);
}

template <typename T>
T Must(ferry::StatusOr<T> v, const std::string& what) {
  if (!v.ok()) Die(what, v.status());
  return *std::move(v);
}

// One machine-readable result line on stdout, flushed.
inline void Print(const nlohmann::json& j) {
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

// The upper median; 0 for no values.
inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace ferry::bench

#endif  // FERRY_BENCH_BENCH_CLI_H_
