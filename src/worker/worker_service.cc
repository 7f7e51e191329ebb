#include "worker/worker_service.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace ferry::worker::internal {

grpc::Status WorkerServiceImpl::GetTensorManifest(
    grpc::ServerContext* context, const model_express::p2p::GetTensorManifestRequest* request,
    model_express::p2p::GetTensorManifestResponse* response) {
  if (tensors_ == nullptr) {
    RequestGate::Admission admission(gate_, *context, "GetTensorManifest");
    if (!admission.status().ok()) return admission.status();
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("this worker endpoint serves artifact ",
                                     artifacts_ == nullptr ? "" : artifacts_->artifact_id(),
                                     ", not tensors; ask GetArtifactManifestHeader"));
  }
  return ServeChecked(gate_, *tensors_, *context, "GetTensorManifest", *request,
                      [&](const std::string& mx_source_id) {
                        tensors_->FillTensorManifest(mx_source_id, response);
                      });
}

grpc::Status WorkerServiceImpl::GetArtifactManifestHeader(
    grpc::ServerContext* context,
    const model_express::p2p::GetArtifactManifestHeaderRequest* request,
    model_express::p2p::GetArtifactManifestHeaderResponse* response) {
  return ServeArtifact(gate_, artifacts_, *context, "GetArtifactManifestHeader", *request,
                       [&](const std::string& mx_source_id) {
                         artifacts_->FillHeader(mx_source_id, response);
                         return absl::OkStatus();
                       });
}

grpc::Status WorkerServiceImpl::GetArtifactManifestChunks(
    grpc::ServerContext* context,
    const model_express::p2p::GetArtifactManifestChunksRequest* request,
    model_express::p2p::GetArtifactManifestChunksResponse* response) {
  return ServeArtifact(gate_, artifacts_, *context, "GetArtifactManifestChunks", *request,
                       [&](const std::string& mx_source_id) {
                         return artifacts_->FillChunks(mx_source_id, request->start_chunk_index(),
                                                       request->max_chunks(), response);
                       });
}

grpc::Status WorkerServiceImpl::PrepareArtifactChunk(
    grpc::ServerContext* context, const model_express::p2p::PrepareArtifactChunkRequest* request,
    model_express::p2p::PrepareArtifactChunkResponse* response) {
  return ServeArtifact(gate_, artifacts_, *context, "PrepareArtifactChunk", *request,
                       [&](const std::string& mx_source_id) {
                         return artifacts_->Prepare(mx_source_id, request->chunk_index(), response);
                       });
}

grpc::Status WorkerServiceImpl::ReleaseArtifactChunk(
    grpc::ServerContext* context, const model_express::p2p::ReleaseArtifactChunkRequest* request,
    model_express::p2p::ReleaseArtifactChunkResponse* response) {
  return ServeArtifact(gate_, artifacts_, *context, "ReleaseArtifactChunk", *request,
                       [&](const std::string& mx_source_id) {
                         return artifacts_->Release(mx_source_id, request->lease_id(), response);
                       });
}

}  // namespace ferry::worker::internal
