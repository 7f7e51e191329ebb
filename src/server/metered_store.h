// MeteredStore: a MetadataStore decorator that records each call's latency and failure in
// Metrics. The server wraps its real store in one, so every backend is measured the same way.
#ifndef FERRY_SERVER_METERED_STORE_H_
#define FERRY_SERVER_METERED_STORE_H_

#include <memory>
#include <string>

#include "server/metrics.h"
#include "store/metadata_store.h"

namespace ferry::server {

class MeteredStore final : public store::MetadataStore {
 public:
  // Borrows `inner` and `metrics`; both must outlive this object.
  MeteredStore(store::MetadataStore* inner, Metrics* metrics) : inner_(inner), metrics_(metrics) {}

  std::string Describe() const override { return inner_->Describe(); }
  Status Publish(const store::PublishRecord& record) override;
  StatusOr<std::vector<store::WorkerSummary>> ListWorkers(const store::ListQuery& query) override;
  StatusOr<store::WorkerDetail> GetWorker(const std::string& mx_source_id,
                                          const std::string& worker_id) override;
  Status UpdateStatus(const store::StatusUpdate& update) override;
  Status RemoveWorker(const std::string& mx_source_id, const std::string& worker_id,
                      std::optional<uint64_t> expected_version) override;
  Status Ping() override;

 private:
  store::MetadataStore* const inner_;
  Metrics* const metrics_;
};

}  // namespace ferry::server

#endif  // FERRY_SERVER_METERED_STORE_H_
