// Pure pieces of MetadataClient, exposed for unit tests. Not part of the installed API.
#ifndef FERRY_CLIENT_METADATA_CLIENT_INTERNAL_H_
#define FERRY_CLIENT_METADATA_CLIENT_INTERNAL_H_

#include <grpcpp/support/string_ref.h>

#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/credentials.h"
#include "ferry/metadata_client.h"
#include "ferry/status.h"

namespace ferry::internal {

// ResolveServerAddress with the environment passed in: `flag`, else `env` (the value of
// FERRY_SERVER / MX_SERVER_ADDRESS), else kDefaultServerAddress. Empty strings count as absent.
std::string ResolveServerAddressFrom(const std::optional<std::string>& flag,
                                     const std::optional<std::string>& env);

// Checks every field of `options` without reading any file; the error names the field and the
// bad value.
Status ValidateClientOptions(const MetadataClientOptions& options);

// Delay before retry number `retry` (1 = before the second attempt): initial * 2^(retry-1),
// capped at `max`. No jitter; the caller adds it.
absl::Duration RetryBackoff(int retry, absl::Duration initial, absl::Duration max);

// Codes after which the same RPC is tried again.
bool IsRetryableCode(absl::StatusCode code);

// How a client was set up, for the advice in RpcError.
struct CallSecurity {
  bool tls = false;
  std::string token_origin;  // TokenSource::Origin(); empty when no token is sent
};

// A failed RPC: "<rpc> to <address> failed: <CODE>: <details>", plus the attempt count when
// more than one was made, then what to do: for UNAVAILABLE and DEADLINE_EXCEEDED the server
// address (and, unless the connection was refused, the TLS settings); for UNAUTHENTICATED the
// token (none sent, or which one was refused); for PERMISSION_DENIED whose token to use.
Status RpcError(absl::string_view rpc, absl::string_view address, absl::StatusCode code,
                absl::string_view details, int attempts, const CallSecurity& security = {});

// The code a server sent in its trailing metadata (kStatusCodeMetadataKey, as ferry-server
// does), or nullopt when it sent none, sent the key more than once, or sent a value that
// ParseStatusCodeMetadata refuses.
std::optional<absl::StatusCode> WireStatusCode(
    const std::multimap<grpc::string_ref, grpc::string_ref>& trailers);

// A success=false answer: "<rpc> to <address> failed: <CODE>: <server_message>". The code is
// `wire_code` when the server sent one (WireStatusCode). Otherwise (ModelExpress's server) it
// is guessed from the message: "not found" -> NotFound; "... is required" / "invalid ..." ->
// InvalidArgument; "Failed to <verb> ..." (the server's store failed) -> Unavailable; anything
// else -> FailedPrecondition.
Status ServerRejection(absl::string_view rpc, absl::string_view address,
                       absl::string_view server_message,
                       std::optional<absl::StatusCode> wire_code = std::nullopt);

}  // namespace ferry::internal

#endif  // FERRY_CLIENT_METADATA_CLIENT_INTERNAL_H_
