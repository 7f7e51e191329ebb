#include "server/metrics.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ferry::server {
namespace {

std::string Join(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (b.empty()) return a;
  return absl::StrCat(a, ",", b);
}

std::string Braced(const std::string& labels) {
  return labels.empty() ? "" : absl::StrCat("{", labels, "}");
}

}  // namespace

void Histogram::Observe(double seconds) {
  for (size_t i = 0; i < kBounds.size(); ++i) {
    if (seconds <= kBounds[i]) ++buckets_[i];
  }
  ++count_;
  sum_ += seconds;
}

void Histogram::Render(const std::string& name, const std::string& labels, std::string* out) const {
  for (size_t i = 0; i < kBounds.size(); ++i) {
    absl::StrAppendFormat(out, "%s_bucket{%s} %d\n", name,
                          Join(labels, absl::StrFormat("le=\"%g\"", kBounds[i])), buckets_[i]);
  }
  absl::StrAppendFormat(out, "%s_bucket{%s} %d\n", name, Join(labels, "le=\"+Inf\""), count_);
  absl::StrAppendFormat(out, "%s_sum%s %.9f\n", name, Braced(labels), sum_);
  absl::StrAppendFormat(out, "%s_count%s %d\n", name, Braced(labels), count_);
}

Metrics::Metrics(std::string version, std::string store)
    : version_(std::move(version)), store_(std::move(store)) {}

void Metrics::ObserveRpc(const std::string& method, const std::string& code,
                         const std::string& outcome, double seconds) {
  absl::MutexLock lock(&mu_);
  ++rpc_counts_[{method, code, outcome}];
  rpc_latency_[method].Observe(seconds);
}

void Metrics::ObserveStore(const std::string& op, bool failed, double seconds) {
  absl::MutexLock lock(&mu_);
  ++store_counts_[{op, failed}];
  store_latency_[op].Observe(seconds);
}

void Metrics::CountReaper(ReaperEvent event, uint64_t n) {
  absl::MutexLock lock(&mu_);
  reaper_[event] += n;
}

void Metrics::CountAuthFailure(const std::string& reason) {
  absl::MutexLock lock(&mu_);
  ++auth_failures_[reason];
}

void Metrics::SetRecordsByStatus(const std::array<int64_t, 4>& counts) {
  absl::MutexLock lock(&mu_);
  records_ = counts;
  records_known_ = true;
}

std::string Metrics::Render() const {
  absl::MutexLock lock(&mu_);
  std::string out;
  out += "# HELP ferry_build_info Build information; always 1.\n# TYPE ferry_build_info gauge\n";
  absl::StrAppendFormat(&out,
                        "ferry_build_info{component=\"server\",version=\"%s\",store=\"%s\"} 1\n",
                        version_, store_);

  out += "# HELP ferry_grpc_requests_total Finished RPCs by method, gRPC code and outcome.\n";
  out += "# TYPE ferry_grpc_requests_total counter\n";
  for (const auto& [key, n] : rpc_counts_) {
    const auto& [method, code, outcome] = key;
    absl::StrAppendFormat(
        &out, "ferry_grpc_requests_total{method=\"%s\",code=\"%s\",outcome=\"%s\"} %d\n", method,
        code, outcome, n);
  }
  out += "# HELP ferry_grpc_request_duration_seconds Server-side RPC latency.\n";
  out += "# TYPE ferry_grpc_request_duration_seconds histogram\n";
  for (const auto& [method, h] : rpc_latency_) {
    h.Render("ferry_grpc_request_duration_seconds", absl::StrFormat("method=\"%s\"", method), &out);
  }

  out += "# HELP ferry_store_operations_total Store calls by operation and result.\n";
  out += "# TYPE ferry_store_operations_total counter\n";
  for (const auto& [key, n] : store_counts_) {
    absl::StrAppendFormat(&out, "ferry_store_operations_total{op=\"%s\",result=\"%s\"} %d\n",
                          key.first, key.second ? "error" : "ok", n);
  }
  out += "# HELP ferry_store_operation_duration_seconds Store call latency.\n";
  out += "# TYPE ferry_store_operation_duration_seconds histogram\n";
  for (const auto& [op, h] : store_latency_) {
    h.Render("ferry_store_operation_duration_seconds", absl::StrFormat("op=\"%s\"", op), &out);
  }

  if (records_known_) {
    out += "# HELP ferry_records Workers by representative status at the last reaper scan.\n";
    out += "# TYPE ferry_records gauge\n";
    static constexpr const char* kNames[] = {"unknown", "initializing", "ready", "stale"};
    for (size_t i = 0; i < records_.size(); ++i) {
      absl::StrAppendFormat(&out, "ferry_records{status=\"%s\"} %d\n", kNames[i], records_[i]);
    }
  }

  out += "# HELP ferry_auth_failures_total Refused calls by reason.\n";
  out += "# TYPE ferry_auth_failures_total counter\n";
  for (const char* reason : {"missing", "malformed", "unknown_token", "permission_denied"}) {
    auto it = auth_failures_.find(reason);
    absl::StrAppendFormat(&out, "ferry_auth_failures_total{reason=\"%s\"} %d\n", reason,
                          it == auth_failures_.end() ? 0 : it->second);
  }

  static constexpr std::pair<ReaperEvent, const char*> kReaper[] = {
      {ReaperEvent::kScan, "ferry_reaper_scans_total"},
      {ReaperEvent::kScanError, "ferry_reaper_scan_errors_total"},
      {ReaperEvent::kMarkedStale, "ferry_reaper_marked_stale_total"},
      {ReaperEvent::kDeleted, "ferry_reaper_deleted_total"},
      {ReaperEvent::kConflict, "ferry_reaper_conflicts_total"},
      {ReaperEvent::kWorkerError, "ferry_reaper_worker_errors_total"},
  };
  for (const auto& [event, name] : kReaper) {
    auto it = reaper_.find(event);
    absl::StrAppendFormat(&out, "# TYPE %s counter\n%s %d\n", name, name,
                          it == reaper_.end() ? 0 : it->second);
  }
  return out;
}

}  // namespace ferry::server
