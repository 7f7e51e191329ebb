// The admission check every worker-endpoint RPC passes first: the deployment's bearer token
// (when one is configured) and a bound on concurrent requests. Not part of the installed API.
#ifndef FERRY_WORKER_REQUEST_GATE_H_
#define FERRY_WORKER_REQUEST_GATE_H_

#include <atomic>
#include <functional>
#include <string>
#include <string_view>

#include "grpcpp/grpcpp.h"
#include "worker/artifact_state.h"
#include "worker/grpc_status.h"
#include "worker/worker_state.h"

namespace ferry::internal {
class TokenSource;
}  // namespace ferry::internal

namespace ferry::worker::internal {

// Thread-safe.
class RequestGate {
 public:
  // `tokens` is borrowed for the gate's lifetime; nullptr: every caller is accepted.
  // `max_in_flight` >= 1. `on_admitted` (tests) runs in each admitted handler, after the checks.
  RequestGate(ferry::internal::TokenSource* tokens, int max_in_flight,
              std::function<void(std::string_view method)> on_admitted);

  // Holds one in-flight slot from construction to destruction, admitted or not, so that
  // in_flight() counts every running handler (Stop drains on it).
  class Admission {
   public:
    Admission(RequestGate* gate, const grpc::ServerContext& context, std::string_view method);
    ~Admission();
    Admission(const Admission&) = delete;
    Admission& operator=(const Admission&) = delete;

    // OK, or UNAUTHENTICATED (missing, malformed or wrong token; the message says what to pass)
    // or RESOURCE_EXHAUSTED ("worker endpoint busy: N requests in flight; retry").
    const grpc::Status& status() const { return status_; }

   private:
    RequestGate* const gate_;
    grpc::Status status_;
  };

  int in_flight() const { return in_flight_.load(std::memory_order_acquire); }

 private:
  grpc::Status Authenticate(const grpc::ServerContext& context) const;

  ferry::internal::TokenSource* const tokens_;
  const int max_in_flight_;
  const std::function<void(std::string_view)> on_admitted_;
  std::atomic<int> in_flight_{0};
};

// One worker-endpoint request: admission through `gate` (token, busy limit), then the id checks
// every request passes (WorkerState::CheckRequest: mx_source_id, worker_id), then
// `fill(mx_source_id)` builds the answer with the id the check used.
template <typename Request, typename Fill>
grpc::Status ServeChecked(RequestGate* gate, const WorkerState& state,
                          const grpc::ServerContext& context, std::string_view method,
                          const Request& request, Fill fill) {
  RequestGate::Admission admission(gate, context, method);
  if (!admission.status().ok()) return admission.status();
  std::string mx_source_id;
  const Status check =
      state.CheckRequest(request.mx_source_id(),
                         request.has_worker_id() ? &request.worker_id() : nullptr, &mx_source_id);
  if (!check.ok()) return ToGrpc(check);
  fill(mx_source_id);
  return grpc::Status::OK;
}

// One artifact request: admission through `gate`, NOT_FOUND when `artifacts` is null (the
// endpoint serves no artifact), the selection checks of ArtifactState::Check (mx_source_id,
// artifact_id), then `fill(mx_source_id)`, whose Status becomes the answer's.
template <typename Request, typename Fill>
grpc::Status ServeArtifact(RequestGate* gate, const ArtifactState* artifacts,
                           const grpc::ServerContext& context, std::string_view method,
                           const Request& request, Fill fill) {
  RequestGate::Admission admission(gate, context, method);
  if (!admission.status().ok()) return admission.status();
  if (artifacts == nullptr) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        "this worker endpoint serves no artifact manifests");
  }
  std::string mx_source_id;
  Status status = artifacts->Check(request.mx_source_id(), request.artifact_id(), &mx_source_id);
  if (status.ok()) status = fill(mx_source_id);
  if (!status.ok()) return ToGrpc(status);
  return grpc::Status::OK;
}

}  // namespace ferry::worker::internal

#endif  // FERRY_WORKER_REQUEST_GATE_H_
