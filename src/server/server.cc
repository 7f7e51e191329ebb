#include "server/server.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/listener_probe.h"
#include "common/logging.h"
#include "common/pem_file.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/admin_http.h"
#include "server/auth.h"
#include "server/health_service.h"
#include "server/metered_store.h"
#include "server/metrics.h"
#include "server/p2p_service.h"
#include "server/reaper.h"
#include "store/store_registry.h"

#ifndef FERRY_VERSION
#define FERRY_VERSION "0.0.0"
#endif

namespace ferry::server {

Status ParseHostPort(const std::string& address, const std::string& flag, std::string* host,
                     int* port) {
  const size_t colon = address.rfind(':');
  auto bad = [&](const char* why) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, "='", address, "' ", why, "; use HOST:PORT, e.g. 0.0.0.0:8001 or [::1]:0"));
  };
  if (colon == std::string::npos || colon == 0) return bad("has no host:port form");
  std::string h = address.substr(0, colon);
  if (h.front() == '[') {
    if (h.back() != ']' || h.size() < 3) return bad("has an unterminated [IPv6] host");
    h = h.substr(1, h.size() - 2);
  }
  int p = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &p) || p < 0 || p > 65535) {
    return bad("has no valid port (0-65535)");
  }
  *host = h;
  *port = p;
  return absl::OkStatus();
}

namespace {

// Plain text, TLS, or mutual TLS, from the options.
StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(const ServerOptions& o) {
  if (o.tls_cert.empty() && o.tls_key.empty()) {
    if (!o.tls_client_ca.empty()) {
      return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
    }
    return grpc::InsecureServerCredentials();
  }
  if (o.tls_cert.empty() || o.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key must be given together");
  }
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  FERRY_ASSIGN_OR_RETURN(pair.cert_chain, ::ferry::internal::ReadPemFile(o.tls_cert, "--tls-cert"));
  FERRY_ASSIGN_OR_RETURN(pair.private_key, ::ferry::internal::ReadPemFile(o.tls_key, "--tls-key"));
  ssl.pem_key_cert_pairs.push_back(pair);
  if (!o.tls_client_ca.empty()) {
    FERRY_ASSIGN_OR_RETURN(ssl.pem_root_certs,
                           ::ferry::internal::ReadPemFile(o.tls_client_ca, "--tls-client-ca"));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

Server::Server() = default;

Server::~Server() { Stop(); }

StatusOr<std::unique_ptr<Server>> Server::Create(ServerOptions options) {
  std::string grpc_host, admin_host;
  int grpc_port = 0, admin_port = 0;
  FERRY_RETURN_IF_ERROR(ParseHostPort(options.listen, "--listen", &grpc_host, &grpc_port));
  if (!options.admin_listen.empty()) {
    FERRY_RETURN_IF_ERROR(
        ParseHostPort(options.admin_listen, "--admin-listen", &admin_host, &admin_port));
  }
  if (options.max_message_size < 1024 || options.max_message_size > (1u << 31) - 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-message-size=", options.max_message_size,
                     " is out of range; use 1KiB to 2047MiB (default 100MiB)"));
  }
  const std::pair<uint64_t, const char*> limits[] = {
      {options.max_record_bytes, "--max-record-bytes"},
      {options.max_record_tensors, "--max-record-tensors"},
      {options.max_workers_per_principal, "--max-workers-per-principal"},
  };
  for (const auto& [value, flag] : limits) {
    if (value == 0) {
      return absl::InvalidArgumentError(absl::StrCat(flag, "=0 must be at least 1"));
    }
  }
  const std::pair<absl::Duration, const char*> durations[] = {
      {options.reaper_scan_interval, "--reaper-scan-interval"},
      {options.heartbeat_timeout, "--heartbeat-timeout"},
      {options.gc_timeout, "--gc-timeout"},
      {options.drain_timeout, "drain_timeout"},
      {options.health_check_interval, "health_check_interval"},
  };
  for (const auto& [d, flag] : durations) {
    if (d <= absl::ZeroDuration() || d == absl::InfiniteDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, "=", absl::FormatDuration(d), " must be a positive, finite duration"));
    }
  }
  if (!options.now_ms) options.now_ms = internal::NowMillis;

  FERRY_ASSIGN_OR_RETURN(auto credentials, MakeCredentials(options));

  auto server = std::unique_ptr<Server>(new Server());
  Server& s = *server;
  s.options_ = options;
  store::MetadataStore* raw = options.store_override;
  if (raw == nullptr) {
    FERRY_ASSIGN_OR_RETURN(s.owned_store_, store::OpenStore(options.store, "--store"));
    raw = s.owned_store_.get();
  }
  s.metrics_ = std::make_unique<Metrics>(FERRY_VERSION, raw->Describe());
  s.store_ = std::make_unique<MeteredStore>(raw, s.metrics_.get());
  if (!options.auth_tokens_file.empty()) {
    FERRY_ASSIGN_OR_RETURN(
        s.auth_,
        TokenAuthenticator::Create(AuthOptions{options.auth_tokens_file, options.admin_principals},
                                   s.metrics_.get()));
  } else if (!options.admin_principals.empty()) {
    return absl::InvalidArgumentError("--admin-principals needs --auth-tokens");
  }
  s.p2p_ = std::make_unique<P2pService>(
      s.store_.get(), s.metrics_.get(),
      P2pServiceOptions{options.heartbeat_timeout, options.now_ms, s.auth_.get(),
                        options.max_record_bytes, options.max_record_tensors,
                        options.max_workers_per_principal});
  s.health_ =
      std::make_unique<HealthService>(s.store_.get(), s.metrics_.get(), FERRY_VERSION, absl::Now());
  FERRY_ASSIGN_OR_RETURN(
      s.reaper_,
      Reaper::Create(s.store_.get(), s.metrics_.get(),
                     ReaperOptions{options.reaper_scan_interval, options.heartbeat_timeout,
                                   options.gc_timeout, options.now_ms}));
  if (!options.admin_listen.empty()) {
    FERRY_ASSIGN_OR_RETURN(
        s.admin_, AdminHttp::Create(admin_host, admin_port, s.store_.get(), s.metrics_.get(),
                                    [srv = &s] { return srv->ListenerHealth(); }));
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, &s.grpc_port_);
  // No SO_REUSEPORT: a second server on the same port must fail, not split the traffic.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Connections that have not finished their HTTP/2 (and TLS) handshake in 5 s are closed, so
  // idle connections cannot pile up towards the descriptor limit (gRPC's default is 120 s).
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, 5000);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_size));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_size));
  builder.RegisterService(s.p2p_.get());
  builder.RegisterService(s.health_.get());
  s.grpc_ = builder.BuildAndStart();
  if (s.grpc_ == nullptr || s.grpc_port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("--listen: cannot bind ", options.listen,
                     " (in use or not a local address); choose another address or port"));
  }
  auto* health = s.grpc_->GetHealthCheckService();
  health->SetServingStatus(true);
  health->SetServingStatus("model_express.p2p.P2pService", true);
  health->SetServingStatus("model_express.health.HealthService", true);
  return server;
}

