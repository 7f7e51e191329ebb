// ferry pull --model NAME [--rank R ...] -o OUT.safetensors: read a model's weights from a peer
// that serves them, verify them, and write them atomically (or keep serving them with
// --then-publish).
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "cli/p2p_flags.h"
#include "common/logging.h"
#include "ferry/publisher.h"
#include "flows/device_landing.h"
#include "flows/weight_puller.h"
#include "nlohmann/json.hpp"
#include "weights/safetensors.h"

namespace ferry::cli {

namespace {

struct PullFlags {
  IdentityFlags identity;
  uint32_t rank = 0;
  std::string output;
  bool json = false;
  std::string progress = "auto";
  TargetFlags target;
  int stripe = 1;  // --stripe
  EngineFlags engine;
  bool then_publish = false;
  bool serve_while_pulling = true;  // --no-serve-while-pulling clears it
  ServeFlags serve;
  std::string device = "cpu";
};

// Progress on stderr: a bar redrawn in place on a terminal, or one line per second.
class ProgressPrinter {
 public:
  ProgressPrinter(bool bar) : bar_(bar), start_(absl::Now()) {}
  void Update(const weights::PullProgress& p) {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    const bool done = p.bytes_done == p.bytes_total;
    if (!bar_ && !done && now - last_ < absl::Seconds(1) && p.bytes_done != 0) return;
    if (!bar_ && p.bytes_done == last_bytes_ && !done) return;
    last_ = now;
    last_bytes_ = p.bytes_done;
    const double seconds = absl::ToDoubleSeconds(now - start_);
    const double fraction = p.bytes_total ? static_cast<double>(p.bytes_done) / p.bytes_total : 1.0;
    const double gbps = seconds > 0 ? p.bytes_done / seconds / 1e9 : 0;
    if (bar_) {
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(fraction * kWidth);
      std::fprintf(stderr, "\r[%s%s] %5.1f%%  %s / %s  %.2f GB/s  %s",
                   std::string(filled, '#').c_str(), std::string(kWidth - filled, ' ').c_str(),
                   fraction * 100, FormatBytes(p.bytes_done).c_str(),
                   FormatBytes(p.bytes_total).c_str(), gbps, p.source.c_str());
      if (done) std::fprintf(stderr, "\n");
    } else {
      std::fprintf(stderr, "progress %llu/%llu bytes from %s\n",
                   static_cast<unsigned long long>(p.bytes_done),
                   static_cast<unsigned long long>(p.bytes_total), p.source.c_str());
    }
    std::fflush(stderr);
  }

