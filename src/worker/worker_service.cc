#include "worker/worker_service.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace ferry::worker::internal {

WorkerServiceImpl::WorkerServiceImpl(const WorkerState* tensors, ArtifactState* artifacts,
                                     RequestGate* gate)
    : tensors_(tensors),
      artifacts_(artifacts),
      gate_(gate),
      manifest_head_(tensors == nullptr ? grpc::Slice()
                                        : PreparedSlice(tensors->tensor_manifest_head())),
      manifest_tail_(tensors == nullptr ? grpc::Slice()
                                        : PreparedSlice(tensors->tensor_manifest_tail())) {
  AddUnary("/model_express.p2p.WorkerService/GetTensorManifest", this,
           &WorkerServiceImpl::GetTensorManifest);
  AddUnary("/model_express.p2p.WorkerService/GetArtifactManifestHeader", this,
           &WorkerServiceImpl::GetArtifactManifestHeader);
  AddUnary("/model_express.p2p.WorkerService/GetArtifactManifestChunks", this,
           &WorkerServiceImpl::GetArtifactManifestChunks);
  AddUnary("/model_express.p2p.WorkerService/PrepareArtifactChunk", this,
           &WorkerServiceImpl::PrepareArtifactChunk);
  AddUnary("/model_express.p2p.WorkerService/ReleaseArtifactChunk", this,
           &WorkerServiceImpl::ReleaseArtifactChunk);
}

grpc::Status WorkerServiceImpl::GetTensorManifest(grpc::ServerContext* context,
                                                  const grpc::ByteBuffer* request,
                                                  grpc::ByteBuffer* response) {
  RequestGate::Admission admission(gate_, *context, "GetTensorManifest");
  if (!admission.status().ok()) return admission.status();
  if (tensors_ == nullptr) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("this worker endpoint serves artifact ",
                                     artifacts_ == nullptr ? "" : artifacts_->artifact_id(),
                                     ", not tensors; ask GetArtifactManifestHeader"));
  }
  model_express::p2p::GetTensorManifestRequest parsed;
  if (!ParseRawRequest(*request, &parsed)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "the GetTensorManifest request does not parse as a "
                        "model_express.p2p.GetTensorManifestRequest; send one");
  }
  std::string mx_source_id;
  const Status check = tensors_->CheckRequest(
      parsed.mx_source_id(), parsed.has_worker_id() ? &parsed.worker_id() : nullptr, &mx_source_id);
  if (!check.ok()) {
    return grpc::Status(static_cast<grpc::StatusCode>(check.code()), std::string(check.message()));
  }
  // Field 1 (tensors), field 2 (mx_source_id), fields 3..7: the bytes of the whole response.
  model_express::p2p::GetTensorManifestResponse middle;
  middle.set_mx_source_id(mx_source_id);
  *response = AnswerOf({manifest_head_, grpc::Slice(middle.SerializeAsString()), manifest_tail_});
  return grpc::Status::OK;
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
