// Conversions between Python values and ferry's C++ types, shared by the binding files.
#ifndef FERRY_PYTHON_CONVERT_H_
#define FERRY_PYTHON_CONVERT_H_

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "ferry/metadata_client.h"
#include "ferry/source_identity.h"
#include "ferry/transfer.h"
#include "worker/worker_client.h"
#include "worker/worker_server.h"

namespace ferry::python {

// A dict of SourceIdentity fields (the proto's names; backend_framework may be a name such as
// "vllm" or the enum value; extra_parameters a dict of str). InvalidArgumentError naming an
// unknown key or a value of the wrong type. Validated with ValidateIdentity.
SourceIdentity IdentityFromDict(const pybind11::dict& fields);
pybind11::dict IdentityToDict(const SourceIdentity& identity);

absl::Duration Seconds(double seconds, const char* what);

// A publisher's heartbeat interval: `seconds` when given, else FERRY_HEARTBEAT_INTERVAL (or
// MX_HEARTBEAT_INTERVAL_SECS), else unset (the library's default). The Python layer, like the
// ferry command, is where the environment is read.
std::optional<absl::Duration> HeartbeatInterval(std::optional<double> seconds);

// Transfer engine options from the Python arguments (transports: names, empty: all).
TransferEngineOptions EngineOptionsFrom(const std::string& name,
                                        const std::vector<std::string>& transports,
                                        const std::string& tcp_listen,
                                        const std::string& advertise_host, int tcp_streams,
                                        const std::string& ucx_net_devices,
                                        uint64_t max_upload_rate = 0);

// A metadata client plus the credentials it resolved, which the worker endpoints of sources
// and targets reuse (the deployment token protects both).
struct ClientHandle {
  std::unique_ptr<MetadataClient> client;
  // The deployment token the client sends (token / token_file only), which also protects the
  // worker endpoints it serves and calls.
  ClientCredentials token;
};

// The worker endpoint a source serves: where it listens, the host it advertises, the client's
// deployment token, and TLS files (all empty: plaintext).
worker::WorkerServerOptions ServingEndpoint(const ClientHandle& client, const std::string& listen,
                                            const std::string& advertise_host,
                                            const std::string& tls_cert, const std::string& tls_key,
                                            const std::string& tls_client_ca);

// How a target calls sources' worker endpoints: the client's token, and TLS when a CA or a
// client certificate is given.
worker::WorkerClientOptions TargetEndpoint(const ClientHandle& client, const std::string& tls_ca,
                                           const std::string& tls_cert, const std::string& tls_key);

// Module init helpers, one per binding file.
void RegisterClient(pybind11::module_& m);
void RegisterEngine(pybind11::module_& m);
void RegisterWeights(pybind11::module_& m);
void RegisterArtifacts(pybind11::module_& m);

}  // namespace ferry::python

#endif  // FERRY_PYTHON_CONVERT_H_
