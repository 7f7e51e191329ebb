#ifndef FERRY_SERVER_RPC_SCOPE_H_
#define FERRY_SERVER_RPC_SCOPE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "common/wire_status.h"
#include "grpcpp/grpcpp.h"
#include "server/metrics.h"

namespace ferry::server {

// Times one RPC handler and records it in Metrics when the handler returns through Finish().
// With the handler's ServerContext, every answer that refuses the request or fails also carries
// its canonical code as trailing metadata (internal::kStatusCodeMetadataKey, docs/protocol.md).
class RpcScope {
 public:
  // Borrows `metrics` and `context` (may be null: no trailing code) for the handler's duration.
  RpcScope(Metrics* metrics, const char* method, grpc::ServerContext* context = nullptr)
      : metrics_(metrics), method_(method), context_(context), start_(absl::Now()) {
    metrics_->RpcStarted();
  }
  ~RpcScope() { metrics_->RpcEnded(); }
  RpcScope(const RpcScope&) = delete;
  RpcScope& operator=(const RpcScope&) = delete;

  // Records the RPC and returns `status` so handlers can `return scope.Finish(...)`.
  grpc::Status Finish(grpc::Status status, const char* outcome) {
    if (!status.ok()) AddCode(static_cast<absl::StatusCode>(status.error_code()));
    metrics_->ObserveRpc(method_, CodeName(status.error_code()), outcome,
                         absl::ToDoubleSeconds(absl::Now() - start_));
    return status;
  }
  grpc::Status Ok(const char* outcome = "ok") { return Finish(grpc::Status::OK, outcome); }

  // A refusal in ModelExpress's form (the handler has set success=false or found=false): gRPC
  // status OK, recorded as such, with `code` (never OK) in the trailing metadata.
  grpc::Status Refused(absl::StatusCode code, const char* outcome) {
    AddCode(code);
    return Ok(outcome);
  }

  static std::string CodeName(grpc::StatusCode code) {
    return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  }

 private:
  void AddCode(absl::StatusCode code) {
    if (context_ == nullptr) return;
    context_->AddTrailingMetadata(internal::kStatusCodeMetadataKey,
                                  internal::StatusCodeMetadataValue(code));
  }

  Metrics* const metrics_;
  const char* const method_;
  grpc::ServerContext* const context_;
  const absl::Time start_;
};

// An absl::Status as a grpc::Status with the same code and message.
inline grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

}  // namespace ferry::server

#endif  // FERRY_SERVER_RPC_SCOPE_H_
