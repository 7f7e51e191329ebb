#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "cli/cli.h"
#include "client/credentials.h"
#include "common/env.h"
#include "google/protobuf/util/json_util.h"

namespace ferry::cli {

namespace p2p = ::model_express::p2p;

namespace {

// Deadlines for an interactive command: shorter than the library's 30 s, which suits a
// heartbeat thread but not a person waiting at a prompt.
constexpr absl::Duration kCliCallTimeout = absl::Seconds(10);

constexpr const char* kStatusNames[] = {"unknown", "initializing", "ready", "stale"};

}  // namespace

StatusOr<std::unique_ptr<MetadataClient>> ConnectClient(const GlobalFlags& flags) {
  std::string what = "--server";
  if (!flags.server.has_value() || flags.server->empty()) {
    what = internal::GetEnv("FERRY_SERVER").has_value() ? internal::EnvSource("FERRY_SERVER")
                                                        : "the default server address";
  }
  return ConnectClientTo(ResolveServerAddress(flags.server), what, &flags);
}

StatusOr<std::unique_ptr<MetadataClient>> ConnectClientTo(const std::string& address,
                                                          absl::string_view what,
                                                          const GlobalFlags* credentials) {
  FERRY_RETURN_IF_ERROR(internal::NormalizeServerAddress(address, what).status());
  MetadataClientOptions options;
  options.server_address = address;
  options.call_timeout = kCliCallTimeout;
  if (credentials != nullptr) {
    static_cast<ClientCredentials&>(options) = credentials->credentials;
    FERRY_RETURN_IF_ERROR(FillCredentialsFromEnv(&options));
  }
  return MetadataClient::Create(options);
}

void AddGlobalFlags(CLI::App& app, GlobalFlags& flags) {
  app.add_option("--server", flags.server,
                 "server address HOST:PORT (an http:// prefix is accepted; https:// turns TLS "
                 "on). Default: FERRY_SERVER, else MX_SERVER_ADDRESS, else localhost:8001");
  app.add_option("--log-level", flags.log_level,
                 "library log level on stderr: trace, debug, info, warn, error, off")
      ->capture_default_str();
  app.add_option("--token-file", flags.credentials.token_file,
                 "file holding the bearer token sent as 'authorization: Bearer <token>'. "
                 "Default: FERRY_TOKEN_FILE, else MX_AUTH_TOKEN_PATH; FERRY_TOKEN gives the "
                 "token itself. Unset: no token")
      ->type_name("FILE");
  app.add_flag("--tls", flags.credentials.tls,
               "connect with TLS, trusting the system's root certificates (implied by --tls-ca, "
               "--tls-cert and an https:// address)");
  app.add_option("--tls-ca", flags.credentials.tls_ca_file,
                 "PEM CA certificates the server's certificate must chain to; turns TLS on. "
                 "Default: FERRY_TLS_CA")
      ->type_name("FILE");
  app.add_option("--tls-cert", flags.credentials.tls_cert_file,
                 "PEM client certificate for servers that require mutual TLS (with --tls-key). "
                 "Default: FERRY_TLS_CLIENT_CERT")
      ->type_name("FILE");
  app.add_option("--tls-key", flags.credentials.tls_key_file,
                 "PEM private key of --tls-cert. Default: FERRY_TLS_CLIENT_KEY")
      ->type_name("FILE");
  app.add_option("--tls-server-name", flags.credentials.tls_server_name,
                 "name the server's certificate must carry, when it differs from the host in "
                 "--server")
      ->type_name("NAME");
}

std::string StatusName(int status) {
  if (!p2p::SourceStatus_IsValid(status)) return absl::StrCat(status);
  absl::string_view name = p2p::SourceStatus_Name(static_cast<p2p::SourceStatus>(status));
  absl::ConsumePrefix(&name, "SOURCE_STATUS_");
  return std::string(name);
}

std::string StatusNames() { return absl::StrJoin(kStatusNames, ", "); }

StatusOr<SourceStatus> ParseStatusName(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(absl::StripAsciiWhitespace(name));
  for (int i = 0; i < static_cast<int>(std::size(kStatusNames)); ++i) {
    if (lower == kStatusNames[i]) return static_cast<SourceStatus>(i);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("'", name, "' is not a source status; use one of ", StatusNames()));
}

std::string FormatUpdatedAt(int64_t unix_millis, absl::Time now) {
  if (unix_millis <= 0) return "never";
  const absl::Time t = absl::FromUnixMillis(unix_millis);
  std::string out = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone());
  const absl::Duration age = now - t;
  if (age < absl::ZeroDuration()) return out;  // clocks disagree; say nothing
  const absl::Duration shown =
      absl::Trunc(age, age < absl::Seconds(10) ? absl::Milliseconds(100) : absl::Seconds(1));
  if (shown == absl::ZeroDuration()) return absl::StrCat(out, " (just now)");
  return absl::StrCat(out, " (", absl::FormatDuration(shown), " ago)");
}

