#include "worker/tensor_manifest_service.h"

#include <string>

namespace ferry::worker::internal {

grpc::Status TensorManifestService::GetTensorManifest(
    grpc::ServerContext* context, const model_express::p2p::GetTensorManifestRequest* request,
    model_express::p2p::GetTensorManifestResponse* response) {
  return ServeChecked(
      gate_, *state_, *context, "GetTensorManifest", *request,
      [&](const std::string& mx_source_id) { state_->FillTensorManifest(mx_source_id, response); });
}

}  // namespace ferry::worker::internal