 private:
  const bool bar_;
  const absl::Time start_;
  absl::Mutex mu_;
  absl::Time last_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t last_bytes_ ABSL_GUARDED_BY(mu_) = UINT64_MAX;
};

nlohmann::json Summary(const weights::PullResult& r, const std::string& output) {
  nlohmann::json attempts = nlohmann::json::array();
  for (const weights::PullAttempt& a : r.attempts) {
    attempts.push_back({{"mx_source_id", a.mx_source_id},
                        {"worker_id", a.worker_id},
                        {"endpoint", a.endpoint},
                        {"bytes", a.bytes},
                        {"ok", a.status.ok()},
                        {"error", a.status.ok() ? "" : std::string(a.status.message())}});
  }
  const double transfer = absl::ToDoubleSeconds(r.transfer_time);
  return {{"bytes", r.bytes},
          {"tensors", r.model.tensors.size()},
          {"seconds", absl::ToDoubleSeconds(r.total_time)},
          {"transfer_seconds", transfer},
          {"verify_seconds", absl::ToDoubleSeconds(r.verify_time)},
          {"gbps", transfer > 0 ? r.bytes / transfer / 1e9 : 0.0},
          {"transport", std::string(TransportKindName(r.transport))},
          {"path", r.path},
          {"transport_choice", r.transport_choice},
          {"verified", true},
          {"checksum", std::string(weights::ChecksumAlgorithmName(r.checksum_algorithm))},
          {"source",
           {{"mx_source_id", r.mx_source_id},
            {"worker_id", r.source_worker_id},
            {"endpoint", r.source_endpoint},
            {"peer", r.peer}}},
          {"sources_used", r.sources_used},
          {"attempts", attempts},
          {"output", output}};
}

Status RunPull(const GlobalFlags& flags, const PullFlags& pull) {
  FERRY_ASSIGN_OR_RETURN(const int device, ParseDeviceFlag(pull.device));
  if (pull.output.empty() && !pull.then_publish && device < 0) {
    return absl::InvalidArgumentError(
        "ferry pull needs -o OUT.safetensors, --device cuda:N (pull into GPU memory and verify "
        "there) or --then-publish (keep serving the weights)");
  }
  if (!pull.output.empty()) {
    // Fail before moving any bytes if OUT cannot be written.
    const std::filesystem::path out(pull.output);
    const std::filesystem::path dir = out.has_parent_path() ? out.parent_path() : ".";
    if (access(dir.c_str(), W_OK | X_OK) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("-o ", pull.output, ": cannot write in ",
                                                     dir.string(), " (", std::strerror(errno),
                                                     "); pick an existing, writable directory"));
    }
  }
  if (pull.then_publish) BlockStopSignals();
  FERRY_ASSIGN_OR_RETURN(SourceIdentity identity, BuildIdentity(pull.identity));
  TransportKind transport;
  FERRY_ASSIGN_OR_RETURN(
      TransferEngineOptions engine_options,
      BuildEngineOptions(pull.engine, absl::StrCat("ferry pull rank ", pull.rank), &transport));
  if (pull.then_publish && transport != TransportKind::kAuto &&
      engine_options.max_upload_rate == 0 &&
      !(pull.serve_while_pulling && transport == TransportKind::kTcp)) {
    // A fan-out source serves every transport, whatever it read with.
    engine_options.enable_shm = engine_options.enable_ucx = engine_options.enable_tcp = true;
    engine_options.enable_cuda_ipc = true;
  }
  FERRY_ASSIGN_OR_RETURN(ClientCredentials token, ResolveDeploymentToken(flags));
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<MetadataClient> client, ConnectClient(flags));
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<TransferEngine> engine,
                         TransferEngine::Create(engine_options));

  weights::PullOptions options;
  options.client = client.get();
  options.engine = engine.get();
  options.identity = identity;
  options.worker_rank = pull.rank;
  // The target's memory kind: sources must be compatible with it (--accelerator).
  options.accelerator = pull.serve.accelerator;
  // A GPU destination reads host and device sources alike (staged or not): unless
  // --accelerator narrows it, every source is compatible.
  if (device >= 0 && pull.serve.accelerator == "cpu") options.accelerator = "";
  options.target_worker_id = pull.target.target_worker_id;
  FERRY_ASSIGN_OR_RETURN(options.topology, ParseTopology(pull.serve.topology));
  options.transport = transport;
  options.max_sources = pull.target.max_sources;
  options.stripe = std::min(pull.stripe, pull.target.max_sources);
  options.endpoint = WorkerClientFromFlags(pull.target, token);
  options.transfer_timeout = absl::Seconds(pull.target.transfer_timeout);
  options.servable = pull.then_publish;
  options.stall_timeout = absl::Seconds(pull.target.stall_timeout);
  options.device = device;
  // Serving while pulling: only over TCP, whose server refuses ranges not verified yet (shm
  // and UCX reads are one-sided); the record stays INITIALIZING until the pull is complete.
  const bool serve_early = pull.then_publish && pull.serve_while_pulling &&
                           !engine_options.enable_shm && !engine_options.enable_ucx &&
                           !engine_options.enable_cuda_ipc;
  const std::string worker_id =
      pull.serve.worker_id.empty() ? GenerateWorkerId() : pull.serve.worker_id;
  std::unique_ptr<weights::WeightSource> early;
  if (serve_early) {
    options.target_worker_id = worker_id;  // never read from its own record
    options.serve_while_pulling = [&](weights::ServedModel model,
                                      std::shared_ptr<worker::HeldTensors> held) -> Status {
      FERRY_ASSIGN_OR_RETURN(
          early,
          StartWeightSource(flags, pull.serve, pull.engine, client.get(), engine.get(), identity,
                            pull.rank, std::move(model), std::move(held), worker_id));
      return absl::OkStatus();
    };
  }
  const bool tty = isatty(STDERR_FILENO);
  std::unique_ptr<ProgressPrinter> printer;
  if (pull.progress == "bar" || (pull.progress == "auto" && tty && !pull.json)) {
    printer = std::make_unique<ProgressPrinter>(true);
  } else if (pull.progress == "lines") {
    printer = std::make_unique<ProgressPrinter>(false);
  }
  if (printer) {
    options.on_progress = [&printer](const weights::PullProgress& p) { printer->Update(p); };
  }
  FERRY_ASSIGN_OR_RETURN(weights::PullResult result, weights::PullWeights(options));
  const Region* pulled = early != nullptr ? early->model().region.get() : result.model.region.get();

  if (!pull.output.empty()) {
    const void* data = pulled->data();
    std::string host;
    if (device >= 0) {
      // The file is written from a copy in host memory.
      host.resize(result.bytes);
      FERRY_RETURN_IF_ERROR(weights::CopyDeviceToHost(device, data, result.bytes, host.data()));
      data = host.data();
    }
    FERRY_RETURN_IF_ERROR(weights::WriteSafetensorsAtomic(
        pull.output, result.model.tensors, result.model.metadata, data, result.bytes));
  }
  if (!result.transport_choice.empty()) spdlog::info("pull: {}", result.transport_choice);
  if (pull.json) {
    std::cout << Summary(result, pull.output).dump(2) << std::endl;
  } else {
    std::cout << absl::StrFormat(
        "pulled %d tensors (%s) of %s rank %d from worker %s over %s in %.3f s (transfer %.3f "
        "s, %.2f GB/s; verified %s)%s\n",
        result.model.tensors.size(), FormatBytes(result.bytes), identity.model_name(), pull.rank,
        result.source_worker_id, result.path, absl::ToDoubleSeconds(result.total_time),
        absl::ToDoubleSeconds(result.transfer_time),
        absl::ToDoubleSeconds(result.transfer_time) > 0
            ? result.bytes / absl::ToDoubleSeconds(result.transfer_time) / 1e9
            : 0.0,
        weights::ChecksumAlgorithmName(result.checksum_algorithm),
        pull.output.empty() ? "" : absl::StrCat("; wrote ", pull.output));
    std::cout.flush();
  }
  if (!pull.then_publish) return absl::OkStatus();
  if (early != nullptr) {
    FERRY_RETURN_IF_ERROR(early->MarkReady());
    return ServeUntilStopped(*early, pull.serve, engine.get(), identity, pull.rank,
                             "ferry pull --then-publish");
  }
  return ServeModel(flags, pull.serve, pull.engine, client.get(), engine.get(), identity, pull.rank,
                    std::move(result.model), "ferry pull --then-publish");
}

}  // namespace

