#include "worker/worker_service.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"

namespace ferry::worker::internal {

WorkerServiceImpl::WorkerServiceImpl(const WorkerState* tensors, ArtifactState* artifacts,
                                     TensorReadLeases* leases, RequestGate* gate)
    : tensors_(tensors),
      artifacts_(artifacts),
      leases_(leases),
      gate_(gate),
      manifest_head_(tensors == nullptr ? grpc::Slice()
                                        : PreparedSlice(tensors->tensor_manifest_head())),
      manifest_tail_(tensors == nullptr ? grpc::Slice()
                                        : PreparedSlice(tensors->tensor_manifest_tail())) {
  AddUnary("/model_express.p2p.WorkerService/GetTensorManifest", this,
           &WorkerServiceImpl::GetTensorManifest);
  AddUnary("/model_express.p2p.WorkerService/PrepareTensorRead", this,
           &WorkerServiceImpl::PrepareTensorRead);
  AddUnary("/model_express.p2p.WorkerService/ReleaseTensorRead", this,
           &WorkerServiceImpl::ReleaseTensorRead);
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
    return ToGrpc(check);
  }
  *response = Manifest(mx_source_id);
  return grpc::Status::OK;
}

grpc::ByteBuffer WorkerServiceImpl::Manifest(const std::string& mx_source_id,
                                             std::string prefix) const {
  // Field 1 (tensors), field 2 (mx_source_id), fields 3..7: the bytes of the whole response.
  model_express::p2p::GetTensorManifestResponse middle;
  middle.set_mx_source_id(mx_source_id);
  const std::string field2 = middle.SerializeAsString();
  if (prefix.empty()) return AnswerOf({manifest_head_, grpc::Slice(field2), manifest_tail_});
  // `prefix` holds the enclosing message's fields before it; the manifest follows as field 2 of
  // PrepareTensorReadResponse: its tag, its length, its bytes.
  using google::protobuf::internal::WireFormatLite;
  using google::protobuf::io::CodedOutputStream;
  const uint64_t length = manifest_head_.size() + field2.size() + manifest_tail_.size();
  uint8_t header[16];
  uint8_t* end = CodedOutputStream::WriteTagToArray(
      WireFormatLite::MakeTag(2, WireFormatLite::WIRETYPE_LENGTH_DELIMITED), header);
  end = CodedOutputStream::WriteVarint64ToArray(length, end);
  prefix.append(reinterpret_cast<const char*>(header), end - header);
  return AnswerOf({grpc::Slice(prefix), manifest_head_, grpc::Slice(field2), manifest_tail_});
}

grpc::Status WorkerServiceImpl::CheckLeased(const char* method) const {
  if (tensors_ == nullptr) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("this worker endpoint serves artifact ",
                                     artifacts_ == nullptr ? "" : artifacts_->artifact_id(),
                                     ", not tensors; ", method, " reads tensors"));
  }
  if (leases_ == nullptr) {
    return grpc::Status(
        grpc::StatusCode::UNIMPLEMENTED,
        absl::StrCat(method,
                     ": this ferry source serves its tensors with ferry's engine only (no "
                     "NIXL agent serves them, so there are no NIXL read leases); read it with "
                     "ferry (ferry.v1.FerryWorkerService/GetTransferInfo), or publish it with "
                     "backend='ferry+nixl' for ModelExpress's NIXL targets"));
  }
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::PrepareTensorRead(grpc::ServerContext* context,
                                                  const grpc::ByteBuffer* request,
                                                  grpc::ByteBuffer* response) {
  RequestGate::Admission admission(gate_, *context, "PrepareTensorRead");
  if (!admission.status().ok()) return admission.status();
  if (grpc::Status leased = CheckLeased("PrepareTensorRead"); !leased.ok()) return leased;
  model_express::p2p::PrepareTensorReadRequest parsed;
  if (!ParseRawRequest(*request, &parsed)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "the PrepareTensorRead request does not parse as a "
                        "model_express.p2p.PrepareTensorReadRequest; send one");
  }
  std::string mx_source_id;
  const Status check = tensors_->CheckRequest(
      parsed.mx_source_id(), parsed.has_worker_id() ? &parsed.worker_id() : nullptr, &mx_source_id);
  if (!check.ok()) {
    return ToGrpc(check);
  }
  StatusOr<std::string> lease = leases_->Prepare();
  if (!lease.ok()) {
    return ToGrpc(lease.status());
  }
  model_express::p2p::PrepareTensorReadResponse head;
  head.set_lease_id(*lease);
  *response = Manifest(mx_source_id, head.SerializeAsString());
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::ReleaseTensorRead(
    grpc::ServerContext* context, const model_express::p2p::ReleaseTensorReadRequest* request,
    model_express::p2p::ReleaseTensorReadResponse* response) {
  RequestGate::Admission admission(gate_, *context, "ReleaseTensorRead");
  if (!admission.status().ok()) return admission.status();
  if (grpc::Status leased = CheckLeased("ReleaseTensorRead"); !leased.ok()) return leased;
  std::string mx_source_id;
  Status status = tensors_->CheckRequest(request->mx_source_id(),
                                         request->has_worker_id() ? &request->worker_id() : nullptr,
                                         &mx_source_id);
  if (status.ok()) status = leases_->Release(request->lease_id());
  if (!status.ok()) {
    return ToGrpc(status);
  }
  response->Clear();
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
