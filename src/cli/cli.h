// Pieces shared by the `ferry` command's subcommands. Each command group lives in its own file
// and registers itself with an Add*Command function; main.cc parses and runs the chosen action.
#ifndef FERRY_CLI_CLI_H_
#define FERRY_CLI_CLI_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ferry/metadata_client.h"
#include "ferry/status.h"
#include "google/protobuf/message.h"

namespace ferry::cli {

// Options that every command accepts (before or after the subcommand name).
struct GlobalFlags {
  std::optional<std::string> server;  // --server, as given; nullopt if absent
  std::string log_level = "warn";     // --log-level
  // The connection to ferry-server: --token-file, --tls, --tls-ca, --tls-cert, --tls-key,
  // --tls-server-name; each empty one falls back to its variable (FillCredentialsFromEnv).
  ClientCredentials credentials;
};

// What parsing chose: the subcommand's action, run after a successful parse.
struct Cli {
  GlobalFlags flags;
  std::function<Status()> action;
};

void AddHealthCommand(CLI::App& app, Cli& cli);
void AddSourcesCommand(CLI::App& app, Cli& cli);
void AddDemoCommand(CLI::App& app, Cli& cli);
void AddPublishCommand(CLI::App& app, Cli& cli);
void AddPullCommand(CLI::App& app, Cli& cli);
void AddArtifactCommand(CLI::App& app, Cli& cli);

// Registers --server, --log-level and the credential flags on `app`, filling `flags`.
void AddGlobalFlags(CLI::App& app, GlobalFlags& flags);

// A client for the server chosen by --server, FERRY_SERVER, MX_SERVER_ADDRESS or the default,
// with the token and TLS settings of `flags` and the environment. A malformed address is an
// InvalidArgument naming where it came from; a missing token or certificate file names the
// flag.
StatusOr<std::unique_ptr<MetadataClient>> ConnectClient(const GlobalFlags& flags);

// As above, for an explicit address; `what` names its source in errors. `credentials` supplies
// the token and TLS settings (flags, then environment); nullptr connects in plaintext with no
// token (the demo's embedded server).
StatusOr<std::unique_ptr<MetadataClient>> ConnectClientTo(const std::string& address,
                                                          absl::string_view what,
                                                          const GlobalFlags* credentials);

// "READY" for SOURCE_STATUS_READY; the number for values outside the enum.
std::string StatusName(int status);

// Parses unknown|initializing|ready|stale, any case. The error lists the valid names.
StatusOr<SourceStatus> ParseStatusName(absl::string_view name);

// The valid names, comma-separated, for help and errors.
std::string StatusNames();

// "2026-01-02T03:04:05.678Z (3s ago)" for unix milliseconds; "never" for 0.
std::string FormatUpdatedAt(int64_t unix_millis, absl::Time now);

// "1.5 GiB", "12 B".
std::string FormatBytes(uint64_t bytes);

// The proto3 JSON mapping of `message` with proto field names and default values printed
// (64-bit integers are strings, as the mapping says).
std::string MessageToJson(const google::protobuf::Message& message, bool pretty);

// A plain text table: one header row, left-aligned columns two spaces apart.
std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows,
                        absl::string_view indent = "");

// The rows `ferry sources list` prints for `refs` (also used by the demo).
std::string FormatSourcesTable(const std::vector<SourceInstanceRef>& refs, absl::Time now,
                               absl::string_view indent = "");

// The human-readable form of `ferry sources get` (also used by the demo).
std::string FormatMetadata(const GetMetadataResponse& response, absl::Time now,
                           absl::string_view indent = "");

}  // namespace ferry::cli

#endif  // FERRY_CLI_CLI_H_
