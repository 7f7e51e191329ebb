// The one table of environment variables ferry reads. Every variable has the FERRY_ prefix;
// ModelExpress names (MX_*) are documented fallbacks, read only when the FERRY_ name is unset.
// Nothing else in ferry calls getenv, and only the entry points read the table: the ferry and
// ferry-server commands (src/cli, src/server/main.cc) and the Python module (python/src), which
// fill the typed Options of the libraries, directly or through the two helpers they call
// explicitly (FillCredentialsFromEnv, ResolveServerAddress in ferry/metadata_client.h). No
// library component (Publisher, PullArtifact, ...) consults the environment on its own.
#ifndef FERRY_COMMON_ENV_H_
#define FERRY_COMMON_ENV_H_

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "absl/time/time.h"
#include "ferry/status.h"

namespace ferry::internal {

struct EnvVar {
  std::string_view name;           // FERRY_...
  std::string_view fallback;       // ModelExpress-compatible name, or empty
  std::string_view default_value;  // shown in --help-env; the caller applies it
  std::string_view help;
};

// All variables, in the order --help-env prints them.
std::span<const EnvVar> EnvTable();

// The value of `name` (which must be in the table), else of its fallback; nullopt if neither is
// set. An empty value counts as unset.
std::optional<std::string> GetEnv(std::string_view name);

// GetEnv(name) parsed with ParsePositiveDuration; nullopt when unset. InvalidArgument naming the
// variable that held the value (FERRY_X or its fallback) when it is not a positive duration.
StatusOr<std::optional<absl::Duration>> GetEnvDuration(std::string_view name);

// Which variable supplied GetEnv(name)'s value ("FERRY_X" or its fallback), for error messages.
std::string EnvSource(std::string_view name);

// Formatted table for --help-env.
std::string EnvHelp();

// Parses a duration: "250ms", "30s", "5m", "1h", or a bare number of seconds ("30", as the
// MX_*_SECS variables use). Rejects zero and negative values. `what` names the flag or variable.
StatusOr<absl::Duration> ParsePositiveDuration(absl::string_view text, absl::string_view what);

// Byte sizes: common/byte_size.h (ParseByteSize), the one grammar for flags and variables.

// Parses a positive whole number ("4096"). Rejects zero, negative values and suffixes. `what` names
// the flag or variable.
StatusOr<uint64_t> ParsePositiveCount(absl::string_view text, absl::string_view what);

}  // namespace ferry::internal

#endif  // FERRY_COMMON_ENV_H_
