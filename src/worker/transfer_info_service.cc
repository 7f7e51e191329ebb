#include "worker/transfer_info_service.h"

#include <string>
#include <vector>

#include "grpcpp/impl/rpc_service_method.h"
#include "grpcpp/support/method_handler.h"

namespace ferry::worker::internal {
namespace {

grpc::Slice BodyOf(const WorkerState* state) {
  if (state == nullptr) return grpc::Slice();
  const std::string& body = state->transfer_info_body();
  return grpc::Slice(body.data(), body.size());  // the one copy every answer refers to
}

}  // namespace

TransferInfoService::TransferInfoService(const WorkerState* state, const ArtifactState* artifacts,
                                         RequestGate* gate)
    : state_(state), artifacts_(artifacts), gate_(gate), body_(BodyOf(state)) {
  // What ferry/v1/worker.grpc.pb.cc's FerryWorkerService::Service does, with a ByteBuffer
  // answer for GetTransferInfo.
  AddMethod(new grpc::internal::RpcServiceMethod(
      "/ferry.v1.FerryWorkerService/GetTransferInfo", grpc::internal::RpcMethod::NORMAL_RPC,
      new grpc::internal::RpcMethodHandler<TransferInfoService, grpc::ByteBuffer, grpc::ByteBuffer>(
          [](TransferInfoService* service, grpc::ServerContext* context,
             const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
            return service->GetTransferInfo(context, request, response);
          },
          this)));
  AddMethod(new grpc::internal::RpcServiceMethod(
      "/ferry.v1.FerryWorkerService/GetArtifactTransferInfo", grpc::internal::RpcMethod::NORMAL_RPC,
      new grpc::internal::RpcMethodHandler<TransferInfoService,
                                           ferry::v1::GetArtifactTransferInfoRequest,
                                           ferry::v1::GetArtifactTransferInfoResponse>(
          [](TransferInfoService* service, grpc::ServerContext* context,
             const ferry::v1::GetArtifactTransferInfoRequest* request,
             ferry::v1::GetArtifactTransferInfoResponse* response) {
            return service->GetArtifactTransferInfo(context, request, response);
          },
          this)));
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
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (request->Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) {
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  ferry::v1::GetTransferInfoRequest parsed;
  if (!parsed.ParseFromString(bytes)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "the GetTransferInfo request does not parse as a "
                        "ferry.v1.GetTransferInfoRequest; send one");
  }
  std::string mx_source_id;
  const Status check = state_->CheckRequest(
      parsed.mx_source_id(), parsed.has_worker_id() ? &parsed.worker_id() : nullptr, &mx_source_id);
  if (!check.ok()) {
    return grpc::Status(static_cast<grpc::StatusCode>(check.code()), std::string(check.message()));
  }
  // Field 1 (mx_source_id) first, then the prepared fields 2..8: the bytes of the whole
  // GetTransferInfoResponse. proto3 does not serialize an empty mx_source_id.
  ferry::v1::GetTransferInfoResponse head;
  head.set_mx_source_id(mx_source_id);
  const std::string head_bytes = head.SerializeAsString();
  const grpc::Slice parts[2] = {grpc::Slice(head_bytes), body_};
  *response = head_bytes.empty() ? grpc::ByteBuffer(&parts[1], 1) : grpc::ByteBuffer(parts, 2);
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
