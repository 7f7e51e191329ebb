// ferry.v1.FerryWorkerService: GetTransferInfo, what a ferry target needs to connect to a
// source's transfer engine (the blob) and to verify what it read (per-tensor XXH3-64).
// Synchronous API, as every ferry service.
#ifndef FERRY_WORKER_TRANSFER_INFO_SERVICE_H_
#define FERRY_WORKER_TRANSFER_INFO_SERVICE_H_

#include "ferry/v1/worker.grpc.pb.h"
#include "worker/artifact_state.h"
#include "worker/request_gate.h"
#include "worker/worker_state.h"

namespace ferry::worker::internal {

// Thread-safe. Borrows `state` and `gate`, which must outlive the service.
class TransferInfoService final : public ferry::v1::FerryWorkerService::Service {
 public:
  // `state` (tensors) and `artifacts` may each be null.
  TransferInfoService(const WorkerState* state, const ArtifactState* artifacts, RequestGate* gate)
      : state_(state), artifacts_(artifacts), gate_(gate) {}

  // UNAUTHENTICATED / RESOURCE_EXHAUSTED from the gate; FAILED_PRECONDITION on an
  // mx_source_id or worker_id mismatch; else the blob, tensors, checksums and totals.
  grpc::Status GetTransferInfo(grpc::ServerContext* context,
                               const ferry::v1::GetTransferInfoRequest* request,
                               ferry::v1::GetTransferInfoResponse* response) override;

  // NOT_FOUND when no artifact is served; FAILED_PRECONDITION on an mx_source_id or artifact_id
  // mismatch; else the blob, file offsets, source root and signature.
  grpc::Status GetArtifactTransferInfo(
      grpc::ServerContext* context, const ferry::v1::GetArtifactTransferInfoRequest* request,
      ferry::v1::GetArtifactTransferInfoResponse* response) override;

 private:
  const WorkerState* const state_;
  const ArtifactState* const artifacts_;
  RequestGate* const gate_;
};

}  // namespace ferry::worker::internal

#endif  // FERRY_WORKER_TRANSFER_INFO_SERVICE_H_
