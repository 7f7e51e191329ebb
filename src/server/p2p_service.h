// model_express.p2p.P2pService: decode -> validate -> store -> encode (contract section 5),
// with the fixes of section 14 (see docs/protocol.md for every deviation and why). Every answer
// that refuses a request (success=false, found=false) or fails carries its canonical code as
// trailing metadata (internal::kStatusCodeMetadataKey): INVALID_ARGUMENT for a bad or oversized
// request, NOT_FOUND for a missing record, RESOURCE_EXHAUSTED for a principal's worker quota,
// UNAUTHENTICATED / PERMISSION_DENIED, UNAVAILABLE or INTERNAL when the store failed.
// Thread-safe: handlers run concurrently on gRPC's threads; state lives in the store.
#ifndef FERRY_SERVER_P2P_SERVICE_H_
#define FERRY_SERVER_P2P_SERVICE_H_

#include <cstdint>
#include <functional>

#include "absl/time/time.h"
#include "model_express/p2p.grpc.pb.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "store/metadata_store.h"

namespace ferry::server {

inline constexpr size_t kDefaultMaxRecordBytes = 64u << 20;       // --max-record-bytes
inline constexpr size_t kDefaultMaxRecordTensors = 262144;        // --max-record-tensors
inline constexpr uint64_t kDefaultMaxWorkersPerPrincipal = 4096;  // --max-workers-per-principal

struct P2pServiceOptions {
  // ListSources(READY) leaves out workers not refreshed for longer than this.
  absl::Duration heartbeat_timeout = absl::Seconds(90);
  // Server clock in unix ms; tests may substitute one.
  std::function<int64_t()> now_ms;
  // Bearer-token authentication; null turns it off. Borrowed; must outlive the service.
  TokenAuthenticator* auth = nullptr;
  // What one worker record may hold, as stored (the tensor list in source_payload): its
  // serialized size, and the number of tensors in it. Larger publishes are refused
  // (success=false, code INVALID_ARGUMENT). The defaults fit models of a few hundred thousand
  // tensors.
  size_t max_record_bytes = kDefaultMaxRecordBytes;
  size_t max_record_tensors = kDefaultMaxRecordTensors;
  // Workers one principal may own across all sources (all callers are one principal when
  // authentication is off); a publish that would add one more is refused (success=false, code
  // RESOURCE_EXHAUSTED).
  uint64_t max_workers_per_principal = kDefaultMaxWorkersPerPrincipal;
};

// Limits on request fields beyond ModelExpress's own checks, so that hostile requests are
// refused with a clear message instead of being stored.
inline constexpr size_t kMaxIdBytes = 256;         // worker_id, mx_source_id
inline constexpr size_t kMaxEndpointBytes = 4096;  // endpoints, agent name, accelerator, session
inline constexpr size_t kMaxTopologyEntries = 64;  // worker.topology (a handful of levels)
inline constexpr size_t kMaxTopologyBytes = 256;   // each topology key and value

class P2pService final : public ::model_express::p2p::P2pService::Service {
 public:
  // Borrows `store` and `metrics`; both must outlive the service.
  P2pService(store::MetadataStore* store, Metrics* metrics, P2pServiceOptions options);

  grpc::Status PublishMetadata(grpc::ServerContext* context,
                               const ::model_express::p2p::PublishMetadataRequest* request,
                               ::model_express::p2p::PublishMetadataResponse* response) override;
  grpc::Status ListSources(grpc::ServerContext* context,
                           const ::model_express::p2p::ListSourcesRequest* request,
                           ::model_express::p2p::ListSourcesResponse* response) override;
  grpc::Status GetMetadata(grpc::ServerContext* context,
                           const ::model_express::p2p::GetMetadataRequest* request,
                           ::model_express::p2p::GetMetadataResponse* response) override;
  grpc::Status UpdateStatus(grpc::ServerContext* context,
                            const ::model_express::p2p::UpdateStatusRequest* request,
                            ::model_express::p2p::UpdateStatusResponse* response) override;

 private:
  // The caller's principal (empty name when authentication is off), or UNAUTHENTICATED.
  StatusOr<Principal> Authenticate(const grpc::ServerContext& context);

  store::MetadataStore* const store_;
  Metrics* const metrics_;
  const P2pServiceOptions options_;
};

}  // namespace ferry::server

#endif  // FERRY_SERVER_P2P_SERVICE_H_
