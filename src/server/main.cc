// ferry-server: the metadata server. See --help and --help-env.
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/byte_size.h"
#include "common/env.h"
#include "common/listener_probe.h"
#include "common/logging.h"
#include "common/ready_file.h"
#include "server/server.h"
#include "store/store_registry.h"

namespace {

using ferry::Status;
using ferry::internal::EnvSource;
using ferry::internal::GetEnv;

// A flag's value, else its environment variable, else `fallback`; `source` says which, for
// error messages.
std::string Resolve(const std::optional<std::string>& flag_value, const char* flag, const char* env,
                    const std::string& fallback, std::string* source) {
  if (flag_value.has_value()) {
    *source = flag;
    return *flag_value;
  }
  if (auto v = GetEnv(env)) {
    *source = EnvSource(env);
    return *v;
  }
  *source = flag;
  return fallback;
}

int Fail(const Status& s) {
  std::cerr << "ferry-server: " << s.message() << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  // Meet the server's own bounds before the descriptor limit (gRPC 1.51 stops accepting for good
  // after EMFILE; /healthz then says so).
  (void)ferry::internal::RaiseOpenFileLimit();
  CLI::App app{
      "ferry-server: metadata server for peer-to-peer model weight and cache transfer.\n"
      "Wire-compatible with the ModelExpress P2P API (model_express.p2p.P2pService).\n"
      "Flags win over environment variables; see --help-env."};
  std::optional<std::string> listen, admin_listen, store, log_level, scan, hb, gc, max_msg;
  std::string ready_file;
  std::optional<std::string> auth_tokens, admin_principals, tls_cert, tls_key, tls_client_ca;
  std::optional<std::string> max_record_bytes, max_record_tensors, max_workers;
  bool help_env = false, version = false;
  std::string store_names;
  for (const auto& b : ferry::store::RegisteredStores()) {
    store_names += (store_names.empty() ? "" : ", ") + b.example;
  }
  app.add_option("--listen", listen, "gRPC listen address HOST:PORT (default 0.0.0.0:8001)");
  app.add_option("--admin-listen", admin_listen,
                 "HTTP address for GET /healthz and /metrics (default 127.0.0.1:9401; 'off' "
                 "disables)");
  app.add_option("--store", store, "metadata store: " + store_names + " (default memory)");
  app.add_option("--reaper-scan-interval", scan, "how often the reaper scans (default 30s)");
  app.add_option("--heartbeat-timeout", hb,
                 "records not refreshed for this long stop being listed as READY and are marked "
                 "STALE (default 90s)");
  app.add_option("--gc-timeout", gc, "STALE records are deleted after this long (default 3600s)");
  app.add_option("--max-message-size", max_msg,
                 "largest gRPC message accepted or sent (default 100MiB)");
  app.add_option("--max-record-bytes", max_record_bytes,
                 "largest worker record stored, tensor list included (default 64MiB)");
  app.add_option("--max-record-tensors", max_record_tensors,
                 "most tensors in one worker record (default 262144)");
  app.add_option("--max-workers-per-principal", max_workers,
                 "most workers one principal may own; without --auth-tokens all callers are one "
                 "principal (default 4096)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, off (default info)");
  app.add_option("--ready-file", ready_file,
                 "write {\"grpc_port\":N,\"admin_port\":M} here once listening (for scripts and "
                 "tests that use port 0)");
  app.add_option("--auth-tokens", auth_tokens,
                 "require 'authorization: Bearer <token>' on P2P calls; FILE holds one "
                 "'TOKEN PRINCIPAL' pair per line ('#' comments) and is re-read when it changes");
  app.add_option("--admin-principals", admin_principals,
                 "comma-separated principals that may change other principals' records");
  app.add_option("--tls-cert", tls_cert, "PEM certificate chain: serve gRPC over TLS");
  app.add_option("--tls-key", tls_key, "PEM private key for --tls-cert");
  app.add_option("--tls-client-ca", tls_client_ca,
                 "PEM CA bundle: require client certificates it signed (mutual TLS)");
  app.add_flag("--help-env", help_env, "print the environment variables and exit");
  app.add_flag("--version", version, "print the version and exit");
  CLI11_PARSE(app, argc, argv);
  if (help_env) {
    std::cout << ferry::internal::EnvHelp();
    return 0;
  }
  if (version) {
    std::cout << "ferry-server " << FERRY_VERSION << "\n";
    return 0;
  }

  std::string src;
  const std::string level = Resolve(log_level, "--log-level", "FERRY_LOG_LEVEL", "info", &src);
  if (Status s = ferry::internal::InitLogging(level, src); !s.ok()) return Fail(s);

  ferry::server::ServerOptions options;
  options.listen = Resolve(listen, "--listen", "FERRY_LISTEN", options.listen, &src);
  options.admin_listen =
      Resolve(admin_listen, "--admin-listen", "FERRY_ADMIN_LISTEN", options.admin_listen, &src);
  if (options.admin_listen == "off") options.admin_listen.clear();
  options.store = Resolve(store, "--store", "FERRY_STORE", options.store, &src);
  const std::tuple<std::optional<std::string>*, const char*, const char*, absl::Duration*>
      durations[] = {
          {&scan, "--reaper-scan-interval", "FERRY_REAPER_SCAN_INTERVAL",
           &options.reaper_scan_interval},
          {&hb, "--heartbeat-timeout", "FERRY_HEARTBEAT_TIMEOUT", &options.heartbeat_timeout},
          {&gc, "--gc-timeout", "FERRY_GC_TIMEOUT", &options.gc_timeout},
      };
  for (const auto& [value, flag, env, out] : durations) {
    const std::string text = Resolve(*value, flag, env, absl::FormatDuration(*out), &src);
    auto d = ferry::internal::ParsePositiveDuration(text, src);
    if (!d.ok()) return Fail(d.status());
    *out = *d;
  }
  const std::string msg_text =
      Resolve(max_msg, "--max-message-size", "FERRY_MAX_MESSAGE_SIZE", "100MiB", &src);
  auto msg_size = ferry::internal::ParseByteSize(msg_text, src);
  if (!msg_size.ok()) return Fail(msg_size.status());
  options.max_message_size = *msg_size;
  const std::string record_text =
      Resolve(max_record_bytes, "--max-record-bytes", "FERRY_MAX_RECORD_BYTES", "64MiB", &src);
  auto record_bytes = ferry::internal::ParseByteSize(record_text, src);
  if (!record_bytes.ok()) return Fail(record_bytes.status());
  options.max_record_bytes = *record_bytes;
  const std::tuple<std::optional<std::string>*, const char*, const char*, uint64_t> counts[] = {
      {&max_record_tensors, "--max-record-tensors", "FERRY_MAX_RECORD_TENSORS",
       options.max_record_tensors},
      {&max_workers, "--max-workers-per-principal", "FERRY_MAX_WORKERS_PER_PRINCIPAL",
       options.max_workers_per_principal},
  };
  uint64_t parsed_counts[2] = {};
  for (size_t i = 0; i < 2; ++i) {
    const auto& [value, flag, env, fallback] = counts[i];
    const std::string text = Resolve(*value, flag, env, absl::StrCat(fallback), &src);
    auto n = ferry::internal::ParsePositiveCount(text, src);
    if (!n.ok()) return Fail(n.status());
    parsed_counts[i] = *n;
  }
  options.max_record_tensors = parsed_counts[0];
  options.max_workers_per_principal = parsed_counts[1];

  options.auth_tokens_file = Resolve(auth_tokens, "--auth-tokens", "FERRY_AUTH_TOKENS", "", &src);
  for (absl::string_view p : absl::StrSplit(
           Resolve(admin_principals, "--admin-principals", "FERRY_ADMIN_PRINCIPALS", "", &src), ',',
           absl::SkipWhitespace())) {
    options.admin_principals.emplace_back(absl::StripAsciiWhitespace(p));
  }
  options.tls_cert = Resolve(tls_cert, "--tls-cert", "FERRY_TLS_CERT", "", &src);
  options.tls_key = Resolve(tls_key, "--tls-key", "FERRY_TLS_KEY", "", &src);
  options.tls_client_ca =
      Resolve(tls_client_ca, "--tls-client-ca", "FERRY_TLS_CLIENT_CA", "", &src);

  // Block the stop signals before any thread starts, so only sigwait below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto server = ferry::server::Server::Create(options);
  if (!server.ok()) return Fail(server.status());
  (*server)->Start();
  if (!ready_file.empty()) {
    if (Status s = ferry::internal::WriteReadyFile(
            ready_file,
            {{"grpc_port", (*server)->grpc_port()}, {"admin_port", (*server)->admin_port()}});
        !s.ok()) {
      return Fail(s);
    }
  }
  int sig = 0;
  sigwait(&stop_signals, &sig);
  spdlog::info("ferry-server: {} received; draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  (*server)->Stop();
  spdlog::info("ferry-server: stopped");
  return 0;
}
