// ferry.v1.FerryWorkerService: GetTransferInfo, what a ferry target needs to connect to a
// source's transfer engine (the blob) and to verify what it read (per-tensor XXH3-64).
//
// GetTransferInfo is served raw (raw_service.h): the answer is serialized once, by WorkerState,
// and every request is answered with a reference to those bytes plus its mx_source_id. A
// per-request copy of a 100,000-tensor answer cost tens of MB per request, held until the
// target read it.
#ifndef FERRY_WORKER_TRANSFER_INFO_SERVICE_H_
#define FERRY_WORKER_TRANSFER_INFO_SERVICE_H_

#include "ferry/v1/worker.pb.h"
#include "worker/artifact_state.h"
#include "worker/raw_service.h"
#include "worker/request_gate.h"
#include "worker/worker_state.h"

namespace ferry::worker::internal {

// Thread-safe. Borrows `state` and `gate`, which must outlive the service.
class TransferInfoService final : public HandRegisteredService {
 public:
  // `state` (tensors) and `artifacts` may each be null.
  TransferInfoService(const WorkerState* state, const ArtifactState* artifacts, RequestGate* gate);

  // UNAUTHENTICATED / RESOURCE_EXHAUSTED from the gate; INVALID_ARGUMENT when the request is
  // not a GetTransferInfoRequest; FAILED_PRECONDITION on an mx_source_id or worker_id mismatch;
  // else the blob, tensors, checksums and totals: exactly the bytes of the
  // GetTransferInfoResponse that WorkerState::FillTransferInfo builds.
  grpc::Status GetTransferInfo(grpc::ServerContext* context, const grpc::ByteBuffer* request,
                               grpc::ByteBuffer* response);

  // UNAUTHENTICATED / RESOURCE_EXHAUSTED from the gate; FAILED_PRECONDITION without tensors or
  // on an mx_source_id or worker_id mismatch; else which tensors are served now.
  grpc::Status GetHeldTensors(grpc::ServerContext* context,
                              const ferry::v1::GetHeldTensorsRequest* request,
                              ferry::v1::GetHeldTensorsResponse* response);

  // NOT_FOUND when no artifact is served; FAILED_PRECONDITION on an mx_source_id or artifact_id
  // mismatch; else the blob, file offsets, source root and signature.
  grpc::Status GetArtifactTransferInfo(grpc::ServerContext* context,
                                       const ferry::v1::GetArtifactTransferInfoRequest* request,
                                       ferry::v1::GetArtifactTransferInfoResponse* response);

 private:
  const WorkerState* const state_;
  const ArtifactState* const artifacts_;
  RequestGate* const gate_;
  // state_->transfer_info_body(), the one copy every answer refers to; empty without a state.
  const grpc::Slice body_;
};

}  // namespace ferry::worker::internal

#endif  // FERRY_WORKER_TRANSFER_INFO_SERVICE_H_
