#include "ferry/metadata_client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iterator>
#include <limits>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "client/credentials.h"
#include "client/metadata_client_internal.h"
#include "common/env.h"
#include "common/wire_status.h"
#include "model_express/health.grpc.pb.h"
#include "model_express/p2p.grpc.pb.h"
#include "spdlog/spdlog.h"

namespace ferry {

namespace p2p = ::model_express::p2p;
namespace health = ::model_express::health;

// ---------------------------------------------------------------------------------------------
// Pure helpers.

namespace internal {

std::string ResolveServerAddressFrom(const std::optional<std::string>& flag,
                                     const std::optional<std::string>& env) {
  if (flag.has_value() && !flag->empty()) return *flag;
  if (env.has_value() && !env->empty()) return *env;
  return kDefaultServerAddress;
}

Status ValidateClientOptions(const MetadataClientOptions& options) {
  FERRY_ASSIGN_OR_RETURN(NormalizedAddress address, NormalizeServerAddress(options.server_address));
  auto positive = [](absl::Duration d, absl::string_view field) -> Status {
    if (d <= absl::ZeroDuration() || d == absl::InfiniteDuration()) {
      return absl::InvalidArgumentError(absl::StrCat(field, "=", absl::FormatDuration(d),
                                                     " must be a positive, finite duration"));
    }
    return absl::OkStatus();
  };
  FERRY_RETURN_IF_ERROR(positive(options.call_timeout, "call_timeout"));
  FERRY_RETURN_IF_ERROR(positive(options.connect_timeout, "connect_timeout"));
  FERRY_RETURN_IF_ERROR(positive(options.retry_initial_backoff, "retry_initial_backoff"));
  FERRY_RETURN_IF_ERROR(positive(options.retry_max_backoff, "retry_max_backoff"));
  if (options.retry_max_backoff < options.retry_initial_backoff) {
    return absl::InvalidArgumentError(
        absl::StrCat("retry_max_backoff=", absl::FormatDuration(options.retry_max_backoff),
                     " must not be below retry_initial_backoff=",
                     absl::FormatDuration(options.retry_initial_backoff)));
  }
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_attempts=", options.max_attempts, " must be at least 1"));
  }
  if (options.max_message_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_message_size=", options.max_message_size,
                                                   " must be a positive number of bytes"));
  }
  return ValidateCredentialOptions(options, address.https_prefix);
}

absl::Duration RetryBackoff(int retry, absl::Duration initial, absl::Duration max) {
  absl::Duration d = initial;
  for (int i = 1; i < retry && d < max; ++i) d *= 2;
  return std::min(d, max);
}

bool IsRetryableCode(absl::StatusCode code) {
  return code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded;
}

Status RpcError(absl::string_view rpc, absl::string_view address, absl::StatusCode code,
                absl::string_view details, int attempts, const CallSecurity& security) {
  std::string msg = absl::StrCat(rpc, " to ", address, " failed: ", absl::StatusCodeToString(code));
  if (!details.empty()) absl::StrAppend(&msg, ": ", details);
  if (attempts > 1) absl::StrAppend(&msg, " (", attempts, " attempts)");
  switch (code) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      absl::StrAppend(&msg, "; check --server/FERRY_SERVER or start ferry-server");
      // A refused connection says nothing about TLS; any other failure to connect may be a
      // TLS mismatch (a plaintext client is cut off by a TLS server with no further reason).
      if (code == absl::StatusCode::kUnavailable &&
          !absl::StrContains(details, "Connection refused")) {
        absl::StrAppend(&msg, security.tls
                                  ? "; with TLS, check --tls-ca/FERRY_TLS_CA, --tls-server-name, "
                                    "and --tls-cert/--tls-key if the server requires client "
                                    "certificates"
                                  : "; if the server uses TLS, pass --tls-ca/FERRY_TLS_CA (or "
                                    "--tls for a certificate the system trusts)");
      }
      break;
    case absl::StatusCode::kUnauthenticated:
      if (security.token_origin.empty()) {
        absl::StrAppend(&msg,
                        "; the server requires a bearer token and this client sends none: pass "
                        "--token-file FILE or set FERRY_TOKEN_FILE (ModelExpress: "
                        "MX_AUTH_TOKEN_PATH)");
      } else {
        absl::StrAppend(&msg, "; the server did not accept ", security.token_origin,
                        ": check --token-file/FERRY_TOKEN_FILE names a token listed in the "
                        "server's --auth-tokens file");
      }
      break;
    case absl::StatusCode::kPermissionDenied:
      absl::StrAppend(&msg,
                      "; only the principal that published a record, or an admin principal, "
                      "may change it: use that principal's token");
      break;
    default:
      break;
  }
  return Status(code, msg);
}

