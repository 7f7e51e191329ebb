#include "worker/transfer_info_service.h"

#include <string>

namespace ferry::worker::internal {

TransferInfoService::TransferInfoService(const WorkerState* state, const ArtifactState* artifacts,
                                         RequestGate* gate)
    : state_(state),
      artifacts_(artifacts),
      gate_(gate),
      body_(state == nullptr ? grpc::Slice() : PreparedSlice(state->transfer_info_body())) {
  AddUnary("/ferry.v1.FerryWorkerService/GetTransferInfo", this,
           &TransferInfoService::GetTransferInfo);
  AddUnary("/ferry.v1.FerryWorkerService/GetHeldTensors", this,
           &TransferInfoService::GetHeldTensors);
  AddUnary("/ferry.v1.FerryWorkerService/GetArtifactTransferInfo", this,
           &TransferInfoService::GetArtifactTransferInfo);
}

grpc::Status TransferInfoService::GetTransferInfo(grpc::ServerContext* context,
                                                  const grpc::ByteBuffer* request,
                                                  grpc::ByteBuffer* response) {
  RequestGate::Admission admission(gate_, *context, "GetTransferInfo");
  if (!admission.status().ok()) return admission.status();
  if (state_ == nullptr) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "this worker endpoint serves an artifact, not tensors; ask "
                        "GetArtifactTransferInfo");
  }
  ferry::v1::GetTransferInfoRequest parsed;
  if (!ParseRawRequest(*request, &parsed)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "the GetTransferInfo request does not parse as a "
                        "ferry.v1.GetTransferInfoRequest; send one");
  }
  std::string mx_source_id;
  const Status check = state_->CheckRequest(
      parsed.mx_source_id(), parsed.has_worker_id() ? &parsed.worker_id() : nullptr, &mx_source_id);
  if (!check.ok()) {
    return ToGrpc(check);
  }
  // Field 1 (mx_source_id), then the prepared fields 2..8: the bytes of the whole response.
  ferry::v1::GetTransferInfoResponse head;
  head.set_mx_source_id(mx_source_id);
  *response = AnswerOf({grpc::Slice(head.SerializeAsString()), body_});
  return grpc::Status::OK;
}

grpc::Status TransferInfoService::GetHeldTensors(grpc::ServerContext* context,
                                                 const ferry::v1::GetHeldTensorsRequest* request,
                                                 ferry::v1::GetHeldTensorsResponse* response) {
  RequestGate::Admission admission(gate_, *context, "GetHeldTensors");
  if (!admission.status().ok()) return admission.status();
  if (state_ == nullptr) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "this worker endpoint serves an artifact, not tensors");
  }
  std::string mx_source_id;
  const Status check = state_->CheckRequest(
      request->mx_source_id(), request->has_worker_id() ? &request->worker_id() : nullptr,
      &mx_source_id);
  if (!check.ok()) {
    return ToGrpc(check);
  }
  const HeldTensors* held = state_->manifest().held.get();
  response->set_tensor_count(static_cast<uint32_t>(state_->manifest().tensors.size()));
  if (held == nullptr || held->complete()) {
    response->set_complete(true);
  } else {
    response->set_held(held->Bitmap());
    response->set_landing(held->LandingBitmap());
  }
  return grpc::Status::OK;
}

grpc::Status TransferInfoService::GetArtifactTransferInfo(
    grpc::ServerContext* context, const ferry::v1::GetArtifactTransferInfoRequest* request,
    ferry::v1::GetArtifactTransferInfoResponse* response) {
  return ServeArtifact(gate_, artifacts_, *context, "GetArtifactTransferInfo", *request,
                       [&](const std::string& mx_source_id) {
                         artifacts_->FillTransferInfo(mx_source_id, response);
                         return absl::OkStatus();
                       });
}

}  // namespace ferry::worker::internal
