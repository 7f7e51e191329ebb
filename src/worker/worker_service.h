// model_express.p2p.WorkerService as ModelExpress's source worker serves it (contract section
// 11): GetTensorManifest for a tensor source, and the four artifact RPCs for an artifact source.
// One process may serve either or both. Synchronous API, as every ferry service: gRPC 1.51
// stalls sync methods when callback methods share the server.
#ifndef FERRY_WORKER_WORKER_SERVICE_H_
#define FERRY_WORKER_WORKER_SERVICE_H_

#include "model_express/p2p.grpc.pb.h"
#include "worker/artifact_state.h"
#include "worker/request_gate.h"
#include "worker/worker_state.h"

namespace ferry::worker::internal {

// Thread-safe. Borrows `tensors`, `artifacts` (either may be null) and `gate`, which must
// outlive the service. Every method first passes the gate (UNAUTHENTICATED, RESOURCE_EXHAUSTED).
class WorkerServiceImpl final : public model_express::p2p::WorkerService::Service {
 public:
  WorkerServiceImpl(const WorkerState* tensors, ArtifactState* artifacts, RequestGate* gate)
      : tensors_(tensors), artifacts_(artifacts), gate_(gate) {}

  // FAILED_PRECONDITION on an mx_source_id or worker_id mismatch, or when this endpoint serves
  // no tensors; else the manifest.
  grpc::Status GetTensorManifest(grpc::ServerContext* context,
                                 const model_express::p2p::GetTensorManifestRequest* request,
                                 model_express::p2p::GetTensorManifestResponse* response) override;

  // The artifact RPCs: NOT_FOUND when this endpoint serves no artifact; FAILED_PRECONDITION for
  // another mx_source_id or artifact_id; then as ArtifactState describes.
  grpc::Status GetArtifactManifestHeader(
      grpc::ServerContext* context,
      const model_express::p2p::GetArtifactManifestHeaderRequest* request,
      model_express::p2p::GetArtifactManifestHeaderResponse* response) override;
  grpc::Status GetArtifactManifestChunks(
      grpc::ServerContext* context,
      const model_express::p2p::GetArtifactManifestChunksRequest* request,
      model_express::p2p::GetArtifactManifestChunksResponse* response) override;
  grpc::Status PrepareArtifactChunk(
      grpc::ServerContext* context, const model_express::p2p::PrepareArtifactChunkRequest* request,
      model_express::p2p::PrepareArtifactChunkResponse* response) override;
  grpc::Status ReleaseArtifactChunk(
      grpc::ServerContext* context, const model_express::p2p::ReleaseArtifactChunkRequest* request,
      model_express::p2p::ReleaseArtifactChunkResponse* response) override;

 private:
  const WorkerState* const tensors_;
  ArtifactState* const artifacts_;
  RequestGate* const gate_;
};

}  // namespace ferry::worker::internal

#endif  // FERRY_WORKER_WORKER_SERVICE_H_
