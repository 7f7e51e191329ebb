// ferry_fault_source: a test-only source that serves one wrong byte. It publishes a weights
// model (`weights FILE`) or a compile cache (`artifact DIR`) exactly as `ferry publish` and
// `ferry artifact publish` do, through the same flows (weights::LoadSafetensors and
// WeightSource; ArtifactSource), but flips the byte at --corrupt-byte of the served memory after
// the checksums were taken, so that what peers read no longer matches what the source announces.
// Targets must detect it (tensor or chunk verification) and fetch those bytes elsewhere.
//
// Built only with FERRY_BUILD_TESTS and never installed: fault injection lives here, in test
// code on the real interfaces, not in hidden flags of the shipped `ferry` binary. It takes the
// subset of `ferry publish`'s flags the tests use, with the same meaning; the ready file has the
// same fields. Serves until SIGTERM or SIGINT, then marks the record STALE and exits 0.
//
//   ferry_fault_source weights m.safetensors --corrupt-byte 77 --model it/m --server H:P ...
//   ferry_fault_source artifact cache/ --corrupt-byte 5 --kind triton --model it/m --server H:P
#include <signal.h>
#include <unistd.h>

#include <cstdint>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "artifacts/kinds.h"
#include "artifacts/signing.h"
#include "common/byte_size.h"
#include "common/ready_file.h"
#include "common/stop_signals.h"
#include "ferry/metadata_client.h"
#include "ferry/source_identity.h"
#include "ferry/status.h"
#include "ferry/transfer.h"
#include "flows/artifact_source.h"
#include "flows/weight_source.h"
#include "nlohmann/json.hpp"

