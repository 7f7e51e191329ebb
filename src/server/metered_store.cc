#include "server/metered_store.h"

#include "absl/time/clock.h"

namespace ferry::server {
namespace {

// Runs `call`, records its latency under `op`, and returns its result. NotFound and Aborted are
// answers, not store failures.
template <typename F>
auto Measure(Metrics* metrics, const char* op, F&& call) {
  const absl::Time start = absl::Now();
  auto result = call();
  absl::StatusCode code;
  if constexpr (std::is_same_v<decltype(result), absl::Status>) {
    code = result.code();
  } else {
    code = result.status().code();
  }
  const bool failed = code != absl::StatusCode::kOk && code != absl::StatusCode::kNotFound &&
                      code != absl::StatusCode::kAborted &&
                      code != absl::StatusCode::kResourceExhausted;
  metrics->ObserveStore(op, failed, absl::ToDoubleSeconds(absl::Now() - start));
  return result;
}

}  // namespace

Status MeteredStore::Publish(const store::PublishRecord& record) {
  return Measure(metrics_, "publish", [&] { return inner_->Publish(record); });
}

StatusOr<std::vector<store::WorkerSummary>> MeteredStore::ListWorkers(
    const store::ListQuery& query) {
  return Measure(metrics_, "list_workers", [&] { return inner_->ListWorkers(query); });
}

StatusOr<store::WorkerDetail> MeteredStore::GetWorker(const std::string& mx_source_id,
                                                      const std::string& worker_id) {
  return Measure(metrics_, "get_worker",
                 [&] { return inner_->GetWorker(mx_source_id, worker_id); });
}

Status MeteredStore::UpdateStatus(const store::StatusUpdate& update) {
  return Measure(metrics_, "update_status", [&] { return inner_->UpdateStatus(update); });
}

Status MeteredStore::RemoveWorker(const std::string& mx_source_id, const std::string& worker_id,
                                  std::optional<uint64_t> expected_version) {
  return Measure(metrics_, "remove_worker",
                 [&] { return inner_->RemoveWorker(mx_source_id, worker_id, expected_version); });
}

Status MeteredStore::Ping() {
  return Measure(metrics_, "ping", [&] { return inner_->Ping(); });
}

}  // namespace ferry::server