std::optional<absl::StatusCode> WireStatusCode(
    const std::multimap<grpc::string_ref, grpc::string_ref>& trailers) {
  auto [first, last] = trailers.equal_range(kStatusCodeMetadataKey);
  if (first == last || std::next(first) != last) return std::nullopt;
  return ParseStatusCodeMetadata(absl::string_view(first->second.data(), first->second.size()));
}

Status ServerRejection(absl::string_view rpc, absl::string_view address,
                       absl::string_view server_message,
                       std::optional<absl::StatusCode> wire_code) {
  const std::string lower = absl::AsciiStrToLower(server_message);
  absl::StatusCode code = absl::StatusCode::kFailedPrecondition;
  if (wire_code.has_value()) {
    code = *wire_code;
  } else if (absl::StrContains(lower, "not found")) {
    code = absl::StatusCode::kNotFound;
  } else if (absl::StrContains(lower, "is required") || absl::StrContains(lower, "invalid")) {
    code = absl::StatusCode::kInvalidArgument;
  } else if (absl::StartsWith(lower, "failed to ")) {
    code = absl::StatusCode::kUnavailable;  // the server's store failed
  }
  absl::string_view details = server_message;
  if (details.empty()) details = "server answered success=false with no message";
  return Status(code, absl::StrCat(rpc, " to ", address,
                                   " failed: ", absl::StatusCodeToString(code), ": ", details));
}

}  // namespace internal

std::string ResolveServerAddress(std::optional<std::string> flag) {
  return internal::ResolveServerAddressFrom(flag, internal::GetEnv("FERRY_SERVER"));
}

// ---------------------------------------------------------------------------------------------
// MetadataClient.

struct MetadataClient::Stubs {
  std::unique_ptr<p2p::P2pService::Stub> p2p;
  std::unique_ptr<health::HealthService::Stub> health;
};

namespace {

// First delay of gRPC's own reconnect backoff after a failed connection attempt, and its cap.
// gRPC's defaults (1 s growing to 120 s) would keep a client that lost its server (a restart)
// failing fast for minutes after the server is back; a metadata client talks to one server,
// so reconnecting at most every few seconds costs nothing.
constexpr int kReconnectInitialBackoffMs = 100;
constexpr int kReconnectMaxBackoffMs = 5000;

int ClampToIntMillis(absl::Duration d) {
  return static_cast<int>(
      std::min<int64_t>(absl::ToInt64Milliseconds(d), std::numeric_limits<int>::max()));
}

}  // namespace

