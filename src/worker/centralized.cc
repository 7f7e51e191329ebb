#include "worker/centralized.h"

#include "absl/strings/str_cat.h"
#include "worker/transfer_info_check.h"

namespace ferry::worker {

std::string EncodeCentralizedMetadata(const ferry::v1::GetTransferInfoResponse& info) {
  std::string out(kCentralizedMagic);
  info.AppendToString(&out);
  return out;
}

StatusOr<std::optional<ferry::v1::GetTransferInfoResponse>> DecodeCentralizedMetadata(
    std::string_view nixl_metadata, const std::string& worker_id) {
  if (nixl_metadata.substr(0, kCentralizedMagic.size()) != kCentralizedMagic) {
    return std::optional<ferry::v1::GetTransferInfoResponse>();
  }
  const std::string_view payload = nixl_metadata.substr(kCentralizedMagic.size());
  ferry::v1::GetTransferInfoResponse info;
  if (!info.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nixl_metadata starts with ferry's ", std::string(kCentralizedMagic), " prefix but its ",
        payload.size(),
        " bytes are not a valid ferry.v1.GetTransferInfoResponse; the record is damaged or was "
        "written by an incompatible ferry: republish the source or try another one"));
  }
  FERRY_RETURN_IF_ERROR(
      CheckTransferInfo(info, worker_id, "the record's transfer info (centralized mode)"));
  return std::optional<ferry::v1::GetTransferInfoResponse>(std::move(info));
}

namespace {

void FillEndpoints(const WorkerState& state, model_express::p2p::WorkerMetadata* record) {
  const WorkerManifest& m = state.manifest();
  record->set_worker_rank(m.worker_rank);
  record->set_metadata_endpoint(m.metadata_endpoint);
  record->set_agent_name(m.agent_name);
  record->set_accelerator(m.accelerator);
}

}  // namespace

void FillP2pRecord(const WorkerState& state, const std::string& worker_grpc_endpoint,
                   model_express::p2p::WorkerMetadata* record) {
  FillEndpoints(state, record);
  record->set_worker_grpc_endpoint(worker_grpc_endpoint);
}

void FillCentralizedRecord(const WorkerState& state, model_express::p2p::WorkerMetadata* record) {
  FillEndpoints(state, record);
  ferry::v1::GetTransferInfoResponse info;
  state.FillTransferInfo(state.mx_source_id(), &info);
  record->set_nixl_metadata(EncodeCentralizedMetadata(info));
  FillTensorSource(state, record);
}

void FillTensorSource(const WorkerState& state, model_express::p2p::WorkerMetadata* record) {
  *record->mutable_tensor_source() = state.tensor_source();
}

}  // namespace ferry::worker
