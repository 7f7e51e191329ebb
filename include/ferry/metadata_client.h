// ferry::MetadataClient: a typed client for the ModelExpress P2P metadata API
// (model_express.p2p.P2pService and model_express.health.HealthService), as served by
// ferry-server or by ModelExpress's own server.
//
// The wire protocol never fails an RPC for a bad request: it answers success=false or
// found=false under gRPC status OK (contract section 5). This client turns every such answer
// into a Status whose code says what the caller should do, so that callers only check `ok()`.
#ifndef FERRY_METADATA_CLIENT_H_
#define FERRY_METADATA_CLIENT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "ferry/status.h"
#include "model_express/p2p.pb.h"

namespace grpc {
class Channel;
class ChannelCredentials;
}  // namespace grpc

namespace ferry {

namespace internal {
class TokenSource;
}  // namespace internal

using PublishMetadataRequest = ::model_express::p2p::PublishMetadataRequest;
using ListSourcesRequest = ::model_express::p2p::ListSourcesRequest;
using GetMetadataResponse = ::model_express::p2p::GetMetadataResponse;
using SourceInstanceRef = ::model_express::p2p::SourceInstanceRef;
using SourceStatus = ::model_express::p2p::SourceStatus;
using WorkerMetadata = ::model_express::p2p::WorkerMetadata;
using TensorDescriptor = ::model_express::p2p::TensorDescriptor;

// The address used when neither --server, FERRY_SERVER nor MX_SERVER_ADDRESS is given.
inline constexpr char kDefaultServerAddress[] = "localhost:8001";

// The server address to use: `flag` (a --server value) if present and non-empty, else
// FERRY_SERVER, else MX_SERVER_ADDRESS, else kDefaultServerAddress. The result is returned as
// given (an http:// prefix included); MetadataClient::Create normalizes and validates it.
std::string ResolveServerAddress(std::optional<std::string> flag);

// A client's credentials: the bearer token it sends and the TLS settings of its channel. The one
// struct for every connection a ferry process makes as a client, to ferry-server
// (MetadataClientOptions) and to a source's worker endpoint (worker::WorkerClientOptions); the
// ferry command's flags (--token-file, --tls-*, --worker-tls-*) and the Python package fill it.
// Validated by the client that uses it; errors name the field.
struct ClientCredentials {
  // --- Authentication: a bearer token sent as `authorization: Bearer <token>` on every call
  // (to ferry-server: health calls included; servers do not require it there). Set at most one
  // of the two; neither means no header. The token is never logged.

  // The token itself: printable ASCII without spaces. Prefer token_file: a literal token in
  // a command line or environment is easier to leak.
  std::string token;

  // A file holding the token (surrounding whitespace is ignored), as ModelExpress's client reads
  // MX_AUTH_TOKEN_PATH. Create() fails, naming the file, if it cannot be read or holds no valid
  // token. The file is re-read before a call when its modification time, size or inode changed
  // (a rotated Kubernetes projected token takes effect on the next call); a rewrite that cannot
  // be read or is empty keeps the previous token in force and logs a warning.
  std::string token_file;

  // --- Transport security. TLS is used when `tls` is true, when any tls_* file is set, or when
  // the address starts with "https://"; otherwise the channel is plaintext.
  bool tls = false;

  // PEM root certificates that the server's certificate must chain to. Empty with TLS on: the
  // system's roots (gRPC's default root store).
  std::string tls_ca_file;

  // PEM client certificate chain and its private key, for servers that require mutual TLS
  // (ferry-server --tls-client-ca). Set both or neither.
  std::string tls_cert_file;
  std::string tls_key_file;

  // The name the server's certificate must carry, instead of the host of the address (useful
  // when connecting by IP address or through a tunnel). Requires TLS.
  std::string tls_server_name;
};

struct MetadataClientOptions : ClientCredentials {
  // host:port of the server. An "http://" or "https://" prefix (as in ModelExpress's
  // MX_SERVER_ADDRESS) and a trailing '/' are removed. gRPC target URIs ("dns:///h:p",
  // "unix:/path", "ipv4:...") are passed through. Required.
  std::string server_address = kDefaultServerAddress;

  // Deadline of one attempt of one RPC. Default 30 s, as ModelExpress's client.
  absl::Duration call_timeout = absl::Seconds(30);

  // Longest time one TCP/HTTP2 connection attempt may take before the channel reports the
  // server unreachable. RPCs never wait for the channel to become ready (no wait_for_ready):
  // while the server cannot be reached they fail with UNAVAILABLE as soon as the connection
  // attempt fails, and within this bound when packets are silently dropped. Default 5 s.
  absl::Duration connect_timeout = absl::Seconds(5);

  // Attempts per RPC, the first included; >= 1. Only UNAVAILABLE and DEADLINE_EXCEEDED are
  // retried (every P2P RPC is idempotent: publish overwrites, status updates set a value).
  int max_attempts = 3;

  // Delay before the second attempt; each later delay doubles, up to retry_max_backoff
  // (200 ms, 400 ms, 800 ms, ...). Each delay is jittered by +-20% so that many ranks that lost
  // the same server do not retry in lockstep.
  absl::Duration retry_initial_backoff = absl::Milliseconds(200);
  absl::Duration retry_max_backoff = absl::Seconds(5);

  // Largest message sent or received, in bytes. Default 100 MiB, the ModelExpress limit.
  int max_message_size = 100 * 1024 * 1024;

