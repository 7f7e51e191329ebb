// Flags shared by `ferry publish`, `ferry pull` and `ferry demo`: the source identity, the
// transfer engine and the worker endpoint.
#ifndef FERRY_CLI_P2P_FLAGS_H_
#define FERRY_CLI_P2P_FLAGS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/string_view.h"
#include "cli/cli.h"
#include "common/stop_signals.h"
#include "ferry/metadata_client.h"
#include "ferry/status.h"
#include "ferry/transfer.h"
#include "flows/weight_source.h"
#include "nlohmann/json.hpp"
#include "worker/worker_client.h"

namespace ferry::cli {

struct IdentityFlags {
  std::string model;
  std::string framework = "unknown";
  uint32_t tp = 1;
  uint32_t pp = 1;
  uint32_t ep = 1;
  std::string dtype;
  std::string quantization;
  std::string revision;
  std::string mx_version;
  std::vector<std::string> extra;  // KEY=VALUE
};

// --model (required), --framework, --tp, --pp, --ep, --dtype, --quantization, --revision,
// --mx-version, --extra KEY=VALUE.
void AddIdentityFlags(CLI::App* cmd, IdentityFlags& flags);
// The weights identity the flags describe. InvalidArgument naming the flag for a bad value.
StatusOr<SourceIdentity> BuildIdentity(const IdentityFlags& flags);

struct EngineFlags {
  std::string transport = "auto";
  std::string data_listen = "0.0.0.0:0";
  std::string advertise_host;
  int tcp_streams = 0;  // 0: the engine's default
  std::string ucx_net_devices;
  bool ucx_without_rdma = false;  // --ucx-without-rdma; implied by --transport ucx
  std::string max_upload_rate;    // --max-upload-rate: bytes per second; "": no cap
};

// --transport, --data-listen, --advertise-host, --tcp-streams, --ucx-net-devices,
// --ucx-without-rdma, --max-upload-rate.
void AddEngineFlags(CLI::App* cmd, EngineFlags& flags, bool serving);
// Engine options: `serving` (publish) enables both transports for "auto"; a target enables
// what it may use. `*transport` receives the parsed --transport. With --max-upload-rate,
// "auto" means TCP only (a cap paces the TCP server; shm and UCX reads are one-sided), and an
// explicit shm or ucx is refused.
// --device: "cpu" (-1), "cuda" (0) or "cuda:N" (N). For a GPU, also checks that the CUDA
// driver loads and lists that device, so that the command fails before doing anything else.
// InvalidArgument naming the flag and the accepted forms; FailedPrecondition naming why CUDA is
// not usable here.
StatusOr<int> ParseDeviceFlag(const std::string& value);

StatusOr<TransferEngineOptions> BuildEngineOptions(const EngineFlags& flags,
                                                   const std::string& name,
                                                   TransportKind* transport);

// The bearer token (or token file) the metadata client would send, for worker endpoints: the
// same deployment token protects both. Only token / token_file are set (empty: none).
StatusOr<ClientCredentials> ResolveDeploymentToken(const GlobalFlags& flags);

// The --ready-file of a serving source (common/ready_file.h): {pid, mx_source_id, worker_id,
// worker_endpoint, worker_port} plus the fields of `extra` (an object).
Status WriteSourceReadyFile(const std::string& path, const std::string& mx_source_id,
                            const std::string& worker_id, const std::string& worker_endpoint,
                            const nlohmann::json& extra);

// How a target tries sources (`ferry pull`, `ferry artifact pull`).
struct TargetFlags {
  int max_sources = 3;
  double transfer_timeout = 300;
  double stall_timeout = 15;
  // --worker-tls-ca, --worker-tls-client-cert, --worker-tls-client-key (tls_ca_file,
  // tls_cert_file, tls_key_file); the token is the deployment's.
  ClientCredentials worker_credentials;
  std::string target_worker_id;
};

// --max-sources, --transfer-timeout (seconds for one source's `what`), --stall-timeout,
// --worker-tls-ca, --worker-tls-client-cert, --worker-tls-client-key, --target-worker-id.
void AddTargetFlags(CLI::App* cmd, TargetFlags& flags, const std::string& what);

// The worker-endpoint client options the flags and the deployment token describe.
worker::WorkerClientOptions WorkerClientFromFlags(const TargetFlags& flags,
                                                  const ClientCredentials& token);

// --topology KEY=VALUE (repeatable): this node's datacenter domains (ModelExpress 0.7.0's
// WorkerMetadata.topology), e.g. --topology rack=r3 --topology block=b1. A source publishes
// them; a target tries sources sharing its narrowest domain first (levels, broad to narrow:
// region, zone, datacenter, block, rack, host, numa).
void AddTopologyFlag(CLI::App* cmd, std::vector<std::string>* values);

// The map the --topology values describe. InvalidArgument naming the value when one is not
// KEY=VALUE with a non-empty KEY, or names a KEY twice.
StatusOr<std::map<std::string, std::string>> ParseTopology(const std::vector<std::string>& values);

// How a process serves weights it holds (`ferry publish`, `ferry pull --then-publish`).
struct ServeFlags {
  std::string worker_listen = "0.0.0.0:0";
  std::string worker_id;
  std::string accelerator = "cpu";
  bool centralized = false;
  double heartbeat_seconds = 0;  // 0: the publisher's default
  std::string ready_file;
  // TLS on the worker endpoint (all empty: plaintext).
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // --topology: published with the record; `ferry pull` also orders its sources by it.
  std::vector<std::string> topology;
};

// The publisher's heartbeat interval: --heartbeat-interval when given, else
// FERRY_HEARTBEAT_INTERVAL (or MX_HEARTBEAT_INTERVAL_SECS), else unset (the library's 30 s).
StatusOr<std::optional<absl::Duration>> HeartbeatInterval(const ServeFlags& flags);

// --worker-listen, --worker-id, --accelerator, --centralized, --heartbeat-interval,
// --ready-file, --worker-tls-cert, --worker-tls-key, --worker-tls-client-ca, --topology.
// `artifact`: for `ferry artifact publish`, without --centralized (weights only) and with the
// accelerator described as the cache's.
void AddServeFlags(CLI::App* cmd, ServeFlags& flags, bool artifact = false);

// Stop signals: internal::BlockStopSignals and internal::WaitForStopSignal (common/stop_signals.h).
using internal::BlockStopSignals;
using internal::WaitForStopSignal;

// Serves `model` (held in `engine`) as worker `rank` of `identity`: starts the worker endpoint,
// publishes READY with heartbeats, writes --ready-file (JSON: pid, mx_source_id, worker_id,
// worker_endpoint, worker_port), then waits for SIGTERM or SIGINT, marks the record STALE and
// returns OK. `what` names the process in messages ("ferry publish").
Status ServeModel(const GlobalFlags& flags, const ServeFlags& serve,
                  const EngineFlags& engine_flags, MetadataClient* client, TransferEngine* engine,
                  const SourceIdentity& identity, uint32_t rank, weights::ServedModel model,
                  absl::string_view what);

// ServeModel's two halves. StartWeightSource creates and starts the source (with `held`: the
// model is still being pulled, see WeightSourceOptions::held; `worker_id` overrides
// --worker-id when not empty); ServeUntilStopped announces it (log, stderr, --ready-file),
// waits for SIGTERM or SIGINT and stops it.
StatusOr<std::unique_ptr<weights::WeightSource>> StartWeightSource(
    const GlobalFlags& flags, const ServeFlags& serve, const EngineFlags& engine_flags,
    MetadataClient* client, TransferEngine* engine, const SourceIdentity& identity, uint32_t rank,
    weights::ServedModel model, std::shared_ptr<worker::HeldTensors> held = nullptr,
    const std::string& worker_id = "");
Status ServeUntilStopped(weights::WeightSource& source, const ServeFlags& serve,
                         TransferEngine* engine, const SourceIdentity& identity, uint32_t rank,
                         absl::string_view what);

}  // namespace ferry::cli

#endif  // FERRY_CLI_P2P_FLAGS_H_
