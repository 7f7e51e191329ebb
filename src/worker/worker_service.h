// model_express.p2p.WorkerService as ModelExpress's source worker serves it (contract section
// 11): GetTensorManifest for a tensor source, PrepareTensorRead / ReleaseTensorRead (read leases)
// where a NIXL agent serves the same tensors, and the four artifact RPCs for an artifact source.
// One process may serve either or both. Synchronous API, as every ferry service: gRPC 1.51
// stalls sync methods when callback methods share the server. GetTensorManifest is served raw
// (raw_service.h) from the answer WorkerState serialized once, so requests cost no copy of a
// many-tensor manifest.
#ifndef FERRY_WORKER_WORKER_SERVICE_H_
#define FERRY_WORKER_WORKER_SERVICE_H_

#include "model_express/p2p.pb.h"
#include "worker/artifact_state.h"
#include "worker/raw_service.h"
#include "worker/request_gate.h"
#include "worker/tensor_read_leases.h"
#include "worker/worker_state.h"

namespace ferry::worker::internal {

// Thread-safe. Borrows `tensors`, `artifacts` (either may be null), `leases` (null: no NIXL
// agent serves the tensors, so no read leases) and `gate`, which must outlive the service. Every
// method first passes the gate (UNAUTHENTICATED, RESOURCE_EXHAUSTED).
class WorkerServiceImpl final : public HandRegisteredService {
 public:
  WorkerServiceImpl(const WorkerState* tensors, ArtifactState* artifacts, TensorReadLeases* leases,
                    RequestGate* gate);

  // INVALID_ARGUMENT when the request is not a GetTensorManifestRequest; FAILED_PRECONDITION on
  // an mx_source_id or worker_id mismatch, or when this endpoint serves no tensors; else the
  // manifest: exactly the bytes of WorkerState::FillTensorManifest's answer.
  grpc::Status GetTensorManifest(grpc::ServerContext* context, const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response);

  // FAILED_PRECONDITION without tensors or on an mx_source_id or worker_id mismatch;
  // UNIMPLEMENTED when no NIXL agent serves the tensors (a ferry-only source: read it with
  // FerryWorkerService); RESOURCE_EXHAUSTED when every lease is taken, UNAVAILABLE while the
  // source stops; else a new lease and the manifest, whose bytes are exactly
  // GetTensorManifest's answer.
  grpc::Status PrepareTensorRead(grpc::ServerContext* context, const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response);
  // The same checks; INVALID_ARGUMENT without a lease_id, NOT_FOUND for a lease that is unknown
  // or expired; else the lease ends.
  grpc::Status ReleaseTensorRead(grpc::ServerContext* context,
                                 const model_express::p2p::ReleaseTensorReadRequest* request,
                                 model_express::p2p::ReleaseTensorReadResponse* response);

  // The artifact RPCs: NOT_FOUND when this endpoint serves no artifact; FAILED_PRECONDITION for
  // another mx_source_id or artifact_id; then as ArtifactState describes.
  grpc::Status GetArtifactManifestHeader(
      grpc::ServerContext* context,
      const model_express::p2p::GetArtifactManifestHeaderRequest* request,
      model_express::p2p::GetArtifactManifestHeaderResponse* response);
  grpc::Status GetArtifactManifestChunks(
      grpc::ServerContext* context,
      const model_express::p2p::GetArtifactManifestChunksRequest* request,
      model_express::p2p::GetArtifactManifestChunksResponse* response);
  grpc::Status PrepareArtifactChunk(grpc::ServerContext* context,
                                    const model_express::p2p::PrepareArtifactChunkRequest* request,
                                    model_express::p2p::PrepareArtifactChunkResponse* response);
  grpc::Status ReleaseArtifactChunk(grpc::ServerContext* context,
                                    const model_express::p2p::ReleaseArtifactChunkRequest* request,
                                    model_express::p2p::ReleaseArtifactChunkResponse* response);

 private:
  const WorkerState* const tensors_;
  ArtifactState* const artifacts_;
  TensorReadLeases* const leases_;
  RequestGate* const gate_;
  // The prepared manifest around mx_source_id; empty without tensors.
  const grpc::Slice manifest_head_;
  const grpc::Slice manifest_tail_;

  // The tensor manifest answer for `mx_source_id`: head, field 2, tail, each referred to.
  grpc::ByteBuffer Manifest(const std::string& mx_source_id, std::string prefix = "") const;
  // UNIMPLEMENTED / FAILED_PRECONDITION as PrepareTensorRead describes, else OK.
  grpc::Status CheckLeased(const char* method) const;
};

}  // namespace ferry::worker::internal

#endif  // FERRY_WORKER_WORKER_SERVICE_H_
