// ferry sources list | get: what the server holds.
#include <iostream>
#include <optional>

#include "absl/strings/str_cat.h"
#include "cli/cli.h"
#include "nlohmann/json.hpp"

namespace ferry::cli {

namespace {

struct ListFlags {
  std::optional<std::string> model;
  std::optional<std::string> status;
  std::optional<uint32_t> rank;
  std::optional<uint32_t> limit;
  bool json = false;
};

struct GetFlags {
  std::string source_id;
  std::string worker_id;
  bool json = false;
};

Status RunList(const GlobalFlags& flags, const ListFlags& list) {
  ListSourcesRequest request;
  if (list.model.has_value()) request.set_model_name_filter(*list.model);
  if (list.status.has_value()) {
    FERRY_ASSIGN_OR_RETURN(SourceStatus status, ParseStatusName(*list.status));
    request.set_status_filter(status);
  }
  if (list.rank.has_value()) request.set_worker_rank_filter(*list.rank);
  if (list.limit.has_value()) request.set_limit(*list.limit);

  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<MetadataClient> client, ConnectClient(flags));
  FERRY_ASSIGN_OR_RETURN(std::vector<SourceInstanceRef> refs, client->ListSources(request));
  if (list.json) {
    nlohmann::json out = nlohmann::json::array();
    for (const SourceInstanceRef& r : refs) {
      out.push_back(nlohmann::json::parse(MessageToJson(r, false)));
    }
    std::cout << out.dump(2) << "\n";
    return absl::OkStatus();
  }
  if (refs.empty()) {
    std::cout << "no sources match (server " << client->server_address() << ")\n";
    return absl::OkStatus();
  }
  std::cout << FormatSourcesTable(refs, absl::Now());
  return absl::OkStatus();
}

Status RunGet(const GlobalFlags& flags, const GetFlags& get) {
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<MetadataClient> client, ConnectClient(flags));
  FERRY_ASSIGN_OR_RETURN(GetMetadataResponse response,
                         client->GetMetadata(get.source_id, get.worker_id));
  if (get.json) {
    std::cout << MessageToJson(response, true);
    return absl::OkStatus();
  }
  std::cout << FormatMetadata(response, absl::Now());
  return absl::OkStatus();
}

CLI::Validator StatusValidator() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        StatusOr<SourceStatus> status = ParseStatusName(value);
        return status.ok() ? "" : std::string(status.status().message());
      },
      "STATUS");
}

}  // namespace

void AddSourcesCommand(CLI::App& app, Cli& cli) {
  CLI::App* sources =
      app.add_subcommand("sources", "Inspect the sources (published workers) the server holds.");
  sources->require_subcommand(1);

  auto list = std::make_shared<ListFlags>();
  CLI::App* list_cmd = sources->add_subcommand(
      "list",
      "List one line per (mx_source_id, worker_id), newest first.\n"
      "With --status ready the server also drops workers whose last heartbeat is older "
      "than its heartbeat timeout.");
  list_cmd->add_option("--model", list->model, "only this model_name (exact, case-sensitive)");
  list_cmd
      ->add_option("--status", list->status,
                   "only workers with this status: " + StatusNames() + " (any case)")
      ->check(StatusValidator());
  list_cmd->add_option("--rank", list->rank, "only this worker rank");
  list_cmd->add_option("--limit", list->limit, "at most N entries")->check(CLI::PositiveNumber);
  list_cmd->add_flag("--json", list->json,
                     "print a JSON array of SourceInstanceRef (proto3 JSON "
                     "mapping, proto field names; 64-bit integers are "
                     "strings)");
  list_cmd->callback(
      [&cli, list] { cli.action = [&cli, list] { return RunList(cli.flags, *list); }; });

  auto get = std::make_shared<GetFlags>();
  CLI::App* get_cmd =
      sources->add_subcommand("get",
                              "Show one worker's record: identity, rank, status, endpoints and "
                              "tensors.\nExits 1 if the server holds no such record.");
  get_cmd->add_option("SOURCE_ID", get->source_id, "mx_source_id")->required();
  get_cmd->add_option("WORKER_ID", get->worker_id, "worker_id")->required();
  get_cmd->add_flag("--json", get->json,
                    "print the GetMetadataResponse as JSON (proto3 JSON "
                    "mapping, proto field names)");
  get_cmd->callback([&cli, get] { cli.action = [&cli, get] { return RunGet(cli.flags, *get); }; });
}

}  // namespace ferry::cli
