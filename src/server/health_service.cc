#include "server/health_service.h"

#include "absl/time/clock.h"
#include "server/rpc_scope.h"

namespace ferry::server {

HealthService::HealthService(store::MetadataStore* store, Metrics* metrics, std::string version,
                             absl::Time started)
    : store_(store), metrics_(metrics), version_(std::move(version)), started_(started) {}

grpc::Status HealthService::GetHealth(grpc::ServerContext*,
                                      const ::model_express::health::HealthRequest*,
                                      ::model_express::health::HealthResponse* response) {
  RpcScope scope(metrics_, "GetHealth");
  response->set_version(version_);
  // "ok" while the store answers; otherwise the store's error, so an operator sees the cause.
  Status store = store_->Ping();
  response->set_status(store.ok() ? "ok"
                                  : std::string("unavailable: ") + std::string(store.message()));
  response->set_uptime(static_cast<uint64_t>(absl::ToInt64Seconds(absl::Now() - started_)));
  return scope.Ok(store.ok() ? "ok" : "store_error");
}

}  // namespace ferry::server
