#include "cli/p2p_flags.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/byte_size.h"
#include "common/env.h"
#include "common/ready_file.h"
#include "cuda/driver.h"

namespace ferry::cli {

namespace p2p = ::model_express::p2p;

void AddIdentityFlags(CLI::App* cmd, IdentityFlags& flags) {
  cmd->add_option("--model", flags.model, "model name (SourceIdentity.model_name)")
      ->required()
      ->group("Identity (must match between sources and targets)");
  const std::string group = "Identity (must match between sources and targets)";
  cmd->add_option("--framework", flags.framework, "vllm, sglang, trt-llm or unknown")
      ->capture_default_str()
      ->group(group);
  cmd->add_option("--tp", flags.tp, "tensor-parallel size")->capture_default_str()->group(group);
  cmd->add_option("--pp", flags.pp, "pipeline-parallel size")->capture_default_str()->group(group);
  cmd->add_option("--ep", flags.ep, "expert-parallel size")->capture_default_str()->group(group);
  cmd->add_option("--dtype", flags.dtype, "weight dtype label, e.g. bfloat16")->group(group);
  cmd->add_option("--quantization", flags.quantization, "quantization label, e.g. fp8")
      ->group(group);
  cmd->add_option("--revision", flags.revision, "model revision, e.g. a commit hash")->group(group);
  cmd->add_option("--mx-version", flags.mx_version, "SourceIdentity.mx_version")->group(group);
  cmd->add_option("--extra", flags.extra, "extra identity parameter KEY=VALUE (repeatable)")
      ->group(group);
}

StatusOr<SourceIdentity> BuildIdentity(const IdentityFlags& flags) {
  SourceIdentity id;
  id.set_model_name(flags.model);
  id.set_mx_source_type(p2p::MX_SOURCE_TYPE_WEIGHTS);
  StatusOr<p2p::BackendFramework> fw = ParseBackendFramework(flags.framework);
  if (!fw.ok())
    return absl::InvalidArgumentError(absl::StrCat("--framework: ", fw.status().message()));
  id.set_backend_framework(*fw);
  id.set_tensor_parallel_size(flags.tp);
  id.set_pipeline_parallel_size(flags.pp);
  id.set_expert_parallel_size(flags.ep);
  id.set_dtype(flags.dtype);
  id.set_quantization(flags.quantization);
  id.set_revision(flags.revision);
  id.set_mx_version(flags.mx_version);
  for (const std::string& kv : flags.extra) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--extra: expected KEY=VALUE, got '", kv, "'"));
    }
    (*id.mutable_extra_parameters())[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return id;
}

void AddEngineFlags(CLI::App* cmd, EngineFlags& flags, bool serving) {
  const std::string group = "Data plane";
  cmd->add_option("--transport", flags.transport,
                  serving ? "transports to serve: auto (CUDA IPC for device memory where a GPU "
                            "driver exists, shared memory, UCX where an RDMA device exists, and "
                            "TCP), cuda_ipc, shm, ucx or tcp"
                          : "transport to read with: auto (CUDA IPC for device memory on this "
                            "host, shared memory for a source on this host, UCX when both ends "
                            "have RDMA, else TCP; the --json report says why), cuda_ipc, shm, "
                            "ucx or tcp")
      ->capture_default_str()
      ->group(group);
  cmd->add_option("--data-listen", flags.data_listen,
                  "HOST:PORT the TCP data listener binds (port 0: any free port)")
      ->capture_default_str()
      ->group(group);
  cmd->add_option("--advertise-host", flags.advertise_host,
                  "host peers dial for this process's endpoints (default: the listen host "
                  "unless it is a wildcard, else this machine's host name)")
      ->group(group);
  if (!serving) {  // streams are opened by the reading side
    cmd->add_option("--tcp-streams", flags.tcp_streams,
                    "TCP connections per source (default: the engine's)")
        ->group(group);
  }
  cmd->add_option("--ucx-net-devices", flags.ucx_net_devices,
                  "UCX network devices, as UCX_NET_DEVICES (e.g. mlx5_0:1, or lo)")
      ->group(group);
  cmd->add_flag("--ucx-without-rdma", flags.ucx_without_rdma,
                "start UCX even without an RDMA device (shared memory between local processes; "
                "--transport ucx implies it). UCX's tcp transport is never used")
      ->group(group);
  cmd->add_option("--max-upload-rate", flags.max_upload_rate,
                  std::string("bytes per second this process serves to all targets together, "
                              "shared in the order their requests arrive (e.g. 100MiB, 1GiB; "
                              "default: no cap). Served over TCP only") +
                      (serving ? "" : "; applies with --then-publish"))
      ->group(group);
}

StatusOr<int> ParseDeviceFlag(const std::string& value) {
  if (value == "cpu") return -1;
  int ordinal = -1;
  if (value == "cuda") {
    ordinal = 0;
  } else if (!absl::StartsWith(value, "cuda:") || !absl::SimpleAtoi(value.substr(5), &ordinal) ||
             ordinal < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--device ", value, ": use cpu, cuda (the first GPU) or cuda:N (GPU N, from 0)"));
  }
  auto driver = internal::cuda::Driver::Default();
  if (!driver.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device ", value, ": ", driver.status().message()));
  }
  if (ordinal >= (*driver)->device_count()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--device ", value, ": this process sees ", (*driver)->device_count(),
                     " GPU(s) (cuda:0..); check CUDA_VISIBLE_DEVICES"));
  }
  return ordinal;
}

