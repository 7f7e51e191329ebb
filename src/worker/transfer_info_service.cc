#include "worker/transfer_info_service.h"

#include <string>

namespace ferry::worker::internal {

grpc::Status TransferInfoService::GetTransferInfo(grpc::ServerContext* context,
                                                  const ferry::v1::GetTransferInfoRequest* request,
                                                  ferry::v1::GetTransferInfoResponse* response) {
  return ServeChecked(
      gate_, *state_, *context, "GetTransferInfo", *request,
      [&](const std::string& mx_source_id) { state_->FillTransferInfo(mx_source_id, response); });
}

}  // namespace ferry::worker::internal
