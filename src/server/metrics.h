// Server metrics in Prometheus text format (version 0.0.4). Hand-written because Debian
// bookworm packages no Prometheus client library for C++; see docs/architecture.md.
// Thread-safe: all recording methods may be called from any thread.
#ifndef FERRY_SERVER_METRICS_H_
#define FERRY_SERVER_METRICS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <tuple>

#include "absl/synchronization/mutex.h"

namespace ferry::server {

// A cumulative latency histogram with fixed buckets (seconds).
class Histogram {
 public:
  static constexpr std::array<double, 14> kBounds = {
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0};
  void Observe(double seconds);
  // Appends the _bucket, _sum and _count lines of `name` with `labels` ("a=\"b\"" or empty).
  void Render(const std::string& name, const std::string& labels, std::string* out) const;

 private:
  std::array<uint64_t, kBounds.size()> buckets_{};
  uint64_t count_ = 0;
  double sum_ = 0;
};

enum class ReaperEvent { kScan, kScanError, kMarkedStale, kDeleted, kConflict, kWorkerError };

class Metrics {
 public:
  Metrics(std::string version, std::string store);

  // One finished RPC: its gRPC code name ("OK", "INVALID_ARGUMENT", ...) and the outcome of
  // the request under that code ("ok", "refused", "not_found", "store_error").
  void ObserveRpc(const std::string& method, const std::string& code, const std::string& outcome,
                  double seconds);
  // One store call and whether it failed.
  void ObserveStore(const std::string& op, bool failed, double seconds);
  void CountReaper(ReaperEvent event, uint64_t n = 1);
  // A refused call: reason is "missing", "malformed", "unknown_token" or "permission_denied".
  void CountAuthFailure(const std::string& reason);
  // Records per status, from the latest reaper scan (index = SourceStatus value).
  void SetRecordsByStatus(const std::array<int64_t, 4>& counts);

  std::string Render() const;

  // RPC handlers currently running (RpcScope maintains it); shutdown waits for zero.
  void RpcStarted() { in_flight_.fetch_add(1, std::memory_order_relaxed); }
  void RpcEnded() { in_flight_.fetch_sub(1, std::memory_order_relaxed); }
  int64_t in_flight() const { return in_flight_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> in_flight_{0};
  const std::string version_;
  const std::string store_;
  mutable absl::Mutex mu_;
  std::map<std::tuple<std::string, std::string, std::string>, uint64_t> rpc_counts_
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, Histogram> rpc_latency_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, bool>, uint64_t> store_counts_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Histogram> store_latency_ ABSL_GUARDED_BY(mu_);
  std::map<ReaperEvent, uint64_t> reaper_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint64_t> auth_failures_ ABSL_GUARDED_BY(mu_);
  std::array<int64_t, 4> records_ ABSL_GUARDED_BY(mu_){};
  bool records_known_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ferry::server

#endif  // FERRY_SERVER_METRICS_H_