namespace ferry {
namespace {

namespace p2p = ::model_express::p2p;

struct Flags {
  std::string path;  // FILE or DIR
  int64_t corrupt_byte = -1;
  // Identity.
  std::string server;
  std::string checksum = "xxh3-64";
  std::string model;
  uint32_t tp = 1;
  std::string dtype;
  std::string kind;  // artifact only
  // Data plane and serving.
  std::string transport = "auto";
  std::string data_listen = "127.0.0.1:0";
  std::string advertise_host;
  std::string ucx_net_devices;
  std::string worker_listen = "127.0.0.1:0";
  std::string worker_id;
  uint32_t rank = 0;
  double heartbeat_seconds = 1;
  std::string ready_file;
  // Artifact only.
  std::string chunk_size = "64MiB";
  std::string signing_key;
};

SourceIdentity WeightsIdentity(const Flags& f) {
  SourceIdentity id;
  id.set_model_name(f.model);
  id.set_mx_source_type(p2p::MX_SOURCE_TYPE_WEIGHTS);
  id.set_backend_framework(p2p::BACKEND_FRAMEWORK_UNKNOWN);
  id.set_tensor_parallel_size(f.tp);
  id.set_pipeline_parallel_size(1);
  id.set_expert_parallel_size(1);
  id.set_dtype(f.dtype);
  return id;
}

// As `ferry publish --transport T`: a source serves every transport under auto.
StatusOr<TransferEngineOptions> EngineOptions(const Flags& f) {
  FERRY_ASSIGN_OR_RETURN(TransportKind kind, ParseTransportKind(f.transport));
  TransferEngineOptions o;
  o.name = "ferry_fault_source";
  const bool all = kind == TransportKind::kAuto;
  o.enable_shm = all || kind == TransportKind::kShm;
  o.enable_ucx = all || kind == TransportKind::kUcx;
  o.enable_tcp = all || kind == TransportKind::kTcp;
  o.enable_cuda_ipc = all || kind == TransportKind::kCudaIpc;
  o.ucx_without_rdma = kind == TransportKind::kUcx;
  o.tcp_listen = f.data_listen;
  o.advertise_host = f.advertise_host;
  o.ucx_net_devices = f.ucx_net_devices;
  FERRY_RETURN_IF_ERROR(o.Validate());
  return o;
}

worker::WorkerServerOptions Endpoint(const Flags& f) {
  worker::WorkerServerOptions o;
  o.listen = f.worker_listen;
  o.advertise_host = f.advertise_host;
  return o;
}

// Flips the byte at `offset` of `region`; InvalidArgument when it is past `size` bytes of data.
Status Corrupt(const Region& region, uint64_t size, int64_t offset) {
  if (offset < 0 || static_cast<uint64_t>(offset) >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("--corrupt-byte ", offset, " is past the ", size, " bytes served"));
  }
  static_cast<uint8_t*>(region.data())[offset] ^= 0xff;
  return absl::OkStatus();
}

Status WriteReady(const Flags& f, const std::string& mx_source_id, const std::string& worker_id,
                  const std::string& endpoint, const nlohmann::json& extra) {
  if (f.ready_file.empty()) return absl::OkStatus();
  nlohmann::json ready = {
      {"pid", getpid()},
      {"mx_source_id", mx_source_id},
      {"worker_id", worker_id},
      {"worker_endpoint", endpoint},
      {"worker_port", std::stoi(endpoint.substr(endpoint.rfind(':') + 1))},
  };
  ready.update(extra);
  return internal::WriteReadyFile(f.ready_file, ready);
}

void WaitForStop(const char* what) {
  std::cerr << what << ": " << internal::WaitForStopSignal() << " received\n";
}

Status ServeWeights(const Flags& f, MetadataClient* client, TransferEngine* engine) {
  FERRY_ASSIGN_OR_RETURN(weights::ChecksumAlgorithm algorithm,
                         weights::ParseChecksumAlgorithm(f.checksum));
  FERRY_ASSIGN_OR_RETURN(weights::ServedModel model,
                         weights::LoadSafetensors(*engine, f.path, 2, algorithm));
  // The checksums are taken: from here on the served bytes differ from what is announced.
  FERRY_RETURN_IF_ERROR(Corrupt(*model.region, model.total_bytes, f.corrupt_byte));
  weights::WeightSourceOptions options;
  options.client = client;
  options.engine = engine;
  options.identity = WeightsIdentity(f);
  options.worker_rank = f.rank;
  options.worker_id = f.worker_id;
  options.heartbeat_interval = absl::Seconds(f.heartbeat_seconds);
  options.endpoint = Endpoint(f);
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<weights::WeightSource> source,
                         weights::WeightSource::Create(std::move(options), std::move(model)));
  FERRY_RETURN_IF_ERROR(source->Start());
  std::cerr << "ferry_fault_source: serving " << f.model << " rank " << f.rank << " with byte "
            << f.corrupt_byte << " flipped as worker " << source->worker_id() << " at "
            << source->endpoint() << "\n";
  FERRY_RETURN_IF_ERROR(WriteReady(
      f, source->mx_source_id(), source->worker_id(), source->endpoint(),
      {{"tensors", source->model().tensors.size()}, {"bytes", source->model().total_bytes}}));
  WaitForStop("ferry_fault_source");
  source->Stop();
  return absl::OkStatus();
}

Status ServeArtifact(const Flags& f, MetadataClient* client, TransferEngine* engine) {
  FERRY_ASSIGN_OR_RETURN(artifacts::ArtifactKind kind, artifacts::ParseArtifactKind(f.kind));
  artifacts::ArtifactSourceOptions options;
  options.client = client;
  options.engine = engine;
  options.identity = artifacts::ArtifactIdentity(WeightsIdentity(f), kind, {});
  FERRY_ASSIGN_OR_RETURN(const uint64_t chunk,
                         internal::ParseByteSize(f.chunk_size, "--chunk-size"));
  options.seal.chunk_size = static_cast<int64_t>(chunk);
  options.seal.mx_source_type = options.identity.mx_source_type();
  std::optional<artifacts::SigningKey> key;
  if (!f.signing_key.empty()) {
    FERRY_ASSIGN_OR_RETURN(key, artifacts::SigningKey::Load(f.signing_key));
    options.signing_key = &*key;
  }
  options.root = f.path;
  options.worker_rank = f.rank;
  options.worker_id = f.worker_id;
  options.heartbeat_interval = absl::Seconds(f.heartbeat_seconds);
  options.endpoint = Endpoint(f);
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<artifacts::ArtifactSource> source,
                         artifacts::ArtifactSource::Create(std::move(options)));
  // Sealed (and signed): from here on the served bytes differ from the manifest's CRC32Cs.
  FERRY_RETURN_IF_ERROR(Corrupt(source->region(), source->summary().total_size, f.corrupt_byte));
  FERRY_RETURN_IF_ERROR(source->Start());
  std::cerr << "ferry_fault_source: serving artifact " << source->artifact_id() << " with byte "
            << f.corrupt_byte << " flipped as worker " << source->worker_id() << " at "
            << source->endpoint() << "\n";
  const artifacts::SourceSummary& s = source->summary();
  FERRY_RETURN_IF_ERROR(WriteReady(f, source->mx_source_id(), source->worker_id(),
                                   source->endpoint(),
                                   {{"artifact_id", source->artifact_id()},
                                    {"files", s.file_count},
                                    {"chunks", s.chunk_count},
                                    {"bytes", s.total_size},
                                    {"root", source->snapshot().root},
                                    {"signer", key.has_value() ? key->fingerprint() : ""}}));
  WaitForStop("ferry_fault_source");
  source->Stop();
  return absl::OkStatus();
}