StatusOr<std::unique_ptr<MetadataClient>> MetadataClient::Create(
    const MetadataClientOptions& options) {
  FERRY_RETURN_IF_ERROR(internal::ValidateClientOptions(options));
  FERRY_ASSIGN_OR_RETURN(internal::NormalizedAddress address,
                         internal::NormalizeServerAddress(options.server_address));
  std::unique_ptr<internal::TokenSource> token;
  if (!options.token_file.empty()) {
    FERRY_ASSIGN_OR_RETURN(token, internal::TokenSource::FromFile(options.token_file));
  } else if (!options.token.empty()) {
    FERRY_ASSIGN_OR_RETURN(token, internal::TokenSource::FromToken(options.token));
  }
  FERRY_ASSIGN_OR_RETURN(internal::ChannelSecurity security,
                         internal::MakeChannelSecurity(options, address.https_prefix));

  grpc::ChannelArguments args;
  if (!security.server_name.empty()) {
    args.SetSslTargetNameOverride(security.server_name);
  }
  args.SetMaxReceiveMessageSize(options.max_message_size);
  args.SetMaxSendMessageSize(options.max_message_size);
  // A connection attempt that neither succeeds nor fails (dropped packets) is abandoned after
  // connect_timeout; pending RPCs (which do not wait for ready) then fail with UNAVAILABLE.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
              std::max(100, ClampToIntMillis(options.connect_timeout)));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, kReconnectInitialBackoffMs);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, kReconnectMaxBackoffMs);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(address.target, security.credentials, args);
  if (channel == nullptr) {
    return absl::InternalError(absl::StrCat("could not create a gRPC channel to ", address.target));
  }
  return std::unique_ptr<MetadataClient>(new MetadataClient(
      options, address.target, std::move(channel), security.tls, std::move(token)));
}

MetadataClient::MetadataClient(const MetadataClientOptions& options, std::string address,
                               std::shared_ptr<grpc::Channel> channel, bool tls,
                               std::unique_ptr<internal::TokenSource> token)
    : options_(options),
      address_(std::move(address)),
      channel_(std::move(channel)),
      tls_(tls),
      token_(std::move(token)),
      stubs_(std::make_unique<Stubs>()) {
  stubs_->p2p = p2p::P2pService::NewStub(channel_);
  stubs_->health = health::HealthService::NewStub(channel_);
}

MetadataClient::~MetadataClient() = default;

// While the channel is not connected, the wait watches the channel instead of sleeping, and
// ends early once it is READY. The watch is what makes reconnection prompt: after a failed
// connection attempt gRPC's pick_first policy stays in TRANSIENT_FAILURE (failing RPCs that do
// not wait for ready at once) while it reconnects in the background, and with no RPC polling
// the channel the result of that background attempt is only noticed by gRPC's backup poller,
// every 5 s. A connected channel (the attempt ran out of time) gets the plain backoff.
void MetadataClient::WaitBeforeRetry(absl::Duration delay) {
  if (channel_->GetState(/*try_to_connect=*/true) == GRPC_CHANNEL_READY) {
    absl::SleepFor(delay);
    return;
  }
  channel_->WaitForConnected(absl::ToChronoTime(absl::Now() + delay));
}

// Each attempt gets a fresh context whose deadline is call_timeout from its start. RPCs do not
// set wait_for_ready, so an unreachable server fails an attempt instead of queueing it.
//
// The bearer token is added to each context rather than through grpc::CallCredentials: gRPC
// sends call credentials only over secure channels, and servers accept tokens over plaintext
// too (ModelExpress's client sends them either way). Each attempt asks the token source
// again, so a rotated token file takes effect on the next attempt.
template <typename Fn>
Status MetadataClient::CallWithRetry(const char* rpc, Fn attempt) {
  grpc::Status status;
  int attempts = 0;
  absl::BitGen gen;
  while (true) {
    ++attempts;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         absl::ToChronoMilliseconds(options_.call_timeout));
    if (token_ != nullptr) context.AddMetadata("authorization", "Bearer " + token_->Get());
    status = attempt(&context);
    if (status.ok()) return absl::OkStatus();
    const auto code = static_cast<absl::StatusCode>(status.error_code());
    if (!internal::IsRetryableCode(code) || attempts >= options_.max_attempts) {
      internal::CallSecurity security;
      security.tls = tls_;
      if (token_ != nullptr) security.token_origin = token_->Origin();
      return internal::RpcError(rpc, address_, code, status.error_message(), attempts, security);
    }
    const absl::Duration delay = internal::RetryBackoff(attempts, options_.retry_initial_backoff,
                                                        options_.retry_max_backoff) *
                                 absl::Uniform(gen, 0.8, 1.2);
    spdlog::debug("{} to {}: {} ({}); attempt {} of {} in {}", rpc, address_,
                  absl::StatusCodeToString(code), status.error_message(), attempts + 1,
                  options_.max_attempts, absl::FormatDuration(delay));
    WaitBeforeRetry(delay);
  }
}

