#include "worker/transfer_info_service.h"

#include <string>

namespace ferry::worker::internal {

grpc::Status TransferInfoService::GetTransferInfo(grpc::ServerContext* context,
                                                  const ferry::v1::GetTransferInfoRequest* request,
                                                  ferry::v1::GetTransferInfoResponse* response) {
  RequestGate::Admission admission(gate_, *context, "GetTransferInfo");
  if (!admission.status().ok()) return admission.status();
  std::string mx_source_id;
  const Status check = state_->CheckRequest(
      request->mx_source_id(), request->has_worker_id() ? &request->worker_id() : nullptr,
      &mx_source_id);
  if (!check.ok()) {
    return grpc::Status(static_cast<grpc::StatusCode>(check.code()), std::string(check.message()));
  }
  state_->FillTransferInfo(mx_source_id, response);
  return grpc::Status::OK;
}

}  // namespace ferry::worker::internal
