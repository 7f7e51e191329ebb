#include "worker/tensor_manifest_service.h"

#include <string>

namespace ferry::worker::internal {

grpc::Status TensorManifestService::GetTensorManifest(
    grpc::ServerContext* context, const model_express::p2p::GetTensorManifestRequest* request,
    model_express::p2p::GetTensorManifestResponse* response) {
  RequestGate::Admission admission(gate_, *context, "GetTensorManifest");
  if (!admission.status().ok()) return admission.status();
  std::string mx_source_id;
  const Status check = state_->CheckRequest(
      request->mx_source_id(), request->has_worker_id() ? &request->worker_id() : nullptr,
      &mx_source_id);
  if (!check.ok()) {
    return grpc::Status(static_cast<grpc::StatusCode>(check.code()), std::string(check.message()));
  }
  state_->FillTensorManifest(mx_source_id, response);
  return grpc::Status::OK;
}

}  // namespace ferry::worker::internal
