// ferry: command-line client for a ferry-server (or any ModelExpress P2P metadata server).
//
// Exit status: 0 success; 1 the command failed (message on stderr as "ferry: ..."); 2 usage
// error.
#include <grpc/support/log.h>

#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "cli/cli.h"
#include "common/env.h"
#include "common/listener_probe.h"
#include "common/logging.h"
#include "spdlog/spdlog.h"

namespace {

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

// gRPC's core writes what it sees on each connection attempt (a failed TLS handshake, say) to
// stderr. A command reports the outcome once, in its error, so those lines go to the debug log:
// `--log-level debug` shows them.
void ForwardGrpcLog(gpr_log_func_args* args) { spdlog::debug("grpc: {}", args->message); }

}  // namespace

int main(int argc, char** argv) {
  // Sources serve many connections: meet their own bounds before the descriptor limit.
  (void)ferry::internal::RaiseOpenFileLimit();
  ferry::cli::Cli cli;
  CLI::App app{
      "ferry: inspect and exercise a ferry-server, the metadata server for peer-to-peer\n"
      "model weight transfer (wire-compatible with the ModelExpress P2P API).\n"
      "Try `ferry demo` for the whole round trip against a throwaway server.",
      "ferry"};
  // Global options are accepted after the subcommand too: `ferry sources list --server X`.
  app.fallthrough();
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("ferry ") + FERRY_VERSION);
  ferry::cli::AddGlobalFlags(app, cli.flags);
  app.add_flag_callback(
      "--help-env",
      [] {
        std::cout << ferry::internal::EnvHelp();
        throw CLI::Success();
      },
      "print the environment variables ferry reads and exit");
  app.footer(
      "Exit status: 0 success, 1 the command failed, 2 usage error.\n"
      "Run `ferry COMMAND --help` for a command's options.");

  ferry::cli::AddHealthCommand(app, cli);
  ferry::cli::AddSourcesCommand(app, cli);
  ferry::cli::AddPublishCommand(app, cli);
  ferry::cli::AddPullCommand(app, cli);
  ferry::cli::AddArtifactCommand(app, cli);
  ferry::cli::AddDemoCommand(app, cli);

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --help-env, --version
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "ferry: " << e.what() << "\nRun `ferry --help` for usage.\n";
    return kExitUsage;
  }

  if (ferry::Status s = ferry::internal::InitLogging(cli.flags.log_level, "--log-level"); !s.ok()) {
    std::cerr << "ferry: " << s.message() << "\n";
    return kExitUsage;
  }
  gpr_set_log_function(ForwardGrpcLog);
  if (!cli.action) {
    std::cerr << "ferry: no command given\nRun `ferry --help` for usage.\n";
    return kExitUsage;
  }
  if (ferry::Status s = cli.action(); !s.ok()) {
    std::cerr << "ferry: " << s.message() << "\n";
    return kExitFailure;
  }
  return 0;
}
