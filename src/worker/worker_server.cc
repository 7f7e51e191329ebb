#include "worker/worker_server.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/credentials.h"
#include "common/logging.h"
#include "common/pem_file.h"
#include "worker/request_gate.h"
#include "worker/transfer_info_service.h"
#include "worker/worker_service.h"

namespace ferry::worker {
namespace {

// How long a new connection may take to complete its HTTP/2 (and TLS) handshake.
constexpr absl::Duration kHandshakeTimeout = absl::Seconds(5);

// Splits HOST:PORT or [V6]:PORT; the host comes back without brackets.
Status ParseListen(const std::string& address, std::string* host, int* port) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("WorkerServerOptions.listen='", address, "' ", why,
                     "; use HOST:PORT, e.g. 0.0.0.0:0 (any free port) or [::]:7001"));
  };
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) return bad("has no HOST:PORT form");
  std::string h = address.substr(0, colon);
  if (h.front() == '[') {
    if (h.back() != ']' || h.size() < 3) return bad("has an unterminated [IPv6] host");
    h = h.substr(1, h.size() - 2);
  } else if (absl::StrContains(h, ":")) {
    return bad("has an IPv6 host without brackets");
  }
  int p = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &p) || p < 0 || p > 65535) {
    return bad("has no valid port (0-65535)");
  }
  *host = std::move(h);
  *port = p;
  return absl::OkStatus();
}

bool IsWildcard(const std::string& host) {
  return host == "0.0.0.0" || host == "::" || host == "*" || host == "0:0:0:0:0:0:0:0";
}

StatusOr<std::string> HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') {
    return absl::FailedPreconditionError(absl::StrCat(
        "WorkerServerOptions.advertise_host is empty and the listen host is a wildcard, but "
        "gethostname() failed: ",
        strerror(errno), "; set advertise_host to the address targets dial"));
  }
  return std::string(name);
}

StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(const WorkerServerOptions& o) {
  if (o.tls_cert.empty() && o.tls_key.empty()) {
    if (!o.tls_client_ca.empty()) {
      return absl::InvalidArgumentError(
          "WorkerServerOptions.tls_client_ca needs tls_cert and tls_key (--tls-cert, --tls-key)");
    }
    return grpc::InsecureServerCredentials();
  }
  if (o.tls_cert.empty() || o.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "WorkerServerOptions.tls_cert and tls_key (--tls-cert, --tls-key) must be given together");
  }
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  FERRY_ASSIGN_OR_RETURN(pair.cert_chain,
                         ferry::internal::ReadPemFile(o.tls_cert, "WorkerServerOptions.tls_cert"));
  FERRY_ASSIGN_OR_RETURN(pair.private_key,
                         ferry::internal::ReadPemFile(o.tls_key, "WorkerServerOptions.tls_key"));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (!o.tls_client_ca.empty()) {
    FERRY_ASSIGN_OR_RETURN(
        ssl.pem_root_certs,
        ferry::internal::ReadPemFile(o.tls_client_ca, "WorkerServerOptions.tls_client_ca"));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

WorkerServer::WorkerServer() = default;

WorkerServer::~WorkerServer() { Stop(); }

StatusOr<std::unique_ptr<WorkerServer>> WorkerServer::Create(WorkerServerOptions options) {
  if (options.state == nullptr && options.artifacts == nullptr) {
    return absl::InvalidArgumentError(
        "WorkerServerOptions.state and .artifacts are both null; pass what to serve");
  }
  std::string host;
  int port = 0;
  FERRY_RETURN_IF_ERROR(ParseListen(options.listen, &host, &port));
  const int token_settings = static_cast<int>(!options.token.empty()) +
                             static_cast<int>(!options.token_file.empty()) +
                             static_cast<int>(options.token_source != nullptr);
  if (token_settings > 1) {
    return absl::InvalidArgumentError(
        "WorkerServerOptions.token, token_file and token_source: set at most one");
  }
  if (options.max_concurrent_requests < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WorkerServerOptions.max_concurrent_requests=", options.max_concurrent_requests,
        " must be at least 1 (default 64)"));
  }
  if (options.max_receive_message_size < 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WorkerServerOptions.max_receive_message_size=", options.max_receive_message_size,
        " must be at least 1024 (default 64 KiB)"));
  }
  if (options.max_send_message_size < 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("WorkerServerOptions.max_send_message_size=", options.max_send_message_size,
                     " must be at least 1024 (default 256 MiB)"));
  }
  if (options.drain_timeout < absl::ZeroDuration() ||
      options.drain_timeout == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WorkerServerOptions.drain_timeout=", absl::FormatDuration(options.drain_timeout),
        " must be finite and >= 0"));
  }
  if (options.lease_drain_timeout < absl::ZeroDuration() ||
      options.lease_drain_timeout == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("WorkerServerOptions.lease_drain_timeout=",
                     absl::FormatDuration(options.lease_drain_timeout),
                     " must be finite and >= 0 (default 10s)"));
  }

  auto server = std::unique_ptr<WorkerServer>(new WorkerServer());
  WorkerServer& s = *server;
  if (!options.advertise_host.empty()) {
    s.advertise_host_ = options.advertise_host;
  } else if (!IsWildcard(host) && !host.empty()) {
    s.advertise_host_ = host;
  } else {
    FERRY_ASSIGN_OR_RETURN(s.advertise_host_, HostName());
  }
  FERRY_ASSIGN_OR_RETURN(s.credentials_, MakeCredentials(options));
  ferry::internal::TokenSource* tokens = options.token_source;
  if (!options.token_file.empty()) {
    FERRY_ASSIGN_OR_RETURN(s.owned_tokens_,
                           ferry::internal::TokenSource::FromFile(options.token_file));
  } else if (!options.token.empty()) {
    FERRY_ASSIGN_OR_RETURN(s.owned_tokens_, ferry::internal::TokenSource::FromToken(options.token));
  }
  if (s.owned_tokens_ != nullptr) tokens = s.owned_tokens_.get();
  s.gate_ = std::make_unique<internal::RequestGate>(tokens, options.max_concurrent_requests,
                                                    options.on_request_for_test);
  if (options.state != nullptr && !options.state->manifest().metadata_endpoint.empty()) {
    FERRY_ASSIGN_OR_RETURN(s.tensor_leases_, TensorReadLeases::Create(options.tensor_read_leases));
  }
  s.manifest_service_ = std::make_unique<internal::WorkerServiceImpl>(
      options.state, options.artifacts, s.tensor_leases_.get(), s.gate_.get());
  s.transfer_service_ = std::make_unique<internal::TransferInfoService>(
      options.state, options.artifacts, s.gate_.get());
  s.options_ = std::move(options);
  return server;
}