void AddPullCommand(CLI::App& app, Cli& cli) {
  auto flags = std::make_shared<PullFlags>();
  CLI::App* cmd = app.add_subcommand(
      "pull",
      "Read a model's weights from a peer that serves them (see `ferry publish`): list READY\n"
      "sources of the identity with this rank, try them nearest first (--topology), then\n"
      "in rendezvous order weighted by each source's reported load (at most\n"
      "--max-sources), read every tensor straight from the source's memory, verify each\n"
      "tensor's checksum and write OUT atomically. Nothing is written unless a source\n"
      "delivered verified weights. Exits 1 with what happened at each source otherwise.");
  AddIdentityFlags(cmd, flags->identity);
  cmd->add_option("--rank", flags->rank, "the rank whose shard to pull")->capture_default_str();
  cmd->add_option("-o,--output", flags->output,
                  "where to write the .safetensors file (optional with --device cuda:N)");
  cmd->add_option("--device", flags->device,
                  "where the weights land: cpu, or cuda:N to pull into GPU N's memory and verify "
                  "them there (device to device over CUDA IPC on this host, staged through "
                  "pinned host memory over TCP)")
      ->capture_default_str();
  cmd->add_flag("--json", flags->json,
                "print a JSON summary: bytes, tensors, seconds, transfer_seconds, gbps, "
                "transport, verified, source (the one that delivered most), sources_used, attempts "
                "(every source opened, with the bytes it delivered)");
  cmd->add_option("--progress", flags->progress,
                  "auto (a bar when stderr is a terminal), bar, lines or none")
      ->check(CLI::IsMember({"auto", "bar", "lines", "none"}))
      ->capture_default_str();
  AddTargetFlags(cmd, flags->target, "tensors");
  cmd->add_option("--stripe", flags->stripe,
                  "sources read at once: the pull's pieces are spread over them, faster ones "
                  "taking more; a source that fails is replaced by the next (at most "
                  "--max-sources in all) and only the missing bytes are read")
      ->check(CLI::Range(1, 16))
      ->capture_default_str();
  AddEngineFlags(cmd, flags->engine, /*serving=*/false);
  cmd->add_flag("--then-publish", flags->then_publish,
                "keep the pulled weights in memory and serve them as a new source until "
                "SIGTERM (fan-out); the Serving options apply. Over TCP only (--transport tcp "
                "or --max-upload-rate), it serves each tensor once verified while it still "
                "pulls, as an INITIALIZING record that other ferry targets read from and "
                "ModelExpress clients do not list, then READY");
  cmd->add_flag("!--no-serve-while-pulling", flags->serve_while_pulling,
                "with --then-publish: serve only after the whole pull, as before");
  AddServeFlags(cmd, flags->serve);
  cmd->callback(
      [&cli, flags] { cli.action = [&cli, flags] { return RunPull(cli.flags, *flags); }; });
}

}  // namespace ferry::cli
