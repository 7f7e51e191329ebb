// model_express.p2p.P2pService: decode -> validate -> store -> encode (contract section 5),
// with the fixes of section 14 (see docs/protocol.md for every deviation and why).
// Thread-safe: handlers run concurrently on gRPC's threads; state lives in the store.
#ifndef FERRY_SERVER_P2P_SERVICE_H_
#define FERRY_SERVER_P2P_SERVICE_H_

#include <cstdint>
#include <functional>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "model_express/p2p.grpc.pb.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "store/metadata_store.h"

namespace ferry::server {

struct P2pServiceOptions {
  // ListSources(READY) leaves out workers not refreshed for longer than this.
  absl::Duration heartbeat_timeout = absl::Seconds(90);
  // Server clock in unix ms; tests may substitute one.
  std::function<int64_t()> now_ms;
  // Bearer-token authentication; null turns it off. Borrowed; must outlive the service.
  TokenAuthenticator* auth = nullptr;
};

// Limits on request fields beyond ModelExpress's own checks, so that hostile requests are
// refused with a clear message instead of being stored.
inline constexpr size_t kMaxIdBytes = 256;         // worker_id, mx_source_id
inline constexpr size_t kMaxEndpointBytes = 4096;  // endpoints, agent name, accelerator, session

// GetMetadata is served as a raw (pre-serialized) callback method so that the encoded answer for
// a large worker (thousands of tensors) can be cached and reused while the worker's version is
// unchanged; the other methods are ordinary synchronous handlers.
class P2pService final : public ::model_express::p2p::P2pService::WithRawCallbackMethod_GetMetadata<
                             ::model_express::p2p::P2pService::Service> {
 public:
  // Borrows `store` and `metrics`; both must outlive the service.
  P2pService(store::MetadataStore* store, Metrics* metrics, P2pServiceOptions options);

  grpc::Status PublishMetadata(grpc::ServerContext* context,
                               const ::model_express::p2p::PublishMetadataRequest* request,
                               ::model_express::p2p::PublishMetadataResponse* response) override;
  grpc::Status ListSources(grpc::ServerContext* context,
                           const ::model_express::p2p::ListSourcesRequest* request,
                           ::model_express::p2p::ListSourcesResponse* response) override;
  grpc::ServerUnaryReactor* GetMetadata(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::Status UpdateStatus(grpc::ServerContext* context,
                            const ::model_express::p2p::UpdateStatusRequest* request,
                            ::model_express::p2p::UpdateStatusResponse* response) override;

 private:
  // The caller's principal (empty name when authentication is off), or UNAUTHENTICATED.
  StatusOr<Principal> Authenticate(const grpc::ServerContextBase& context);
  // GetMetadata's body: decodes the request, answers from the cache or the store.
  grpc::Status GetMetadataRaw(const grpc::ServerContextBase& context, const grpc::ByteBuffer& in,
                              grpc::ByteBuffer* out);

  // Encoded GetMetadata answers of large workers, keyed by "source\0worker".
  struct CachedAnswer {
    uint64_t version = 0;
    grpc::Slice bytes;  // reference-counted: serving it copies nothing
  };
  static constexpr size_t kCacheMinBytes = 32 << 10;  // smaller answers are cheap to build
  static constexpr size_t kCacheMaxBytes = 256 << 20;

  store::MetadataStore* const store_;
  Metrics* const metrics_;
  const P2pServiceOptions options_;
  absl::Mutex cache_mu_;
  absl::flat_hash_map<std::string, CachedAnswer> cache_ ABSL_GUARDED_BY(cache_mu_);
  size_t cache_bytes_ ABSL_GUARDED_BY(cache_mu_) = 0;
};

}  // namespace ferry::server

#endif  // FERRY_SERVER_P2P_SERVICE_H_
