// model_express.p2p.WorkerService: GetTensorManifest, as ModelExpress's source worker serves it
// (contract section 11). Synchronous API, as every ferry service: gRPC 1.51 stalls sync methods
// when callback methods share the server.
#ifndef FERRY_WORKER_TENSOR_MANIFEST_SERVICE_H_
#define FERRY_WORKER_TENSOR_MANIFEST_SERVICE_H_

#include "model_express/p2p.grpc.pb.h"
#include "worker/request_gate.h"
#include "worker/worker_state.h"

namespace ferry::worker::internal {

// Thread-safe. Borrows `state` and `gate`, which must outlive the service.
class TensorManifestService final : public model_express::p2p::WorkerService::Service {
 public:
  TensorManifestService(const WorkerState* state, RequestGate* gate) : state_(state), gate_(gate) {}

  // UNAUTHENTICATED / RESOURCE_EXHAUSTED from the gate; FAILED_PRECONDITION on an
  // mx_source_id or worker_id mismatch; else the manifest.
  grpc::Status GetTensorManifest(grpc::ServerContext* context,
                                 const model_express::p2p::GetTensorManifestRequest* request,
                                 model_express::p2p::GetTensorManifestResponse* response) override;

 private:
  const WorkerState* const state_;
  RequestGate* const gate_;
};

}  // namespace ferry::worker::internal

#endif  // FERRY_WORKER_TENSOR_MANIFEST_SERVICE_H_
