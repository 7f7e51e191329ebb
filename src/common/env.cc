#include "common/env.h"

#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ferry::internal {
namespace {

constexpr EnvVar kTable[] = {
    {"FERRY_SERVER", "MX_SERVER_ADDRESS", "localhost:8001",
     "ferry-server address (host:port) used by the ferry command and the Python package "
     "(--server)"},
    {"FERRY_LISTEN", "", "0.0.0.0:8001", "ferry-server gRPC listen address (--listen)"},
    {"FERRY_ADMIN_LISTEN", "", "127.0.0.1:9401",
     "ferry-server admin HTTP address for /healthz and /metrics (--admin-listen)"},
    {"FERRY_STORE", "", "memory", "ferry-server metadata store (--store)"},
    {"FERRY_LOG_LEVEL", "", "info", "log level: trace, debug, info, warn, error (--log-level)"},
    {"FERRY_MAX_MESSAGE_SIZE", "", "100MiB",
     "largest gRPC message ferry-server accepts or sends (--max-message-size)"},
    {"FERRY_MAX_RECORD_BYTES", "", "64MiB",
     "largest worker record ferry-server stores, tensor list included (--max-record-bytes)"},
    {"FERRY_MAX_RECORD_TENSORS", "", "262144",
     "most tensors in one worker record ferry-server stores (--max-record-tensors)"},
    {"FERRY_MAX_WORKERS_PER_PRINCIPAL", "", "4096",
     "most workers one principal may own on ferry-server; without --auth-tokens all callers are "
     "one principal (--max-workers-per-principal)"},
    {"FERRY_REAPER_SCAN_INTERVAL", "MX_REAPER_SCAN_INTERVAL_SECS", "30s",
     "how often the reaper scans the store (--reaper-scan-interval)"},
    {"FERRY_HEARTBEAT_TIMEOUT", "MX_HEARTBEAT_TIMEOUT_SECS", "90s",
     "a record not refreshed for this long is not listed as READY and is marked STALE "
     "(--heartbeat-timeout)"},
    {"FERRY_GC_TIMEOUT", "MX_GC_TIMEOUT_SECS", "3600s",
     "a STALE record is deleted after this long (--gc-timeout)"},
    {"FERRY_AUTH_TOKENS", "", "",
     "ferry-server token file for bearer authentication (--auth-tokens); unset: off"},
    {"FERRY_ADMIN_PRINCIPALS", "", "",
     "ferry-server principals that may change others' records (--admin-principals)"},
    {"FERRY_TLS_CERT", "", "", "ferry-server PEM certificate chain for TLS (--tls-cert)"},
    {"FERRY_TLS_KEY", "", "", "ferry-server PEM private key for TLS (--tls-key)"},
    {"FERRY_TLS_CLIENT_CA", "", "",
     "ferry-server PEM CA that client certificates must chain to (--tls-client-ca)"},
    {"FERRY_HEARTBEAT_INTERVAL", "MX_HEARTBEAT_INTERVAL_SECS", "30s",
     "how often a publisher (ferry publish, ferry artifact publish, the Python package) refreshes "
     "its records (--heartbeat-interval)"},
    {"FERRY_TOKEN_FILE", "MX_AUTH_TOKEN_PATH", "",
     "client: file holding the bearer token sent to the server (--token-file); re-read when it "
     "changes. Unset: no token (ModelExpress's default path is not read unless "
     "MX_AUTH_TOKEN_PATH names it)"},
    {"FERRY_TOKEN", "", "",
     "client: the bearer token itself, when there is no token file (prefer FERRY_TOKEN_FILE)"},
    {"FERRY_TLS_CA", "", "",
     "client: PEM CA certificates the server's certificate must chain to; turns TLS on "
     "(--tls-ca)"},
    {"FERRY_TLS_CLIENT_CERT", "", "",
     "client: PEM client certificate chain for mutual TLS (--tls-cert)"},
    {"FERRY_TLS_CLIENT_KEY", "", "", "client: PEM private key of --tls-cert (--tls-key)"},
    {"FERRY_ARTIFACT_CHUNK_SIZE", "MX_ARTIFACT_TRANSFER_CHUNK_SIZE", "64MiB",
     "ferry artifact publish/seal: bytes per manifest chunk, 1 B..4 GiB (--chunk-size)"},
    {"FERRY_ARTIFACT_STATE_DIR", "", "/tmp/ferry-artifacts",
     "ferry artifact pull and ferry.artifacts.pull: node-wide install locks and markers "
     "(--state-dir)"},
};

}  // namespace

std::span<const EnvVar> EnvTable() { return kTable; }

static const EnvVar* Find(std::string_view name) {
  for (const EnvVar& v : kTable) {
    if (v.name == name) return &v;
  }
  return nullptr;
}

static std::optional<std::string> Read(std::string_view name) {
  if (name.empty()) return std::nullopt;
  const char* v = std::getenv(std::string(name).c_str());
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

std::optional<std::string> GetEnv(std::string_view name) {
  const EnvVar* var = Find(name);
  if (var == nullptr) return std::nullopt;  // programming error; tests catch it
  if (auto v = Read(var->name)) return v;
  return Read(var->fallback);
}

StatusOr<std::optional<absl::Duration>> GetEnvDuration(std::string_view name) {
  std::optional<std::string> text = GetEnv(name);
  if (!text.has_value()) return std::optional<absl::Duration>();
  FERRY_ASSIGN_OR_RETURN(absl::Duration d, ParsePositiveDuration(*text, EnvSource(name)));
  return std::optional<absl::Duration>(d);
}

std::string EnvSource(std::string_view name) {
  const EnvVar* var = Find(name);
  if (var == nullptr) return std::string(name);
  if (Read(var->name)) return std::string(var->name);
  if (Read(var->fallback)) return std::string(var->fallback);
  return std::string(var->name);
}

std::string EnvHelp() {
  std::string out = "Environment variables (a flag wins over its variable):\n";
  for (const EnvVar& v : kTable) {
    absl::StrAppendFormat(&out, "  %-28s default %s\n      %s\n", v.name, v.default_value, v.help);
    if (!v.fallback.empty()) {
      absl::StrAppendFormat(&out, "      fallback: %s (ModelExpress name, read when %s is unset)\n",
                            v.fallback, v.name);
    }
  }
  return out;
}

StatusOr<absl::Duration> ParsePositiveDuration(absl::string_view text, absl::string_view what) {
  std::string t(absl::StripAsciiWhitespace(text));
  absl::Duration d;
  int64_t secs = 0;
  if (absl::SimpleAtoi(t, &secs)) {
    d = absl::Seconds(secs);
  } else if (!absl::ParseDuration(t, &d)) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, "='", text,
        "' is not a duration; use a number of seconds or a value like 500ms, 30s, 5m"));
  }
  if (d <= absl::ZeroDuration() || d == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, "='", text, "' must be a positive, finite duration"));
  }
  return d;
}

StatusOr<uint64_t> ParsePositiveCount(absl::string_view text, absl::string_view what) {
  uint64_t n = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &n) || n == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, "='", text, "' is not a positive whole number; use e.g. 4096"));
  }
  return n;
}

}  // namespace ferry::internal
