// ferry artifact pull --kind KIND --model NAME ... --into DIR: install a compile cache from a
// peer, verified, trusted and atomically (see artifacts/artifact_puller.h).
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/artifact_flags.h"
#include "common/env.h"
#include "common/logging.h"
#include "flows/artifact_puller.h"
#include "nlohmann/json.hpp"

namespace ferry::cli {

namespace {

struct ArtifactPullFlags {
  ArtifactIdentityFlags identity;
  std::string into;
  uint32_t node_rank = 0;
  std::string accelerator;
  std::vector<std::string> topology;  // --topology
  std::vector<std::string> trust;
  bool allow_unsigned = false;
  std::string state_dir;
  double failure_ttl = 120;
  double lock_timeout = 1800;
  bool force = false;
  bool json = false;
  TargetFlags target = {.transfer_timeout = 600};
  EngineFlags engine;
};

nlohmann::json Summary(const artifacts::ArtifactPullResult& r) {
  nlohmann::json attempts = nlohmann::json::array();
  for (const artifacts::ArtifactPullAttempt& a : r.attempts) {
    attempts.push_back({{"worker_id", a.worker_id},
                        {"endpoint", a.endpoint},
                        {"ok", a.status.ok()},
                        {"error", a.status.ok() ? "" : std::string(a.status.message())}});
  }
  const double transfer = absl::ToDoubleSeconds(r.transfer_time);
  return {{"installed", r.installed},
          {"into", r.installed_into},
          {"artifact_id", r.artifact_id},
          {"mx_source_id", r.mx_source_id},
          {"bytes", r.bytes},
          {"files", r.files},
          {"seconds", absl::ToDoubleSeconds(r.total_time)},
          {"transfer_seconds", transfer},
          {"install_seconds", absl::ToDoubleSeconds(r.install_time)},
          {"gbps", transfer > 0 ? r.bytes / transfer / 1e9 : 0.0},
          {"transport", r.installed ? std::string(TransportKindName(r.transport)) : ""},
          {"verified", r.installed},
          {"trust", r.installed ? std::string(artifacts::TrustDecisionName(r.trust)) : ""},
          {"signer", r.signer},
          {"source", {{"worker_id", r.source_worker_id}, {"endpoint", r.source_endpoint}}},
          {"attempts", attempts}};
}

Status RunArtifactPull(const GlobalFlags& flags, const ArtifactPullFlags& pull) {
  FERRY_ASSIGN_OR_RETURN(SourceIdentity identity, BuildArtifactIdentity(pull.identity));
  FERRY_ASSIGN_OR_RETURN(artifacts::TrustedKeys trusted, artifacts::TrustedKeys::Load(pull.trust));
  if (trusted.empty() && !pull.allow_unsigned) {
    return absl::InvalidArgumentError(
        "ferry artifact pull needs --trust FILE (a deployment public key, see `ferry artifact "
        "keygen`) to install signed caches, or --allow-unsigned to accept unsigned ones");
  }
  TransportKind transport;
  FERRY_ASSIGN_OR_RETURN(TransferEngineOptions engine_options,
                         BuildEngineOptions(pull.engine, "ferry artifact pull", &transport));
  FERRY_ASSIGN_OR_RETURN(ClientCredentials token, ResolveDeploymentToken(flags));
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<MetadataClient> client, ConnectClient(flags));
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<TransferEngine> engine,
                         TransferEngine::Create(engine_options));

