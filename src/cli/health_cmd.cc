// ferry health: the server's version, status and uptime.
#include <iostream>

#include "absl/strings/str_cat.h"
#include "cli/cli.h"
#include "nlohmann/json.hpp"

namespace ferry::cli {

namespace {

Status RunHealth(const GlobalFlags& flags, bool json) {
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<MetadataClient> client, ConnectClient(flags));
  FERRY_ASSIGN_OR_RETURN(HealthInfo health, client->Health());
  if (json) {
    nlohmann::json out = {{"server", client->server_address()},
                          {"status", health.status},
                          {"version", health.version},
                          {"uptime_seconds", health.uptime_seconds}};
    std::cout << out.dump(2) << "\n";
    return absl::OkStatus();
  }
  std::cout << "server   " << client->server_address() << "\n"
            << "status   " << health.status << "\n"
            << "version  " << health.version << "\n"
            << "uptime   " << health.uptime_seconds << "s\n";
  return absl::OkStatus();
}

}  // namespace

void AddHealthCommand(CLI::App& app, Cli& cli) {
  CLI::App* cmd =
      app.add_subcommand("health",
                         "Ask the server for its health (model_express.health.HealthService).\n"
                         "Exits 0 if the server answered, 1 if it could not be reached.");
  auto json = std::make_shared<bool>(false);
  cmd->add_flag("--json", *json,
                "print {\"server\", \"status\", \"version\", \"uptime_seconds\"} as "
                "JSON");
  cmd->callback(
      [&cli, json] { cli.action = [&cli, json] { return RunHealth(cli.flags, *json); }; });
}

}  // namespace ferry::cli
