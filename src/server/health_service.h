// model_express.health.HealthService/GetHealth. Uptime counts from server start (the contract's
// section 14.16: ModelExpress counts from the first call). Thread-safe.
#ifndef FERRY_SERVER_HEALTH_SERVICE_H_
#define FERRY_SERVER_HEALTH_SERVICE_H_

#include <string>

#include "absl/time/time.h"
#include "model_express/health.grpc.pb.h"
#include "server/metrics.h"
#include "store/metadata_store.h"

namespace ferry::server {

class HealthService final : public ::model_express::health::HealthService::Service {
 public:
  // Borrows `store` and `metrics`. `started` is the server's start time.
  HealthService(store::MetadataStore* store, Metrics* metrics, std::string version,
                absl::Time started);

  grpc::Status GetHealth(grpc::ServerContext* context,
                         const ::model_express::health::HealthRequest* request,
                         ::model_express::health::HealthResponse* response) override;

 private:
  store::MetadataStore* const store_;
  Metrics* const metrics_;
  const std::string version_;
  const absl::Time started_;
};

}  // namespace ferry::server

#endif  // FERRY_SERVER_HEALTH_SERVICE_H_
