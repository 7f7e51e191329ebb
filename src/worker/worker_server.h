// WorkerServer: the gRPC endpoint one source process (one rank of "ferry publish") serves to
// targets: model_express.p2p.WorkerService (GetTensorManifest for tensors, the artifact manifest
// and lease RPCs for an artifact; PrepareTensorRead / ReleaseTensorRead where a NIXL agent serves
// the same tensors; ModelExpress-compatible) and ferry.v1.FerryWorkerService
// (GetTransferInfo, GetArtifactTransferInfo), all on one port. Its host:port goes into the
// published record's worker_grpc_endpoint.
//
// Thread-compatible: call Start/Stop from one thread. The served WorkerState is thread-safe and
// may be updated (SetMxSourceId) while serving.
#ifndef FERRY_WORKER_WORKER_SERVER_H_
#define FERRY_WORKER_WORKER_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/time/time.h"
#include "ferry/status.h"
#include "worker/artifact_state.h"
#include "worker/tensor_read_leases.h"
#include "worker/worker_state.h"

namespace grpc {
class Server;
class ServerCredentials;
}  // namespace grpc

namespace ferry::internal {
class TokenSource;
}  // namespace ferry::internal

namespace ferry::worker {

namespace internal {
class RequestGate;
class WorkerServiceImpl;
class TransferInfoService;
}  // namespace internal

// Concurrent calls (HTTP/2 streams) one client connection may have open; a gRPC client queues
// more until one finishes, and gRPC closes the connection of a client that opens more anyway.
inline constexpr int kMaxStreamsPerConnection = 256;

struct WorkerServerOptions {
  // What is served: tensors, an artifact, or both (at least one). Borrowed; must outlive the
  // server. Artifact leases change while serving, hence not const.
  const WorkerState* state = nullptr;
  ArtifactState* artifacts = nullptr;

  // Where to listen: HOST:PORT or [V6]:PORT. Port 0 picks a free port (see port()).
  std::string listen = "0.0.0.0:0";

  // The host targets dial, for endpoint(). Empty: the listen host, unless it is a wildcard
  // (0.0.0.0, ::), then this machine's hostname.
  std::string advertise_host;

  // --- Authentication: the deployment's bearer token. Set at most one of the three. When one
  // is set, every RPC must carry `authorization: Bearer <token>` (compared in constant time);
  // when none is, the endpoint is open to anyone who can reach the port, and Start() warns.
  std::string token;       // the token itself
  std::string token_file;  // a file holding it, re-read when it changes (rotation)
  // A token source shared with the caller (e.g. the publisher's). Borrowed; must outlive the
  // server.
  ferry::internal::TokenSource* token_source = nullptr;

  // --- TLS, as ferry-server's --tls-cert / --tls-key / --tls-client-ca: PEM certificate chain
  // and key; with a client CA, clients must present a certificate it signed. All empty:
  // plaintext.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;

  // Requests served at once; more are answered RESOURCE_EXHAUSTED at once. Default 64.
  int max_concurrent_requests = 64;
  // Largest request accepted, in bytes (requests are two ids). Default 64 KiB; larger requests
  // fail with RESOURCE_EXHAUSTED.
  int max_receive_message_size = 64 * 1024;
  // Largest answer sent, in bytes. Default 256 MiB (about 2 million tensors).
  int max_send_message_size = 256 * 1024 * 1024;
  // How long Stop() lets running requests finish before cancelling them. Default 2 s.
  absl::Duration drain_timeout = absl::Seconds(2);

  // Read leases on the tensors (PrepareTensorRead), served only when state's manifest names a
  // NIXL agent's metadata_endpoint: default at most 256 outstanding, each for 270 s
  // (ModelExpress 0.7.0's lifetime). Stop() takes no new ones from its start.
  LeaseOptions tensor_read_leases = TensorReadLeaseOptions();
  // How long Stop() waits for targets holding such leases to release them (their NIXL reads
  // end before the caller deregisters the memory from NIXL). Default 10 s; 0: no wait.
  absl::Duration lease_drain_timeout = absl::Seconds(10);

  // Tests: runs inside every admitted request, before it is answered (e.g. to hold it).
  std::function<void(std::string_view method)> on_request_for_test;
};

class WorkerServer {
 public:
  // Validates options (errors name the field) and reads the token and TLS files. Does not bind.
  static StatusOr<std::unique_ptr<WorkerServer>> Create(WorkerServerOptions options);
  ~WorkerServer();  // Stop()s
  WorkerServer(const WorkerServer&) = delete;
  WorkerServer& operator=(const WorkerServer&) = delete;

  // Binds and serves. Unavailable if the address cannot be bound (in use, not local);
  // FailedPrecondition if already started or stopped (a server starts once).
  Status Start();

  // Takes no new tensor read leases and waits for the outstanding ones to be released (up to
  // lease_drain_timeout), lets running requests finish (up to drain_timeout), then closes the
  // port. Idempotent.
  void Stop();

  // The bound port; 0 before Start().
  int port() const { return port_; }
  // "host:port" for worker_grpc_endpoint (IPv6 hosts in brackets); "" before Start().
  std::string endpoint() const;
  // WorkerServerOptions.listen as given (the bound port is port()).
  const std::string& listen_address() const { return options_.listen; }
  // Requests being handled now.
  int in_flight() const;
  // Tensor read leases outstanding now; 0 when none are served.
  int outstanding_tensor_read_leases() const;

 private:
  WorkerServer();

  WorkerServerOptions options_;
  std::string advertise_host_;
  std::shared_ptr<grpc::ServerCredentials> credentials_;
  std::unique_ptr<ferry::internal::TokenSource> owned_tokens_;
  std::unique_ptr<internal::RequestGate> gate_;
  std::unique_ptr<TensorReadLeases> tensor_leases_;  // null: no NIXL agent, no leases
  std::unique_ptr<internal::WorkerServiceImpl> manifest_service_;
  std::unique_ptr<internal::TransferInfoService> transfer_service_;
  std::unique_ptr<grpc::Server> grpc_;
  int port_ = 0;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace ferry::worker

#endif  // FERRY_WORKER_WORKER_SERVER_H_