void Server::MonitorStore() {
  bool serving = true;
  while (true) {
    Status s = store_->Ping();
    if (s.ok() != serving) {
      serving = s.ok();
      if (serving) {
        spdlog::info("store {} answers again; health SERVING", store_->Describe());
      } else {
        spdlog::error("store {} unavailable: {}; health NOT_SERVING", store_->Describe(),
                      s.message());
      }
      auto* health = grpc_->GetHealthCheckService();
      health->SetServingStatus(serving);
    }
    absl::MutexLock lock(&mu_);
    auto stopping = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping), options_.health_check_interval)) return;
  }
}

Status Server::ListenerHealth() const {
  return watch_ != nullptr ? watch_->health() : absl::OkStatus();
}

void Server::Start() {
  if (!health_thread_.joinable()) health_thread_ = std::thread([this] { MonitorStore(); });
  if (watch_ == nullptr && options_.listener_probe_interval > absl::ZeroDuration()) {
    // gRPC 1.51 never accepts on a listener again after accept4 failed with EMFILE; /healthz and
    // grpc.health.v1 must then say so, so that a probe restarts this replica.
    ferry::internal::ListenerWatch::Options watch;
    watch.host = ferry::internal::ProbeHost(options_.listen);
    watch.port = static_cast<uint16_t>(grpc_port_);
    watch.what = absl::StrCat("ferry-server's gRPC listener (port ", grpc_port_, ")");
    watch.interval = options_.listener_probe_interval;
    grpc::Server* grpc = grpc_.get();
    watch.on_unhealthy = [grpc](const Status&) {
      grpc->GetHealthCheckService()->SetServingStatus(false);
    };
    watch_ = ferry::internal::ListenerWatch::Start(std::move(watch));
  }
  reaper_->Start();
  if (admin_ != nullptr) admin_->Start();
  spdlog::info("ferry-server {} serving gRPC on port {} (store {}), admin HTTP on port {}",
               FERRY_VERSION, grpc_port_, store_->Describe(), admin_port());
}

void Server::Stop() {
  if (stopped_ || grpc_ == nullptr) return;
  stopped_ = true;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (health_thread_.joinable()) health_thread_.join();
  if (watch_ != nullptr) watch_->Stop();
  grpc_->GetHealthCheckService()->SetServingStatus(false);
  // Drain: wait for running handlers to finish (bounded), then shut down at once. Handing the
  // drain deadline to grpc::Server::Shutdown instead would also wait that long for idle client
  // connections to close, which clients that hold a channel open (every publisher) never do.
  const absl::Time drain_until = absl::Now() + options_.drain_timeout;
  while (metrics_->in_flight() > 0 && absl::Now() < drain_until) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  grpc_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
  grpc_->Wait();
  reaper_->Stop();
  if (admin_ != nullptr) admin_->Stop();
}

int Server::admin_port() const { return admin_ == nullptr ? 0 : admin_->port(); }

std::string Server::store_description() const { return store_->Describe(); }

}  // namespace ferry::server