  // Channel credentials built by the caller, for anything the fields above cannot express.
  // Must not be combined with tls / tls_* fields. nullptr: built from the fields above.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
};

// Fills the credential fields of `options` that are unset from the environment:
//   token_file     FERRY_TOKEN_FILE, else MX_AUTH_TOKEN_PATH   } only if neither token nor
//   token          FERRY_TOKEN                                 } token_file is set
//   tls_ca_file    FERRY_TLS_CA
//   tls_cert_file  FERRY_TLS_CLIENT_CERT
//   tls_key_file   FERRY_TLS_CLIENT_KEY
// TLS fields are left alone when `credentials` is set. No default token path is read:
// ModelExpress's /var/run/secrets/tokens/modelexpress is used only when MX_AUTH_TOKEN_PATH names
// it. InvalidArgument if the environment sets both a token file and FERRY_TOKEN. Nothing is read
// from the files here; MetadataClient::Create() does that.
Status FillCredentialsFromEnv(MetadataClientOptions* options);

// The outcome of a successful PublishMetadata.
struct PublishResult {
  std::string mx_source_id;  // computed by the server from the identity
  std::string worker_id;     // echoed by the server
  std::string message;       // the server's human-readable summary
};

// Answer of model_express.health.HealthService/GetHealth.
struct HealthInfo {
  std::string version;
  std::string status;  // "ok" while the server can serve
  uint64_t uptime_seconds = 0;
};

// One gRPC channel to a metadata server and typed calls over it.
//
// Every failure message names the RPC, the server address, the gRPC code name and the
// server's details, e.g. "ListSources to localhost:8001 failed: UNAVAILABLE: failed to connect
// to all addresses; check --server/FERRY_SERVER or start ferry-server". Codes:
//   UNAVAILABLE / DEADLINE_EXCEEDED: server unreachable or slow (after max_attempts tries), or
//                                    the server's store failed;
//   NOT_FOUND: the record does not exist (GetMetadata found=false; UpdateStatus on a rank the
//              server does not hold);
//   INVALID_ARGUMENT: the server rejected the request (success=false naming a field): a field
//                     is missing, malformed or too long, or the record is larger than the server
//                     keeps (ferry-server --max-record-bytes, --max-record-tensors);
//   RESOURCE_EXHAUSTED: the caller's principal already owns as many workers as the server allows
//                       (ferry-server --max-workers-per-principal), or a message was too large;
//   FAILED_PRECONDITION: any other success=false answer;
//   UNAUTHENTICATED: the server wants a token and got none, or did not accept it; the message
//                    says which and where the token came from;
//   PERMISSION_DENIED: the record belongs to another principal (only its publisher, or an
//                      admin principal, may change it);
//   anything else: the gRPC status the transport or the server returned.
// UNAUTHENTICATED and PERMISSION_DENIED are never retried. A success=false answer gets the code
// the server sent beside it (ferry-server sends one as trailing metadata, docs/protocol.md,
// "Status codes on the wire"); from a server that sends none, such as ModelExpress's, the code
// is inferred from the message as listed above.
//
// Thread-safe: all methods may be called concurrently; they share one channel, and gRPC stubs
// are thread-safe. Creating a client does not connect; the first RPC does.
class MetadataClient {
 public:
  // Validates `options` (errors name the field, and the ferry flag and variable that fill it),
  // reads the token file and the TLS files, and creates the channel.
  static StatusOr<std::unique_ptr<MetadataClient>> Create(const MetadataClientOptions& options);

  ~MetadataClient();
  MetadataClient(const MetadataClient&) = delete;
  MetadataClient& operator=(const MetadataClient&) = delete;

  // Stores one worker rank's record. The server sets updated_at and, for ferry-server, stores
  // status UNKNOWN as INITIALIZING.
  StatusOr<PublishResult> Publish(const PublishMetadataRequest& request);

  // One entry per (mx_source_id, worker_id) matching the request's filters, newest first.
  StatusOr<std::vector<SourceInstanceRef>> ListSources(const ListSourcesRequest& request);

  // The record of `worker_id` under `mx_source_id` (its lowest rank). NotFound if the server
  // holds no such record.
  StatusOr<GetMetadataResponse> GetMetadata(const std::string& mx_source_id,
                                            const std::string& worker_id);

  // Sets the status of an existing record and refreshes its updated_at. NotFound if the server
  // holds no record for (mx_source_id, worker_id, worker_rank): it never creates one.
  // `source_load` (ModelExpress 0.7.0): the source's own busyness in [0, 1], which the server
  // passes through to ListSources; nullopt sends no reading (the field is left unset).
  Status UpdateStatus(const std::string& mx_source_id, const std::string& worker_id,
                      uint32_t worker_rank, SourceStatus status,
                      std::optional<float> source_load = std::nullopt);

  // The server's version, status and uptime.
  StatusOr<HealthInfo> Health();

  // The normalized address this client talks to (no http:// prefix).
  const std::string& server_address() const { return address_; }

 private:
  struct Stubs;

  MetadataClient(const MetadataClientOptions& options, std::string address,
                 std::shared_ptr<grpc::Channel> channel, bool tls,
                 std::unique_ptr<internal::TokenSource> token);

  // Runs `attempt` up to max_attempts times with backoff; see the .cc file.
  template <typename Fn>
  Status CallWithRetry(const char* rpc, Fn attempt);
  void WaitBeforeRetry(absl::Duration delay);

  const MetadataClientOptions options_;
  const std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  const bool tls_;
  const std::unique_ptr<internal::TokenSource> token_;  // nullptr: no authorization header
  std::unique_ptr<Stubs> stubs_;
};

}  // namespace ferry

#endif  // FERRY_METADATA_CLIENT_H_
