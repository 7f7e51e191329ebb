#include "store/fault_store.h"

#include <utility>

namespace ferry::store {

void FaultStore::SetFailure(Op op, Status status) {
  absl::MutexLock lock(&mu_);
  failing_op_ = op;
  failure_ = std::move(status);
}

void FaultStore::ClearFailure() {
  absl::MutexLock lock(&mu_);
  failure_ = absl::OkStatus();
}

void FaultStore::SetLatency(absl::Duration latency) {
  absl::MutexLock lock(&mu_);
  latency_ = latency;
}

void FaultStore::SetAfterListHook(std::function<void()> hook) {
  absl::MutexLock lock(&mu_);
  after_list_ = std::move(hook);
}

Status FaultStore::Inject(Op op) {
  absl::Duration latency;
  Status failure;
  {
    absl::MutexLock lock(&mu_);
    latency = latency_;
    if (failing_op_ == Op::kAny || failing_op_ == op) failure = failure_;
    ++entered_[static_cast<int>(op)];
  }
  if (latency > absl::ZeroDuration()) absl::SleepFor(latency);
  return failure;
}

void FaultStore::AwaitCalls(Op op, uint64_t n) {
  absl::MutexLock lock(&mu_);
  auto reached = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (op != Op::kAny) return entered_[static_cast<int>(op)] >= n;
    uint64_t all = 0;
    for (uint64_t count : entered_) all += count;
    return all >= n;
  };
  mu_.Await(absl::Condition(&reached));
}

Status FaultStore::Publish(const PublishRecord& record) {
  FERRY_RETURN_IF_ERROR(Inject(Op::kPublish));
  return inner_->Publish(record);
}

StatusOr<std::vector<WorkerSummary>> FaultStore::ListWorkers(const ListQuery& query) {
  FERRY_RETURN_IF_ERROR(Inject(Op::kList));
  auto result = inner_->ListWorkers(query);
  std::function<void()> hook;
  {
    absl::MutexLock lock(&mu_);
    hook = std::exchange(after_list_, nullptr);
  }
  if (hook) hook();
  return result;
}

StatusOr<WorkerDetail> FaultStore::GetWorker(const std::string& mx_source_id,
                                             const std::string& worker_id) {
  FERRY_RETURN_IF_ERROR(Inject(Op::kGet));
  return inner_->GetWorker(mx_source_id, worker_id);
}

Status FaultStore::UpdateStatus(const StatusUpdate& update) {
  FERRY_RETURN_IF_ERROR(Inject(Op::kUpdateStatus));
  return inner_->UpdateStatus(update);
}

Status FaultStore::RemoveWorker(const std::string& mx_source_id, const std::string& worker_id,
                                std::optional<uint64_t> expected_version) {
  FERRY_RETURN_IF_ERROR(Inject(Op::kRemove));
  return inner_->RemoveWorker(mx_source_id, worker_id, expected_version);
}

Status FaultStore::Ping() {
  FERRY_RETURN_IF_ERROR(Inject(Op::kPing));
  return inner_->Ping();
}

}  // namespace ferry::store
