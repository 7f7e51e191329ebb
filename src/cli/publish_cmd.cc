// ferry publish FILE.safetensors --model NAME ...: serve a model's weights to peers until
// SIGTERM. Also ServeModel, shared with `ferry pull --then-publish`.
#include <signal.h>
#include <unistd.h>

#include <iostream>

#include "absl/strings/str_cat.h"
#include "cli/p2p_flags.h"
#include "common/logging.h"
#include "flows/weight_source.h"
#include "nlohmann/json.hpp"
#include "weights/tensor_checksum.h"

namespace ferry::cli {

namespace {

struct PublishFlags {
  std::string file;
  IdentityFlags identity;
  uint32_t rank = 0;
  EngineFlags engine;
  ServeFlags serve;
  std::string checksum = "xxh3-64";
  std::string device = "cpu";
};

Status RunPublish(const GlobalFlags& flags, const PublishFlags& publish) {
  auto algorithm = weights::ParseChecksumAlgorithm(publish.checksum);
  if (!algorithm.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--checksum: ", algorithm.status().message()));
  }
  FERRY_ASSIGN_OR_RETURN(const int device, ParseDeviceFlag(publish.device));
  BlockStopSignals();
  FERRY_ASSIGN_OR_RETURN(SourceIdentity identity, BuildIdentity(publish.identity));
  TransportKind transport;
  FERRY_ASSIGN_OR_RETURN(
      TransferEngineOptions engine_options,
      BuildEngineOptions(publish.engine, absl::StrCat("ferry publish rank ", publish.rank),
                         &transport));
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<MetadataClient> client, ConnectClient(flags));
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<TransferEngine> engine,
                         TransferEngine::Create(engine_options));
  FERRY_ASSIGN_OR_RETURN(weights::ServedModel model,
                         weights::LoadSafetensors(*engine, publish.file, 2, *algorithm, device));
  return ServeModel(flags, publish.serve, publish.engine, client.get(), engine.get(), identity,
                    publish.rank, std::move(model), "ferry publish");
}

}  // namespace

void AddServeFlags(CLI::App* cmd, ServeFlags& flags, bool artifact) {
  const std::string group = "Serving";
  cmd->add_option("--worker-listen", flags.worker_listen,
                  "HOST:PORT of this worker's gRPC endpoint (port 0: any free port)")
      ->capture_default_str()
      ->group(group);
  cmd->add_option("--worker-id", flags.worker_id,
                  "this worker's id under the source (default: random)")
      ->group(group);
  cmd->add_option("--accelerator", flags.accelerator,
                  artifact ? "the accelerator family the cache was built for, e.g. cuda (targets "
                             "take only compatible sources; \"\" is accepted by all)"
                           : "what the served memory is: cpu for host memory (ferry pull takes "
                             "only sources compatible with its own --accelerator; \"\" accepts "
                             "all)")
      ->capture_default_str()
      ->group(group);
  if (!artifact) {
    cmd->add_flag("--centralized", flags.centralized,
                  "also put the transfer blob and tensor list in the server's record "
                  "(default: endpoints only, as ModelExpress's P2P metadata mode)")
        ->group(group);
  }
  cmd->add_option("--heartbeat-interval", flags.heartbeat_seconds,
                  "seconds between heartbeats (default: FERRY_HEARTBEAT_INTERVAL, else 30)")
      ->check(CLI::PositiveNumber)
      ->group(group);
  cmd->add_option("--worker-tls-cert", flags.tls_cert,
                  "PEM certificate chain: serve the worker endpoint over TLS (with "
                  "--worker-tls-key)")
      ->check(CLI::ExistingFile)
      ->group(group);
  cmd->add_option("--worker-tls-key", flags.tls_key, "PEM private key of --worker-tls-cert")
      ->check(CLI::ExistingFile)
      ->group(group);
  cmd->add_option("--worker-tls-client-ca", flags.tls_client_ca,
                  "PEM CA: the worker endpoint requires client certificates it signed (mutual "
                  "TLS)")
      ->check(CLI::ExistingFile)
      ->group(group);
  AddTopologyFlag(cmd, &flags.topology);
  cmd->add_option("--ready-file", flags.ready_file,
                  "write a JSON object (pid, mx_source_id, worker_id, worker_endpoint, "
                  "worker_port) here once READY")
      ->group(group);
}