StatusOr<TransferEngineOptions> BuildEngineOptions(const EngineFlags& flags,
                                                   const std::string& name,
                                                   TransportKind* transport) {
  FERRY_ASSIGN_OR_RETURN(TransportKind kind, ParseTransportKind(flags.transport));
  *transport = kind;
  TransferEngineOptions options;
  options.name = name;
  const bool all = kind == TransportKind::kAuto;
  options.enable_shm = all || kind == TransportKind::kShm;
  options.enable_ucx = all || kind == TransportKind::kUcx;
  options.enable_tcp = all || kind == TransportKind::kTcp;
  options.enable_cuda_ipc = all || kind == TransportKind::kCudaIpc;
  // Asked for by name: UCX also over shared memory without RDMA. Under auto, only with RDMA.
  options.ucx_without_rdma = flags.ucx_without_rdma || kind == TransportKind::kUcx;
  options.tcp_listen = flags.data_listen;
  options.advertise_host = flags.advertise_host;
  if (flags.tcp_streams > 0) options.tcp_streams = flags.tcp_streams;
  options.ucx_net_devices = flags.ucx_net_devices;
  if (!flags.max_upload_rate.empty()) {
    FERRY_ASSIGN_OR_RETURN(options.max_upload_rate,
                           internal::ParseByteSize(flags.max_upload_rate, "--max-upload-rate"));
  }
  if (options.max_upload_rate > 0) {
    if (kind != TransportKind::kAuto && kind != TransportKind::kTcp) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--max-upload-rate ", flags.max_upload_rate, " with --transport ", flags.transport,
          ": the cap paces the TCP server, and shm, UCX and CUDA IPC reads are one-sided (the "
          "source never sees them); use --transport tcp or auto, or drop the cap"));
    }
    options.enable_shm = options.enable_ucx = options.enable_cuda_ipc = false;
    options.enable_tcp = true;
  }
  FERRY_RETURN_IF_ERROR(options.Validate());
  return options;
}

StatusOr<ClientCredentials> ResolveDeploymentToken(const GlobalFlags& flags) {
  MetadataClientOptions options;
  options.token_file = flags.credentials.token_file;
  FERRY_RETURN_IF_ERROR(FillCredentialsFromEnv(&options));
  ClientCredentials token;
  token.token = options.token;
  token.token_file = options.token_file;
  return token;
}

StatusOr<std::optional<absl::Duration>> HeartbeatInterval(const ServeFlags& flags) {
  if (flags.heartbeat_seconds > 0) return absl::Seconds(flags.heartbeat_seconds);
  return internal::GetEnvDuration("FERRY_HEARTBEAT_INTERVAL");
}

Status WriteSourceReadyFile(const std::string& path, const std::string& mx_source_id,
                            const std::string& worker_id, const std::string& worker_endpoint,
                            const nlohmann::json& extra) {
  nlohmann::json ready = {
      {"pid", getpid()},
      {"mx_source_id", mx_source_id},
      {"worker_id", worker_id},
      {"worker_endpoint", worker_endpoint},
      {"worker_port", std::stoi(worker_endpoint.substr(worker_endpoint.rfind(':') + 1))},
  };
  ready.update(extra);
  return internal::WriteReadyFile(path, ready);
}

void AddTopologyFlag(CLI::App* cmd, std::vector<std::string>* values) {
  cmd->add_option("--topology", *values,
                  "KEY=VALUE: a datacenter domain of this node (region, zone, datacenter, block, "
                  "rack, host, numa); repeatable. Sources publish it; targets try sources "
                  "sharing the narrowest domain first");
}

StatusOr<std::map<std::string, std::string>> ParseTopology(const std::vector<std::string>& values) {
  std::map<std::string, std::string> topology;
  for (const std::string& value : values) {
    const size_t eq = value.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--topology '", value, "' is not KEY=VALUE with a non-empty KEY (e.g. rack=r3)"));
    }
    if (!topology.emplace(value.substr(0, eq), value.substr(eq + 1)).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("--topology names '", value.substr(0, eq), "' twice"));
    }
  }
  return topology;
}

void AddTargetFlags(CLI::App* cmd, TargetFlags& flags, const std::string& what) {
  cmd->add_option("--max-sources", flags.max_sources, "sources to try before giving up")
      ->check(CLI::Range(1, 16))
      ->capture_default_str();
  cmd->add_option("--transfer-timeout", flags.transfer_timeout,
                  "seconds allowed for reading one source's " + what)
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--stall-timeout", flags.stall_timeout,
                  "seconds without a byte arriving before a source is abandoned for the next "
                  "(0: only --transfer-timeout)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--worker-tls-ca", flags.worker_credentials.tls_ca_file,
                  "PEM CA: call the sources' worker endpoints over TLS, trusting this CA")
      ->check(CLI::ExistingFile);
  cmd->add_option("--worker-tls-client-cert", flags.worker_credentials.tls_cert_file,
                  "PEM client certificate for worker endpoints that require one (mutual TLS)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--worker-tls-client-key", flags.worker_credentials.tls_key_file,
                  "PEM private key of --worker-tls-client-cert")
      ->check(CLI::ExistingFile);
  cmd->add_option("--target-worker-id", flags.target_worker_id,
                  "this target's id, which seeds the rendezvous order (default: random)");
}

worker::WorkerClientOptions WorkerClientFromFlags(const TargetFlags& flags,
                                                  const ClientCredentials& token) {
  worker::WorkerClientOptions options;
  static_cast<ClientCredentials&>(options) = flags.worker_credentials;
  options.token = token.token;
  options.token_file = token.token_file;
  return options;
}

}  // namespace ferry::cli