void AddCommonFlags(CLI::App* cmd, Flags& f) {
  cmd->add_option("--corrupt-byte", f.corrupt_byte, "offset of the served byte to flip")
      ->required();
  cmd->add_option("--server", f.server, "ferry-server host:port")->required();
  cmd->add_option("--checksum", f.checksum, "weights: xxh3-64 or xxh3-64-tree-64k");
  cmd->add_option("--model", f.model, "model name")->required();
  cmd->add_option("--tp", f.tp, "tensor-parallel size");
  cmd->add_option("--dtype", f.dtype, "dtype label");
  cmd->add_option("--rank", f.rank, "worker rank");
  cmd->add_option("--transport", f.transport, "auto, shm, ucx or tcp");
  cmd->add_option("--data-listen", f.data_listen, "TCP data listener");
  cmd->add_option("--advertise-host", f.advertise_host, "host peers dial");
  cmd->add_option("--ucx-net-devices", f.ucx_net_devices, "UCX_NET_DEVICES");
  cmd->add_option("--worker-listen", f.worker_listen, "worker endpoint");
  cmd->add_option("--worker-id", f.worker_id, "worker id (default: random)");
  cmd->add_option("--heartbeat-interval", f.heartbeat_seconds, "seconds between heartbeats");
  cmd->add_option("--ready-file", f.ready_file, "JSON written once READY");
}

int Main(int argc, char** argv) {
  // Only the main thread's sigwait receives the stop signals: block them before any thread.
  internal::BlockStopSignals();

  CLI::App app{"A test-only ferry source that serves one flipped byte"};
  app.require_subcommand(1);
  Flags f;
  CLI::App* weights_cmd = app.add_subcommand("weights", "serve a safetensors file");
  weights_cmd->add_option("FILE", f.path, "the .safetensors file")->required();
  AddCommonFlags(weights_cmd, f);
  CLI::App* artifact_cmd = app.add_subcommand("artifact", "serve a compile-cache directory");
  artifact_cmd->add_option("DIR", f.path, "the cache directory")->required();
  AddCommonFlags(artifact_cmd, f);
  artifact_cmd->add_option("--kind", f.kind, "cache kind")->required();
  artifact_cmd->add_option("--chunk-size", f.chunk_size, "bytes per manifest chunk");
  artifact_cmd->add_option("--signing-key", f.signing_key, "Ed25519 private key");
  CLI11_PARSE(app, argc, argv);

  Status s = [&]() -> Status {
    MetadataClientOptions client_options;
    client_options.server_address = f.server;
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<MetadataClient> client,
                           MetadataClient::Create(client_options));
    FERRY_ASSIGN_OR_RETURN(TransferEngineOptions engine_options, EngineOptions(f));
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<TransferEngine> engine,
                           TransferEngine::Create(engine_options));
    return weights_cmd->parsed() ? ServeWeights(f, client.get(), engine.get())
                                 : ServeArtifact(f, client.get(), engine.get());
  }();
  if (!s.ok()) {
    std::cerr << "ferry_fault_source: " << s << "\n";
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace ferry

int main(int argc, char** argv) { return ferry::Main(argc, argv); }
