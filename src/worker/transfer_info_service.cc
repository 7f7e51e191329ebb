#include "worker/transfer_info_service.h"

#include <string>

namespace ferry::worker::internal {

grpc::Status TransferInfoService::GetTransferInfo(grpc::ServerContext* context,
                                                  const ferry::v1::GetTransferInfoRequest* request,
                                                  ferry::v1::GetTransferInfoResponse* response) {
  if (state_ == nullptr) {
    RequestGate::Admission admission(gate_, *context, "GetTransferInfo");
    if (!admission.status().ok()) return admission.status();
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "this worker endpoint serves an artifact, not tensors; ask "
                        "GetArtifactTransferInfo");
  }
  return ServeChecked(
      gate_, *state_, *context, "GetTransferInfo", *request,
      [&](const std::string& mx_source_id) { state_->FillTransferInfo(mx_source_id, response); });
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
