// Centralized mode: the published record itself carries what targets would otherwise fetch
// from the source's worker endpoint, for deployments where targets cannot reach sources' gRPC
// ports (only their data ports).
//
//   P2P mode (default): the record carries endpoints only: worker_grpc_endpoint,
//     metadata_endpoint, agent_name, accelerator. Targets call the WorkerServer.
//   Centralized mode: the record also carries nixl_metadata = EncodeCentralizedMetadata(info)
//     and tensor_source (ModelExpress TensorDescriptors, for ModelExpress readers).
//
// ModelExpress's own sources put NIXL agent metadata in nixl_metadata; the "FERRYTI1" prefix
// tells ferry's encoding apart, so a ferry target can skip records it cannot use.
#ifndef FERRY_WORKER_CENTRALIZED_H_
#define FERRY_WORKER_CENTRALIZED_H_

#include <optional>
#include <string>
#include <string_view>

#include "ferry/status.h"
#include "ferry/v1/worker.pb.h"
#include "model_express/p2p.pb.h"
#include "worker/worker_state.h"

namespace ferry::worker {

// Starts every encoded value.
inline constexpr std::string_view kCentralizedMagic = "FERRYTI1";

// kCentralizedMagic followed by the serialized `info`.
std::string EncodeCentralizedMetadata(const ferry::v1::GetTransferInfoResponse& info);

// nullopt when `nixl_metadata` does not start with kCentralizedMagic (not ferry's: NIXL agent
// metadata, or empty). InvalidArgument when it does but the rest is not a valid
// GetTransferInfoResponse; FailedPrecondition when it fails the checks every transfer info
// passes (CheckTransferInfo, with `worker_id`: the record's worker; empty: not checked).
StatusOr<std::optional<ferry::v1::GetTransferInfoResponse>> DecodeCentralizedMetadata(
    std::string_view nixl_metadata, const std::string& worker_id = "");

// P2P mode: sets worker_rank, worker_grpc_endpoint (WorkerServer::endpoint()),
// metadata_endpoint, agent_name and accelerator from `state`. Leaves the rest of `record` alone.
void FillP2pRecord(const WorkerState& state, const std::string& worker_grpc_endpoint,
                   model_express::p2p::WorkerMetadata* record);

// Centralized mode: sets worker_rank, metadata_endpoint, agent_name and accelerator, plus
// nixl_metadata (the encoded transfer info, with the state's current mx_source_id) and
// tensor_source (TensorDescriptors). Leaves worker_grpc_endpoint and the rest alone.
void FillCentralizedRecord(const WorkerState& state, model_express::p2p::WorkerMetadata* record);

// Sets record->tensor_source to the state's TensorDescriptors {name, addr = region base +
// offset, size, device_id 0, torch dtype}.
void FillTensorSource(const WorkerState& state, model_express::p2p::WorkerMetadata* record);

}  // namespace ferry::worker

#endif  // FERRY_WORKER_CENTRALIZED_H_