  artifacts::ArtifactPullOptions options;
  options.client = client.get();
  options.engine = engine.get();
  options.identity = identity;
  options.into = pull.into;
  options.node_rank = pull.node_rank;
  options.accelerator = pull.accelerator;
  options.target_worker_id = pull.target.target_worker_id;
  FERRY_ASSIGN_OR_RETURN(options.topology, ParseTopology(pull.topology));
  options.transport = transport;
  options.max_sources = pull.target.max_sources;
  options.endpoint = WorkerClientFromFlags(pull.target, token);
  options.transfer_timeout = absl::Seconds(pull.target.transfer_timeout);
  options.stall_timeout = absl::Seconds(pull.target.stall_timeout);
  options.trusted = &trusted;
  options.allow_unsigned = pull.allow_unsigned;
  options.state_dir = !pull.state_dir.empty() ? pull.state_dir
                                              : internal::GetEnv("FERRY_ARTIFACT_STATE_DIR")
                                                    .value_or(artifacts::kDefaultArtifactStateDir);
  options.failure_ttl = absl::Seconds(pull.failure_ttl);
  options.lock_timeout = absl::Seconds(pull.lock_timeout);
  options.force = pull.force;
  options.on_lock_wait = [&pull](int pid) {
    std::cerr << "ferry artifact pull: waiting for another pull"
              << (pid > 0 ? absl::StrCat(" (pid ", pid, ")") : std::string()) << " installing into "
              << pull.into << "\n";
  };
  FERRY_ASSIGN_OR_RETURN(artifacts::ArtifactPullResult result, artifacts::PullArtifact(options));
  if (pull.json) {
    std::cout << Summary(result).dump(2) << std::endl;
  } else if (!result.installed) {
    std::cout << "artifact " << result.artifact_id << " is already installed in "
              << result.installed_into << " (by an earlier pull on this node; --force to redo)\n";
  } else {
    std::cout << absl::StrFormat(
        "installed %d files (%s) of artifact %s into %s from worker %s over %s in %.3f s "
        "(transfer %.3f s; verified CRC32C; %s%s)\n",
        result.files, FormatBytes(result.bytes), result.artifact_id, result.installed_into,
        result.source_worker_id, TransportKindName(result.transport),
        absl::ToDoubleSeconds(result.total_time), absl::ToDoubleSeconds(result.transfer_time),
        artifacts::TrustDecisionName(result.trust),
        result.signer.empty() ? "" : absl::StrCat(" ", result.signer));
  }
  std::cout.flush();
  return absl::OkStatus();
}

}  // namespace

void AddArtifactPullCommand(CLI::App* artifact, Cli& cli) {
  auto flags = std::make_shared<ArtifactPullFlags>();
  CLI::App* cmd = artifact->add_subcommand(
      "pull",
      "Install a compile cache from a peer (see `ferry artifact publish`): under a node-wide\n"
      "lock, list READY sources of the identity, fetch and validate the sealed manifest, check\n"
      "its signature against --trust keys, read the bytes, verify every chunk and file CRC32C,\n"
      "stage the files beside --into and swap them in atomically: the cache is either untouched\n"
      "or complete. Local entries the artifact does not contain are kept. Other pulls of the\n"
      "same cache on this node wait and reuse the result; after a failure they fail fast for\n"
      "--failure-ttl seconds. Exits 1 with what happened at each source if none succeeded.");
  AddArtifactIdentityFlags(cmd, flags->identity);
  cmd->add_option("--into", flags->into, "the cache directory to install into")->required();
  cmd->add_option("--node-rank", flags->node_rank, "take only sources of this node_rank")
      ->capture_default_str();
  cmd->add_option("--accelerator", flags->accelerator,
                  "this target's accelerator; sources must be compatible (\"\" accepts all)");
  const std::string trust = "Trust";
  cmd->add_option("--trust", flags->trust, "a trusted signing public key (signing.pub); repeatable")
      ->check(CLI::ExistingFile)
      ->group(trust);
  cmd->add_flag("--allow-unsigned", flags->allow_unsigned,
                "also install unsigned artifacts, or ones signed by an untrusted key (a warning "
                "names the source); a bad signature by a trusted key is still refused")
      ->group(trust);
  const std::string node = "Node coordination";
  cmd->add_option("--state-dir", flags->state_dir,
                  "where install locks and markers live (default FERRY_ARTIFACT_STATE_DIR, else "
                  "/tmp/ferry-artifacts)")
      ->group(node);
  cmd->add_option("--failure-ttl", flags->failure_ttl,
                  "seconds other pulls on this node skip a cache whose pull failed")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group(node);
  cmd->add_option("--lock-timeout", flags->lock_timeout,
                  "seconds to wait for another pull installing into the same directory")
      ->check(CLI::PositiveNumber)
      ->capture_default_str()
      ->group(node);
  cmd->add_flag("--force", flags->force,
                "pull even if this node already installed the cache or recently failed to")
      ->group(node);
  cmd->add_flag("--json", flags->json,
                "print a JSON summary: installed, into, artifact_id, bytes, files, seconds, "
                "gbps, transport, trust, signer, source, attempts");
  AddTargetFlags(cmd, flags->target, "bytes");
  AddTopologyFlag(cmd, &flags->topology);
  AddEngineFlags(cmd, flags->engine, /*serving=*/false);
  cmd->callback(
      [&cli, flags] { cli.action = [&cli, flags] { return RunArtifactPull(cli.flags, *flags); }; });
}

}  // namespace ferry::cli
