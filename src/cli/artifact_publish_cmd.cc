// ferry artifact publish DIR --kind KIND --model NAME ...: snapshot, seal and (optionally) sign a
// compile-cache directory, then serve it to peers until SIGTERM.
#include <signal.h>
#include <unistd.h>

#include <iostream>

#include "absl/strings/str_cat.h"
#include "cli/artifact_flags.h"
#include "common/logging.h"
#include "flows/artifact_source.h"
#include "nlohmann/json.hpp"

namespace ferry::cli {

namespace {

struct ArtifactPublishFlags {
  std::string dir;
  ArtifactIdentityFlags identity;
  std::string chunk_size;
  std::string signing_key;
  uint32_t rank = 0;
  uint32_t node_rank = 0;
  EngineFlags engine;
  ServeFlags serve;
  int max_leases = 64;
  double lease_ttl = 300;
};

Status RunArtifactPublish(const GlobalFlags& flags, const ArtifactPublishFlags& publish) {
  BlockStopSignals();
  FERRY_ASSIGN_OR_RETURN(SourceIdentity identity, BuildArtifactIdentity(publish.identity));
  artifacts::SealOptions seal;
  FERRY_ASSIGN_OR_RETURN(seal.chunk_size, ResolveChunkSize(publish.chunk_size));
  seal.mx_source_type = identity.mx_source_type();
  std::optional<artifacts::SigningKey> key;
  if (!publish.signing_key.empty()) {
    FERRY_ASSIGN_OR_RETURN(key, artifacts::SigningKey::Load(publish.signing_key));
  }
  TransportKind transport;
  FERRY_ASSIGN_OR_RETURN(TransferEngineOptions engine_options,
                         BuildEngineOptions(publish.engine, "ferry artifact publish", &transport));
  FERRY_ASSIGN_OR_RETURN(ClientCredentials token, ResolveDeploymentToken(flags));
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<MetadataClient> client, ConnectClient(flags));
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<TransferEngine> engine,
                         TransferEngine::Create(engine_options));

  artifacts::ArtifactSourceOptions options;
  options.client = client.get();
  options.engine = engine.get();
  options.identity = identity;
  options.root = publish.dir;
  options.seal = seal;
  options.worker_rank = publish.rank;
  options.node_rank = publish.node_rank;
  options.accelerator = publish.serve.accelerator;
  options.worker_id = publish.serve.worker_id;
  FERRY_ASSIGN_OR_RETURN(options.topology, ParseTopology(publish.serve.topology));
  options.signing_key = key.has_value() ? &*key : nullptr;
  options.leases.max_leases = publish.max_leases;
  options.leases.ttl = absl::Seconds(publish.lease_ttl);
  FERRY_ASSIGN_OR_RETURN(options.heartbeat_interval, HeartbeatInterval(publish.serve));
  options.endpoint.listen = publish.serve.worker_listen;
  options.endpoint.advertise_host = publish.engine.advertise_host;
  options.endpoint.token = token.token;
  options.endpoint.token_file = token.token_file;
  options.endpoint.tls_cert = publish.serve.tls_cert;
  options.endpoint.tls_key = publish.serve.tls_key;
  options.endpoint.tls_client_ca = publish.serve.tls_client_ca;
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<artifacts::ArtifactSource> source,
                         artifacts::ArtifactSource::Create(std::move(options)));
  FERRY_RETURN_IF_ERROR(source->Start());

  const artifacts::SourceSummary& s = source->summary();
  const std::string signer = key.has_value() ? key->fingerprint() : "";
  if (!key.has_value()) {
    spdlog::warn(
        "ferry artifact publish: serving artifact {} UNSIGNED; targets refuse it unless they pass "
        "--allow-unsigned (sign with --signing-key, see `ferry artifact keygen`)",
        source->artifact_id());
  }
  std::cerr << "ferry artifact publish: serving " << publish.identity.kind << " cache "
            << source->snapshot().root << " (" << s.file_count << " files, "
            << FormatBytes(s.total_size) << ", artifact " << source->artifact_id()
            << (signer.empty() ? ", unsigned" : ", signed by " + signer) << ") as worker "
            << source->worker_id() << " at " << source->endpoint()
            << "; SIGTERM or Ctrl-C to stop\n";
  if (!publish.serve.ready_file.empty()) {
    FERRY_RETURN_IF_ERROR(WriteSourceReadyFile(publish.serve.ready_file, source->mx_source_id(),
                                               source->worker_id(), source->endpoint(),
                                               {{"artifact_id", source->artifact_id()},
                                                {"files", s.file_count},
                                                {"chunks", s.chunk_count},
                                                {"bytes", s.total_size},
                                                {"root", source->snapshot().root},
                                                {"signer", signer}}));
  }
  spdlog::info("ferry artifact publish: {} received; marking the worker STALE",
               WaitForStopSignal());
  source->Stop();
  return absl::OkStatus();
}

}  // namespace

void AddArtifactPublishCommand(CLI::App* artifact, Cli& cli) {
  auto flags = std::make_shared<ArtifactPublishFlags>();
  flags->serve.accelerator = "";
  CLI::App* cmd = artifact->add_subcommand(
      "publish",
      "Serve a compile-cache directory to peers: copy it into one registered memory arena (a\n"
      "snapshot: later writes to the live cache do not change what is served), seal it\n"
      "(manifest, CRC32C per chunk and file, artifact_id as ModelExpress computes it), sign it\n"
      "with --signing-key, publish an artifact source (READY, with heartbeats) and serve the\n"
      "manifest and bytes until SIGTERM or Ctrl-C, then mark it STALE and exit 0.");
  cmd->add_option("DIR", flags->dir, "the cache directory")->required();
  AddArtifactIdentityFlags(cmd, flags->identity);
  cmd->add_option("--chunk-size", flags->chunk_size,
                  "bytes per manifest chunk: 64MiB, ... (1 B..4 GiB; default "
                  "FERRY_ARTIFACT_CHUNK_SIZE, else 64 MiB)");
  cmd->add_option("--signing-key", flags->signing_key,
                  "Ed25519 private key (from `ferry artifact keygen`) to sign the artifact with; "
                  "without it the artifact is published unsigned")
      ->check(CLI::ExistingFile);
  cmd->add_option("--rank", flags->rank, "this worker's rank (published as worker_rank)")
      ->capture_default_str();
  cmd->add_option("--node-rank", flags->node_rank,
                  "the node this cache belongs to (targets pull only their own node_rank)")
      ->capture_default_str();
  cmd->add_option("--max-leases", flags->max_leases,
                  "outstanding PrepareArtifactChunk leases before RESOURCE_EXHAUSTED")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--lease-ttl", flags->lease_ttl, "seconds before an unreleased lease expires")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  AddEngineFlags(cmd, flags->engine, /*serving=*/true);
  AddServeFlags(cmd, flags->serve, /*artifact=*/true);
  cmd->callback([&cli, flags] {
    cli.action = [&cli, flags] { return RunArtifactPublish(cli.flags, *flags); };
  });
}

}  // namespace ferry::cli