StatusOr<PublishResult> MetadataClient::Publish(const PublishMetadataRequest& request) {
  p2p::PublishMetadataResponse response;
  std::optional<absl::StatusCode> wire_code;
  FERRY_RETURN_IF_ERROR(CallWithRetry("PublishMetadata", [&](grpc::ClientContext* context) {
    response.Clear();
    grpc::Status status = stubs_->p2p->PublishMetadata(context, request, &response);
    wire_code = internal::WireStatusCode(context->GetServerTrailingMetadata());
    return status;
  }));
  if (!response.success()) {
    return internal::ServerRejection("PublishMetadata", address_, response.message(), wire_code);
  }
  if (response.mx_source_id().empty()) {
    return absl::InternalError(absl::StrCat("PublishMetadata to ", address_,
                                            " failed: INTERNAL: the server answered success=true "
                                            "without an mx_source_id"));
  }
  return PublishResult{response.mx_source_id(), response.worker_id(), response.message()};
}

StatusOr<std::vector<SourceInstanceRef>> MetadataClient::ListSources(
    const ListSourcesRequest& request) {
  p2p::ListSourcesResponse response;
  FERRY_RETURN_IF_ERROR(CallWithRetry("ListSources", [&](grpc::ClientContext* context) {
    response.Clear();
    return stubs_->p2p->ListSources(context, request, &response);
  }));
  return std::vector<SourceInstanceRef>(response.instances().begin(), response.instances().end());
}

StatusOr<GetMetadataResponse> MetadataClient::GetMetadata(const std::string& mx_source_id,
                                                          const std::string& worker_id) {
  if (mx_source_id.empty() || worker_id.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("GetMetadata to ", address_, " not sent: INVALID_ARGUMENT: ",
                     mx_source_id.empty() ? "mx_source_id" : "worker_id", " is required"));
  }
  p2p::GetMetadataRequest request;
  request.set_mx_source_id(mx_source_id);
  request.set_worker_id(worker_id);
  GetMetadataResponse response;
  FERRY_RETURN_IF_ERROR(CallWithRetry("GetMetadata", [&](grpc::ClientContext* context) {
    response.Clear();
    return stubs_->p2p->GetMetadata(context, request, &response);
  }));
  if (!response.found()) {
    return absl::NotFoundError(absl::StrCat(
        "GetMetadata to ", address_, " failed: NOT_FOUND: no record for source '", mx_source_id,
        "' worker '", worker_id, "'; list sources to see what the server holds"));
  }
  return response;
}

Status MetadataClient::UpdateStatus(const std::string& mx_source_id, const std::string& worker_id,
                                    uint32_t worker_rank, SourceStatus status,
                                    std::optional<float> source_load) {
  p2p::UpdateStatusRequest request;
  request.set_mx_source_id(mx_source_id);
  request.set_worker_id(worker_id);
  request.set_worker_rank(worker_rank);
  request.set_status(status);
  if (source_load.has_value()) request.set_source_load(*source_load);
  p2p::UpdateStatusResponse response;
  std::optional<absl::StatusCode> wire_code;
  FERRY_RETURN_IF_ERROR(CallWithRetry("UpdateStatus", [&](grpc::ClientContext* context) {
    response.Clear();
    grpc::Status status = stubs_->p2p->UpdateStatus(context, request, &response);
    wire_code = internal::WireStatusCode(context->GetServerTrailingMetadata());
    return status;
  }));
  if (!response.success()) {
    return internal::ServerRejection("UpdateStatus", address_, response.message(), wire_code);
  }
  return absl::OkStatus();
}

StatusOr<HealthInfo> MetadataClient::Health() {
  health::HealthRequest request;
  health::HealthResponse response;
  FERRY_RETURN_IF_ERROR(CallWithRetry("GetHealth", [&](grpc::ClientContext* context) {
    response.Clear();
    return stubs_->health->GetHealth(context, request, &response);
  }));
  return HealthInfo{response.version(), response.status(), response.uptime()};
}

}  // namespace ferry
