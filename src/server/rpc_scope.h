#ifndef FERRY_SERVER_RPC_SCOPE_H_
#define FERRY_SERVER_RPC_SCOPE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "server/metrics.h"

namespace ferry::server {

// Times one RPC handler and records it in Metrics when the handler returns through Finish().
class RpcScope {
 public:
  RpcScope(Metrics* metrics, const char* method)
      : metrics_(metrics), method_(method), start_(absl::Now()) {
    metrics_->RpcStarted();
  }
  ~RpcScope() { metrics_->RpcEnded(); }
  RpcScope(const RpcScope&) = delete;
  RpcScope& operator=(const RpcScope&) = delete;

  // Records the RPC and returns `status` so handlers can `return scope.Finish(...)`.
  grpc::Status Finish(grpc::Status status, const char* outcome) {
    metrics_->ObserveRpc(method_, CodeName(status.error_code()), outcome,
                         absl::ToDoubleSeconds(absl::Now() - start_));
    return status;
  }
  grpc::Status Ok(const char* outcome = "ok") { return Finish(grpc::Status::OK, outcome); }

  static std::string CodeName(grpc::StatusCode code) {
    return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  }

 private:
  Metrics* const metrics_;
  const char* const method_;
  const absl::Time start_;
};

// An absl::Status as a grpc::Status with the same code and message.
inline grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

}  // namespace ferry::server

#endif  // FERRY_SERVER_RPC_SCOPE_H_
