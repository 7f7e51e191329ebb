// MemoryStore: the embedded default backend. Everything lives in this process and is lost on
// restart (publishers re-publish). Thread-safe: one absl::Mutex guards all state; each call
// holds it only while copying records in or out.
#ifndef FERRY_STORE_MEMORY_STORE_H_
#define FERRY_STORE_MEMORY_STORE_H_

#include <map>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "store/metadata_store.h"

namespace ferry::store {

class MemoryStore final : public MetadataStore {
 public:
  static std::unique_ptr<MemoryStore> Create();

  MemoryStore(const MemoryStore&) = delete;
  MemoryStore& operator=(const MemoryStore&) = delete;

  std::string Describe() const override { return "memory"; }
  Status Publish(const PublishRecord& record) override;
  StatusOr<std::vector<WorkerSummary>> ListWorkers(const ListQuery& query) override;
  StatusOr<WorkerDetail> GetWorker(const std::string& mx_source_id,
                                   const std::string& worker_id) override;
  Status UpdateStatus(const StatusUpdate& update) override;
  Status RemoveWorker(const std::string& mx_source_id, const std::string& worker_id,
                      std::optional<uint64_t> expected_version) override;
  Status Ping() override { return absl::OkStatus(); }

 private:
  struct Worker {
    std::map<uint32_t, WorkerMetadata> ranks;  // ordered: GetWorker returns the lowest
    uint32_t index_rank = 0;                   // rank of the latest Publish
    std::map<uint32_t, float> loads;           // rank -> last reported source_load
    uint64_t version = 0;
    std::string owner;
  };
  struct Source {
    SourceIdentity identity;
    std::optional<uint64_t> training_step;  // derived once per publish, not per listing
    std::optional<std::string> layout_signature;
    absl::flat_hash_map<std::string, Worker> workers;
    std::string owner;  // the principal whose Publish created the source; "" = unowned
  };

  MemoryStore() = default;
  void CountOwner(const std::string& owner, int delta) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AppendSummaries(const std::string& source_id, const Source& source,
                       std::vector<WorkerSummary>* out) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Source> sources_ ABSL_GUARDED_BY(mu_);
  uint64_t next_version_ ABSL_GUARDED_BY(mu_) = 1;
  // Workers per owner (entries at zero are erased), for PublishRecord::max_owner_workers.
  absl::flat_hash_map<std::string, uint64_t> owner_workers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::store

#endif  // FERRY_STORE_MEMORY_STORE_H_
