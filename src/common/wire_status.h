// The canonical status code on the wire. ModelExpress's P2P answers refuse a request with
// `success=false` and a message under gRPC status OK, which says nothing a program can act on.
// ferry-server adds the absl::StatusCode of every refusal and every error as gRPC trailing
// metadata under kStatusCodeMetadataKey, beside ModelExpress's fields (which stay exactly as
// they are), and ferry's clients read it back with ParseStatusCodeMetadata. docs/protocol.md,
// "Status codes on the wire".
#ifndef FERRY_COMMON_WIRE_STATUS_H_
#define FERRY_COMMON_WIRE_STATUS_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace ferry::internal {

// The trailing-metadata key (gRPC keys are lowercase ASCII; no "-bin" suffix: the value is text).
inline constexpr char kStatusCodeMetadataKey[] = "ferry-status-code";

// The value sent for `code`: its number in decimal ("3" for INVALID_ARGUMENT); absl and gRPC
// number the canonical codes alike.
std::string StatusCodeMetadataValue(absl::StatusCode code);

// The code a peer sent, or nullopt unless `value` is exactly the decimal number (no sign,
// spaces or leading zero) of a canonical code other than OK: a value from a server we do not
// trust may be anything, and a caller that gets nullopt falls back to what it did without one.
std::optional<absl::StatusCode> ParseStatusCodeMetadata(absl::string_view value);

}  // namespace ferry::internal

#endif  // FERRY_COMMON_WIRE_STATUS_H_
