// WorkerClient: a target's calls to one source's worker endpoint (the worker_grpc_endpoint of
// its record): ModelExpress's GetTensorManifest and ferry's GetTransferInfo.
//
// No retries: a source that fails is skipped and the caller tries the next one. Every error
// names the RPC, the endpoint, the gRPC code and the source's message, then what to do, e.g.
// "GetTransferInfo to 10.0.0.7:40123 failed: UNAUTHENTICATED: ...; pass the deployment token
// with --token-file or FERRY_TOKEN_FILE".
//
// Thread-safe: calls may run concurrently over the one channel. Creating a client does not
// connect; the first call does.
#ifndef FERRY_WORKER_WORKER_CLIENT_H_
#define FERRY_WORKER_WORKER_CLIENT_H_

#include <grpcpp/support/status.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "artifacts/manifest.h"
#include "ferry/metadata_client.h"
#include "ferry/status.h"
#include "ferry/v1/worker.pb.h"
#include "model_express/p2p.pb.h"

namespace grpc {
class Channel;
class ClientContext;
}  // namespace grpc

namespace ferry::internal {
class TokenSource;
}  // namespace ferry::internal

namespace ferry::worker {

// The token (the deployment's, the one ferry-server takes; set at most one of token,
// token_file and token_source; none: no authorization header) and TLS fields come from
// ClientCredentials, as for the metadata client.
struct WorkerClientOptions : ClientCredentials {
  // host:port of the source's endpoint (its record's worker_grpc_endpoint). Required.
  std::string endpoint;

  // A token shared with the caller (e.g. one for every source a target tries), instead of
  // token / token_file. Borrowed; must outlive the client.
  ferry::internal::TokenSource* token_source = nullptr;

  // Deadline of one call. Default 5 s, as ModelExpress's target.
  absl::Duration deadline = absl::Seconds(5);
  // Largest answer accepted, in bytes. Default 256 MiB (the server's default send limit).
  int max_receive_message_size = 256 * 1024 * 1024;
};

class WorkerClient {
 public:
  // Validates options (errors name the field), reads the token and TLS files, creates the
  // channel.
  static StatusOr<std::unique_ptr<WorkerClient>> Create(const WorkerClientOptions& options);
  ~WorkerClient();
  WorkerClient(const WorkerClient&) = delete;
  WorkerClient& operator=(const WorkerClient&) = delete;

  // Which tensors the source serves now (`held`: one flag per tensor of its GetTransferInfo,
  // all true once it is complete) and which it is filling (`landing`: served soon).
  // FailedPrecondition when the answer's count differs from `tensors`.
  struct HeldState {
    std::vector<bool> held;
    std::vector<bool> landing;
  };
  StatusOr<HeldState> GetHeldTensors(const std::string& mx_source_id, const std::string& worker_id,
                                     size_t tensors);
  // Whether the endpoint serves ferry's FerryWorkerService (one small GetHeldTensors call):
  // true for every ferry tensor source, also one whose tensors a NIXL agent serves too
  // (publish backend "ferry+nixl"); false when it answers UNIMPLEMENTED (a ModelExpress worker
  // in P2P metadata mode). Other failures are the RPC's, as GetTransferInfo's.
  StatusOr<bool> ServesFerry(const std::string& mx_source_id, const std::string& worker_id);
  // The source's transfer info. `mx_source_id` empty: not checked by the source; `worker_id`
  // empty: not sent and not checked. FailedPrecondition when the answer's worker_id differs
  // from `worker_id`, or the answer is inconsistent (an empty or repeated tensor name, sizes
  // that do not add up to total_bytes, an unknown checksum algorithm). Other codes are the
  // RPC's (UNAVAILABLE, DEADLINE_EXCEEDED, UNAUTHENTICATED, RESOURCE_EXHAUSTED,
  // FAILED_PRECONDITION for an id the source does not serve).
  StatusOr<ferry::v1::GetTransferInfoResponse> GetTransferInfo(const std::string& mx_source_id,
                                                               const std::string& worker_id);

  // The source's ModelExpress manifest; the same rules, without the checksum and total checks.
  // An answer without worker_id (older ModelExpress sources leave it unset) is accepted.
  StatusOr<model_express::p2p::GetTensorManifestResponse> GetTensorManifest(
      const std::string& mx_source_id, const std::string& worker_id);

  // An artifact source's sealed manifest, as ModelExpress's target fetches it: the header (file
  // table), then the chunk table page by page. DataLoss when the pages misbehave (a page that
  // starts elsewhere than asked, a next_page_token that does not move forward or is not a
  // number, more chunks than chunk_count, or more than `max_chunks`); the manifest itself is
  // not validated here (ValidateFetchedManifest). `artifact_id` empty: the only one served.
  struct FetchedManifest {
    artifacts::Manifest manifest;
    artifacts::SourceSummary header;  // what the source claims
    std::string mx_source_id;
    uint32_t worker_rank = 0;
  };
  StatusOr<FetchedManifest> GetArtifactManifest(const std::string& mx_source_id,
                                                const std::string& artifact_id,
                                                uint64_t max_chunks = 16u << 20);

  // The artifact's transfer info (blob, file offsets, source root, signature).
  // FailedPrecondition when the answer names another artifact_id than asked.
  StatusOr<ferry::v1::GetArtifactTransferInfoResponse> GetArtifactTransferInfo(
      const std::string& mx_source_id, const std::string& artifact_id);

  const std::string& endpoint() const { return endpoint_; }

 private:
  struct Stubs;
  WorkerClient(const WorkerClientOptions& options, std::string endpoint,
               std::shared_ptr<grpc::Channel> channel, bool tls,
               std::unique_ptr<ferry::internal::TokenSource> owned_tokens);

  Status RpcError(const char* rpc, int code, const std::string& message) const;
  // Sets the per-call deadline and the bearer token (when one is configured).
  void Prepare(grpc::ClientContext& context) const;
  // One GetHeldTensors call (ServesFerry and GetHeldTensors read its answer differently).
  grpc::Status CallGetHeldTensors(const std::string& mx_source_id, const std::string& worker_id,
                                  ferry::v1::GetHeldTensorsResponse* response);

  const WorkerClientOptions options_;
  const std::string endpoint_;
  std::shared_ptr<grpc::Channel> channel_;
  const bool tls_;
  const std::unique_ptr<ferry::internal::TokenSource> owned_tokens_;
  ferry::internal::TokenSource* const tokens_;  // nullptr: no header
  std::unique_ptr<Stubs> stubs_;
};

}  // namespace ferry::worker

#endif  // FERRY_WORKER_WORKER_CLIENT_H_