Status WorkerServer::Start() {
  if (started_) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker endpoint ", options_.listen,
                     " was already started; a WorkerServer starts once, create a new one"));
  }
  started_ = true;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options_.listen, credentials_, &port_);
  // No SO_REUSEPORT: a second server on the same port must fail, not split the traffic.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // A connection that has not finished its HTTP/2 (and TLS) handshake within this is closed, so
  // idle connections cannot pile up towards the descriptor limit (gRPC's default is 120 s).
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(kHandshakeTimeout)));
  // Calls one connection may hold open, answered or not (gRPC's default is unbounded): each
  // costs only gRPC's per-call state, since answers refer to one prepared copy
  // (raw_service.h), but a connection must not hold an unbounded number of them.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, kMaxStreamsPerConnection);
  builder.SetMaxReceiveMessageSize(options_.max_receive_message_size);
  builder.SetMaxSendMessageSize(options_.max_send_message_size);
  builder.RegisterService(manifest_service_.get());
  builder.RegisterService(transfer_service_.get());
  grpc_ = builder.BuildAndStart();
  if (grpc_ == nullptr || port_ == 0) {
    grpc_.reset();
    port_ = 0;
    return absl::UnavailableError(
        absl::StrCat("worker endpoint: cannot bind ", options_.listen,
                     " (in use or not a local address); choose another address or port 0"));
  }
  if (options_.token.empty() && options_.token_file.empty() && options_.token_source == nullptr) {
    spdlog::warn(
        "worker endpoint {} serves without authentication: anyone who reaches the port can read "
        "the tensor manifest and transfer blob; pass the deployment token (--token-file or "
        "FERRY_TOKEN_FILE)",
        endpoint());
  }
  if (options_.state != nullptr) {
    spdlog::info("worker endpoint serving on {} (worker {}, {} tensors, {} bytes{})", endpoint(),
                 options_.state->manifest().worker_id, options_.state->manifest().tensors.size(),
                 options_.state->total_bytes(), options_.tls_cert.empty() ? "" : ", TLS");
  }
  if (options_.artifacts != nullptr) {
    spdlog::info("worker endpoint serving on {} (worker {}, artifact {}: {} files, {} bytes{})",
                 endpoint(), options_.artifacts->serving().worker_id,
                 options_.artifacts->artifact_id(), options_.artifacts->summary().file_count,
                 options_.artifacts->summary().total_size,
                 options_.tls_cert.empty() ? "" : ", TLS");
  }
  return absl::OkStatus();
}

void WorkerServer::Stop() {
  if (stopped_) return;
  stopped_ = true;
  if (tensor_leases_ != nullptr) {
    tensor_leases_->Close();
    if (grpc_ != nullptr) {
      const int left = tensor_leases_->AwaitReleased(absl::Now() + options_.lease_drain_timeout);
      if (left > 0) {
        spdlog::warn(
            "worker endpoint {}: stopping with {} tensor read lease(s) still held after {}; "
            "those targets' NIXL reads fail and they read another source",
            endpoint(), left, absl::FormatDuration(options_.lease_drain_timeout));
      }
    }
  }
  if (grpc_ == nullptr) return;
  // Wait for running handlers (bounded), then shut down at once: a Shutdown deadline would also
  // wait for idle client connections, which targets holding a channel never close.
  const absl::Time drain_until = absl::Now() + options_.drain_timeout;
  while (gate_->in_flight() > 0 && absl::Now() < drain_until) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  grpc_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
  grpc_->Wait();
}

std::string WorkerServer::endpoint() const {
  if (port_ == 0) return "";
  if (absl::StrContains(advertise_host_, ":"))
    return absl::StrCat("[", advertise_host_, "]:", port_);
  return absl::StrCat(advertise_host_, ":", port_);
}

int WorkerServer::in_flight() const { return gate_->in_flight(); }

int WorkerServer::outstanding_tensor_read_leases() const {
  return tensor_leases_ == nullptr ? 0 : tensor_leases_->outstanding();
}

}  // namespace ferry::worker