std::string FormatBytes(uint64_t bytes) {
  constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (v >= 1024 && unit + 1 < static_cast<int>(std::size(kUnits))) {
    v /= 1024;
    ++unit;
  }
  if (unit == 0) return absl::StrCat(bytes, " B");
  return absl::StrFormat("%.1f %s", v, kUnits[unit]);
}

std::string MessageToJson(const google::protobuf::Message& message, bool pretty) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  options.add_whitespace = pretty;
  std::string out;
  // Fails only for messages that cannot be represented (none of ours).
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows,
                        absl::string_view indent) {
  std::vector<size_t> width(header.size());
  for (size_t c = 0; c < header.size(); ++c) width[c] = header[c].size();
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size() && c < width.size(); ++c) {
      width[c] = std::max(width[c], row[c].size());
    }
  }
  std::string out;
  auto append_row = [&](const std::vector<std::string>& row) {
    std::string line(indent);
    for (size_t c = 0; c < row.size() && c < width.size(); ++c) {
      absl::StrAppend(&line, row[c]);
      if (c + 1 < row.size()) line.append(width[c] - row[c].size() + 2, ' ');
    }
    absl::StrAppend(&out, line, "\n");
  };
  append_row(header);
  for (const auto& row : rows) append_row(row);
  return out;
}

std::string FormatSourcesTable(const std::vector<SourceInstanceRef>& refs, absl::Time now,
                               absl::string_view indent) {
  std::vector<std::vector<std::string>> rows;
  for (const SourceInstanceRef& r : refs) {
    rows.push_back({r.mx_source_id(), r.worker_id(), absl::StrCat(r.worker_rank()), r.model_name(),
                    r.accelerator().empty() ? "-" : r.accelerator(),
                    r.has_training_step() ? absl::StrCat(r.training_step()) : "-",
                    FormatUpdatedAt(r.updated_at(), now)});
  }
  return FormatTable({"MX_SOURCE_ID", "WORKER_ID", "RANK", "MODEL", "ACCEL", "STEP", "UPDATED_AT"},
                     rows, indent);
}

std::string FormatMetadata(const GetMetadataResponse& response, absl::Time now,
                           absl::string_view indent) {
  const WorkerMetadata& w = response.worker();
  std::string out;
  auto line = [&](absl::string_view key, absl::string_view value) {
    absl::StrAppend(&out, indent, absl::StrFormat("%-22s", key), value, "\n");
  };
  line("mx_source_id", response.mx_source_id());
  line("worker_id", response.worker_id());
  line("identity", response.has_identity() ? response.identity().ShortDebugString()
                                           : std::string("(not stored by this server)"));
  line("worker_rank", absl::StrCat(w.worker_rank()));
  line("status", StatusName(w.status()));
  line("updated_at", FormatUpdatedAt(w.updated_at(), now));
  const std::pair<const char*, const std::string*> endpoints[] = {
      {"metadata_endpoint", &w.metadata_endpoint()},
      {"agent_name", &w.agent_name()},
      {"worker_grpc_endpoint", &w.worker_grpc_endpoint()},
      {"accelerator", &w.accelerator()},
  };
  for (const auto& [key, value] : endpoints) {
    line(key, value->empty() ? "-" : *value);
  }
  if (w.has_transfer_engine_session_id()) {
    line("transfer_engine", w.transfer_engine_session_id());
  } else if (w.has_nixl_metadata()) {
    line("nixl_metadata", absl::StrCat(w.nixl_metadata().size(), " bytes"));
  }
  if (w.has_artifact_source()) {
    const auto& a = w.artifact_source();
    line("artifact",
         absl::StrCat(a.artifact_id(), " (", FormatBytes(a.total_size()), ", ", a.file_count(),
                      " files, ", a.chunk_count(), " chunks, node rank ", a.node_rank(), ")"));
  }
  // Readers prefer tensor_source and fall back to the deprecated legacy list (contract 5.1),
  // which is what older servers and publishers fill.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  const auto& tensors = w.has_tensor_source() ? w.tensor_source().tensors() : w.tensors();
#pragma GCC diagnostic pop
  uint64_t total = 0;
  for (const TensorDescriptor& t : tensors) total += t.size();
  line("tensors", absl::StrCat(tensors.size(), " (", FormatBytes(total), ")"));
  if (!tensors.empty()) {
    std::vector<std::vector<std::string>> rows;
    for (const TensorDescriptor& t : tensors) {
      rows.push_back({t.name(), t.dtype().empty() ? "-" : t.dtype(), FormatBytes(t.size()),
                      absl::StrCat(t.device_id()), absl::StrFormat("0x%x", t.addr())});
    }
    absl::StrAppend(&out, FormatTable({"NAME", "DTYPE", "SIZE", "DEVICE", "ADDR"}, rows,
                                      absl::StrCat(indent, "  ")));
  }
  return out;
}

}  // namespace ferry::cli