StatusOr<std::unique_ptr<weights::WeightSource>> StartWeightSource(
    const GlobalFlags& flags, const ServeFlags& serve, const EngineFlags& engine_flags,
    MetadataClient* client, TransferEngine* engine, const SourceIdentity& identity, uint32_t rank,
    weights::ServedModel model, std::shared_ptr<worker::HeldTensors> held,
    const std::string& worker_id) {
  FERRY_ASSIGN_OR_RETURN(ClientCredentials token, ResolveDeploymentToken(flags));
  weights::WeightSourceOptions options;
  options.client = client;
  options.engine = engine;
  options.identity = identity;
  options.worker_rank = rank;
  options.accelerator = serve.accelerator;
  if (model.region != nullptr && model.region->kind() == MemoryKind::kCuda &&
      serve.accelerator == "cpu") {
    // Weights in GPU memory: say so (the flag's default says host memory), so that ModelExpress
    // GPU targets list this source.
    options.accelerator = "cuda";
  }
  options.worker_id = worker_id.empty() ? serve.worker_id : worker_id;
  options.centralized = serve.centralized;
  options.held = std::move(held);
  FERRY_ASSIGN_OR_RETURN(options.topology, ParseTopology(serve.topology));
  FERRY_ASSIGN_OR_RETURN(options.heartbeat_interval, HeartbeatInterval(serve));
  options.endpoint.listen = serve.worker_listen;
  options.endpoint.advertise_host = engine_flags.advertise_host;
  options.endpoint.token = token.token;
  options.endpoint.token_file = token.token_file;
  options.endpoint.tls_cert = serve.tls_cert;
  options.endpoint.tls_key = serve.tls_key;
  options.endpoint.tls_client_ca = serve.tls_client_ca;
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<weights::WeightSource> source,
                         weights::WeightSource::Create(std::move(options), std::move(model)));
  FERRY_RETURN_IF_ERROR(source->Start());
  return source;
}

Status ServeUntilStopped(weights::WeightSource& source, const ServeFlags& serve,
                         TransferEngine* engine, const SourceIdentity& identity, uint32_t rank,
                         absl::string_view what) {
  const uint64_t bytes = source.model().total_bytes;
  const size_t tensors = source.model().tensors.size();
  std::string transports;
  for (TransportKind k : engine->transports()) {
    absl::StrAppend(&transports, transports.empty() ? "" : ", ", std::string(TransportKindName(k)));
  }
  spdlog::info("{}: serving {} tensors ({} bytes) of {} rank {} as worker {} at {} over {}", what,
               tensors, bytes, identity.model_name(), rank, source.worker_id(), source.endpoint(),
               transports);
  std::cerr << what << ": serving " << identity.model_name() << " rank " << rank << " (" << tensors
            << " tensors, " << FormatBytes(bytes) << ") as worker " << source.worker_id() << " at "
            << source.endpoint() << " over " << transports << "; SIGTERM or Ctrl-C to stop\n";
  if (!serve.ready_file.empty()) {
    FERRY_RETURN_IF_ERROR(WriteSourceReadyFile(serve.ready_file, source.mx_source_id(),
                                               source.worker_id(), source.endpoint(),
                                               {{"tensors", tensors}, {"bytes", bytes}}));
  }
  spdlog::info("{}: {} received; marking the worker STALE", what, WaitForStopSignal());
  source.Stop();
  return absl::OkStatus();
}

Status ServeModel(const GlobalFlags& flags, const ServeFlags& serve,
                  const EngineFlags& engine_flags, MetadataClient* client, TransferEngine* engine,
                  const SourceIdentity& identity, uint32_t rank, weights::ServedModel model,
                  absl::string_view what) {
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<weights::WeightSource> source,
                         StartWeightSource(flags, serve, engine_flags, client, engine, identity,
                                           rank, std::move(model)));
  return ServeUntilStopped(*source, serve, engine, identity, rank, what);
}

void AddPublishCommand(CLI::App& app, Cli& cli) {
  auto flags = std::make_shared<PublishFlags>();
  CLI::App* cmd = app.add_subcommand(
      "publish",
      "Serve a safetensors file's weights to peers: load it into one registered memory arena,\n"
      "checksum every tensor, start this worker's endpoint, publish the worker to the server\n"
      "(READY, with heartbeats) and serve until SIGTERM or Ctrl-C, then mark it STALE and exit\n"
      "0. For several ranks, run one process per rank with its shard file and --rank.");
  cmd->add_option("FILE", flags->file, "the .safetensors file (this rank's shard)")
      ->required()
      ->check(CLI::ExistingFile);
  AddIdentityFlags(cmd, flags->identity);
  cmd->add_option("--rank", flags->rank, "this worker's global rank")->capture_default_str();
  AddEngineFlags(cmd, flags->engine, /*serving=*/true);
  AddServeFlags(cmd, flags->serve);
  cmd->add_option("--checksum", flags->checksum,
                  "the checksum targets verify every tensor against: xxh3-64 (whole tensors), or "
                  "xxh3-64-tree-64k (64 KiB leaves: computed on many cores, and verified on the "
                  "GPU by GPU targets)")
      ->capture_default_str();
  cmd->add_option("--device", flags->device,
                  "where the served weights live: cpu, or cuda:N to load the file into GPU N's "
                  "memory and serve it from there (published with accelerator cuda unless "
                  "--accelerator says otherwise)")
      ->capture_default_str();
  cmd->callback(
      [&cli, flags] { cli.action = [&cli, flags] { return RunPublish(cli.flags, *flags); }; });
}

}  // namespace ferry::cli
