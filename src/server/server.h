// Server: ferry-server assembled from its parts: store, P2P and health services, reaper, admin
// HTTP port. Create() validates options and binds both ports, so every configuration error
// surfaces there, naming the flag. Stop() drains in-flight RPCs, then joins every thread.
// Thread-compatible: call Start/Stop from one thread.
#ifndef FERRY_SERVER_SERVER_H_
#define FERRY_SERVER_SERVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/listener_probe.h"
#include "ferry/status.h"
#include "server/p2p_service.h"
#include "store/metadata_store.h"

namespace grpc {
class Server;
}

namespace ferry::server {

class AdminHttp;
class TokenAuthenticator;
class HealthService;
class MeteredStore;
class Metrics;
class P2pService;
class Reaper;

struct ServerOptions {
  std::string listen = "0.0.0.0:8001";          // gRPC; port 0 picks a free port
  std::string admin_listen = "127.0.0.1:9401";  // HTTP /healthz and /metrics; "" turns it off
  std::string store = "memory";                 // see store::RegisteredStores()
  absl::Duration reaper_scan_interval = absl::Seconds(30);
  absl::Duration heartbeat_timeout = absl::Seconds(90);
  absl::Duration gc_timeout = absl::Seconds(3600);
  size_t max_message_size = 100u << 20;  // both directions
  // Bounds on what the store keeps (P2pServiceOptions has the defaults and the meaning).
  size_t max_record_bytes = kDefaultMaxRecordBytes;
  size_t max_record_tensors = kDefaultMaxRecordTensors;
  uint64_t max_workers_per_principal = kDefaultMaxWorkersPerPrincipal;
  absl::Duration drain_timeout = absl::Seconds(5);
  // How often the store is pinged to keep grpc.health.v1 truthful (NOT_SERVING while the
  // store is unreachable, SERVING again when it answers).
  absl::Duration health_check_interval = absl::Seconds(1);
  // How often the gRPC listener's accept backlog is probed (internal::ListenerWatch); after two
  // failed probes /healthz answers 503 and grpc.health.v1 NOT_SERVING. Zero disables it.
  absl::Duration listener_probe_interval = absl::Seconds(10);
  // Bearer-token authentication of P2pService calls; "" turns it off (health stays open).
  std::string auth_tokens_file;
  std::vector<std::string> admin_principals;  // may change records of other principals
  // TLS for the gRPC port: PEM certificate chain and key; with a client CA, clients must
  // present a certificate it signed (mutual TLS). All empty: plain text.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  std::function<int64_t()> now_ms;  // unset: the system clock
  // Tests: use this store (borrowed; must outlive the server) instead of opening `store`.
  store::MetadataStore* store_override = nullptr;
};

// Splits "host:port" or "[v6]:port". `flag` names the setting in errors.
Status ParseHostPort(const std::string& address, const std::string& flag, std::string* host,
                     int* port);

class Server {
 public:
  static StatusOr<std::unique_ptr<Server>> Create(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Starts the reaper, the store health monitor and the admin port; gRPC already serves after
  // Create().
  void Start();
  // Marks health NOT_SERVING, drains RPCs for up to drain_timeout, stops threads. Idempotent.
  void Stop();

  int grpc_port() const { return grpc_port_; }
  int admin_port() const;  // 0 when the admin port is off
  // OK while the gRPC listener accepts (or before Start); else what /healthz reports.
  Status ListenerHealth() const;
  std::string store_description() const;

 private:
  Server();
  void MonitorStore();  // health thread body

  ServerOptions options_;
  std::unique_ptr<store::MetadataStore> owned_store_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<MeteredStore> store_;
  std::unique_ptr<TokenAuthenticator> auth_;
  std::unique_ptr<P2pService> p2p_;
  std::unique_ptr<HealthService> health_;
  std::unique_ptr<Reaper> reaper_;
  std::unique_ptr<AdminHttp> admin_;
  std::unique_ptr<grpc::Server> grpc_;
  int grpc_port_ = 0;
  bool stopped_ = false;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread health_thread_;
  std::unique_ptr<ferry::internal::ListenerWatch> watch_;  // from Start(); null when disabled
};

}  // namespace ferry::server

#endif  // FERRY_SERVER_SERVER_H_
