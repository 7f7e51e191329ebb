// FaultStore: wraps a real MetadataStore and injects faults for tests: every call (or one kind
// of call) fails with a chosen status, calls are delayed, or a hook runs right after ListWorkers
// has read the store (to land a write in the middle of a reaper scan). Thread-safe.
#ifndef FERRY_STORE_FAULT_STORE_H_
#define FERRY_STORE_FAULT_STORE_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "store/metadata_store.h"

namespace ferry::store {

class FaultStore final : public MetadataStore {
 public:
  enum class Op { kAny, kPublish, kList, kGet, kUpdateStatus, kRemove, kPing };

  // Borrows `inner`, which must outlive this object.
  explicit FaultStore(MetadataStore* inner) : inner_(inner) {}

  // Calls of kind `op` (kAny: every kind) fail with `status` until ClearFailure().
  void SetFailure(Op op, Status status);
  void ClearFailure();
  // Each call sleeps `latency` before running.
  void SetLatency(absl::Duration latency);
  // Runs once, right after the next ListWorkers has read the inner store.
  void SetAfterListHook(std::function<void()> hook);
  // Waits until `n` calls of kind `op` (kAny: of any kind) have entered this store since it
  // was created (they are then inside their latency, if one is set): lets a test act while a
  // call is in flight without guessing how long it takes to arrive.
  void AwaitCalls(Op op, uint64_t n);

  std::string Describe() const override { return "fault(" + inner_->Describe() + ")"; }
  Status Publish(const PublishRecord& record) override;
  StatusOr<std::vector<WorkerSummary>> ListWorkers(const ListQuery& query) override;
  StatusOr<WorkerDetail> GetWorker(const std::string& mx_source_id,
                                   const std::string& worker_id) override;
  Status UpdateStatus(const StatusUpdate& update) override;
  Status RemoveWorker(const std::string& mx_source_id, const std::string& worker_id,
                      std::optional<uint64_t> expected_version) override;
  Status Ping() override;

 private:
  Status Inject(Op op);

  MetadataStore* const inner_;
  absl::Mutex mu_;
  Op failing_op_ ABSL_GUARDED_BY(mu_) = Op::kAny;
  Status failure_ ABSL_GUARDED_BY(mu_);
  absl::Duration latency_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  std::function<void()> after_list_ ABSL_GUARDED_BY(mu_);
  uint64_t entered_[7] ABSL_GUARDED_BY(mu_) = {};  // calls per Op
};

}  // namespace ferry::store

#endif  // FERRY_STORE_FAULT_STORE_H_
