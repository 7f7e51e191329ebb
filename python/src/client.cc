// SourceIdentity, mx_source_id, the metadata client and the publisher.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/byte_size.h"
#include "common/env.h"
#include "common/logging.h"
#include "convert.h"
#include "ferry/publisher.h"
#include "status.h"

namespace ferry::python {

namespace py = pybind11;
namespace p2p = ::model_express::p2p;

namespace {

std::string StrField(const py::handle& value, const std::string& key) {
  if (!py::isinstance<py::str>(value)) {
    throw StatusError(absl::InvalidArgumentError(
        absl::StrCat("identity field ", key, " must be a str, got ",
                     std::string(py::str(value.get_type().attr("__name__"))))));
  }
  return value.cast<std::string>();
}

uint32_t UintField(const py::handle& value, const std::string& key) {
  if (!py::isinstance<py::int_>(value) || py::isinstance<py::bool_>(value)) {
    throw StatusError(
        absl::InvalidArgumentError(absl::StrCat("identity field ", key, " must be an int")));
  }
  const long long v = value.cast<long long>();
  if (v < 0 || v > UINT32_MAX) {
    throw StatusError(absl::InvalidArgumentError(
        absl::StrCat("identity field ", key, " must be 0..4294967295, got ", v)));
  }
  return static_cast<uint32_t>(v);
}

py::dict RefToDict(const SourceInstanceRef& r) {
  py::dict d;
  d["mx_source_id"] = r.mx_source_id();
  d["worker_id"] = r.worker_id();
  d["model_name"] = r.model_name();
  d["worker_rank"] = r.worker_rank();
  d["accelerator"] = r.accelerator();
  d["updated_at"] = r.updated_at();
  d["training_step"] = r.has_training_step() ? py::cast(r.training_step()) : py::none();
  d["layout_signature"] = r.has_layout_signature() ? py::cast(r.layout_signature()) : py::none();
  py::dict topology;
  for (const auto& [k, v] : r.topology()) topology[py::str(k)] = v;
  d["topology"] = topology;
  d["source_load"] = r.has_source_load() ? py::cast(r.source_load()) : py::none();
  return d;
}

std::optional<std::string> NonEmpty(const std::optional<std::string>& s) {
  if (s.has_value() && !s->empty()) return s;
  return std::nullopt;
}

// One ModelExpress TensorDescriptor as Python passes it: (name, addr, size, device_id, dtype).
using DescriptorTuple = std::tuple<std::string, uint64_t, uint64_t, uint32_t, std::string>;

// The record's tensors, read the way ModelExpress's readers do (payload.py
// worker_tensor_descriptors): tensor_source when set, none for an artifact, else the legacy list.
py::list DescriptorsToList(const p2p::WorkerMetadata& w) {
  py::list out;
  if (w.has_artifact_source()) return out;
  const auto& tensors = w.has_tensor_source() ? w.tensor_source().tensors() : w.tensors();
  for (const p2p::TensorDescriptor& t : tensors) {
    py::dict d;
    d["name"] = t.name();
    d["addr"] = t.addr();
    d["size"] = t.size();
    d["device_id"] = t.device_id();
    d["dtype"] = t.dtype();
    out.append(d);
  }
  return out;
}

const char* BackendMetadataName(const p2p::WorkerMetadata& w) {
  switch (w.backend_metadata_case()) {
    case p2p::WorkerMetadata::kNixlMetadata:
      return "nixl";
    case p2p::WorkerMetadata::kTransferEngineSessionId:
      return "transfer_engine";
    default:
      return "none";
  }
}

}  // namespace

SourceIdentity IdentityFromDict(const py::dict& fields) {
  SourceIdentity id;
  id.set_tensor_parallel_size(1);
  id.set_pipeline_parallel_size(1);
  id.set_expert_parallel_size(1);
  for (const auto& [k, v] : fields) {
    const std::string key = py::str(k);
    if (v.is_none()) continue;
    if (key == "model_name") {
      id.set_model_name(StrField(v, key));
    } else if (key == "mx_version") {
      id.set_mx_version(StrField(v, key));
    } else if (key == "mx_source_type") {
      id.set_mx_source_type(static_cast<p2p::MxSourceType>(UintField(v, key)));
    } else if (key == "backend_framework") {
      if (py::isinstance<py::int_>(v)) {
        id.set_backend_framework(static_cast<p2p::BackendFramework>(UintField(v, key)));
      } else {
        StatusOr<p2p::BackendFramework> fw = ParseBackendFramework(StrField(v, key));
        if (!fw.ok()) {
          throw StatusError(absl::InvalidArgumentError(
              absl::StrCat("identity field backend_framework: ", fw.status().message())));
        }
        id.set_backend_framework(*fw);
      }
    } else if (key == "tensor_parallel_size") {
      id.set_tensor_parallel_size(UintField(v, key));
    } else if (key == "pipeline_parallel_size") {
      id.set_pipeline_parallel_size(UintField(v, key));
    } else if (key == "expert_parallel_size") {
      id.set_expert_parallel_size(UintField(v, key));
    } else if (key == "dtype") {
      id.set_dtype(StrField(v, key));
    } else if (key == "quantization") {
      id.set_quantization(StrField(v, key));
    } else if (key == "revision") {
      id.set_revision(StrField(v, key));
    } else if (key == "backend_framework_version") {
      id.set_backend_framework_version(StrField(v, key));
    } else if (key == "torch_version") {
      id.set_torch_version(StrField(v, key));
    } else if (key == "cuda_version") {
      id.set_cuda_version(StrField(v, key));
    } else if (key == "triton_version") {
      id.set_triton_version(StrField(v, key));
    } else if (key == "gpu_arch") {
      id.set_gpu_arch(StrField(v, key));
    } else if (key == "compile_config_digest") {
      id.set_compile_config_digest(StrField(v, key));
    } else if (key == "extra_parameters") {
      if (!py::isinstance<py::dict>(v)) {
        throw StatusError(absl::InvalidArgumentError(
            "identity field extra_parameters must be a dict of str to str"));
      }
      for (const auto& [ek, ev] : v.cast<py::dict>()) {
        const std::string name = StrField(ek, "extra_parameters key");
        (*id.mutable_extra_parameters())[name] =
            StrField(ev, absl::StrCat("extra_parameters[", name, "]"));
      }
    } else {
      throw StatusError(absl::InvalidArgumentError(absl::StrCat(
          "unknown identity field '", key,
          "'; use model_name, backend_framework, tensor_parallel_size, pipeline_parallel_size, "
          "expert_parallel_size, dtype, quantization, revision, mx_version, extra_parameters, "
          "mx_source_type or the cache fields (torch_version, gpu_arch, ...)")));
    }
  }
  ThrowIfError(ValidateIdentity(id));
  return id;
}

py::dict IdentityToDict(const SourceIdentity& id) {
  py::dict d;
  d["model_name"] = id.model_name();
  d["mx_version"] = id.mx_version();
  d["mx_source_type"] = static_cast<int>(id.mx_source_type());
  d["backend_framework"] = static_cast<int>(id.backend_framework());
  d["tensor_parallel_size"] = id.tensor_parallel_size();
  d["pipeline_parallel_size"] = id.pipeline_parallel_size();
  d["expert_parallel_size"] = id.expert_parallel_size();
  d["dtype"] = id.dtype();
  d["quantization"] = id.quantization();
  d["revision"] = id.revision();
  py::dict extra;
  for (const auto& [k, v] : id.extra_parameters()) extra[py::str(k)] = v;
  d["extra_parameters"] = extra;
  d["backend_framework_version"] = id.backend_framework_version();
  d["torch_version"] = id.torch_version();
  d["cuda_version"] = id.cuda_version();
  d["triton_version"] = id.triton_version();
  d["gpu_arch"] = id.gpu_arch();
  d["compile_config_digest"] = id.compile_config_digest();
  return d;
}

absl::Duration Seconds(double seconds, const char* what) {
  if (!std::isfinite(seconds) || seconds < 0) {
    throw StatusError(absl::InvalidArgumentError(
        absl::StrCat(what, " must be a finite number of seconds >= 0, got ", seconds)));
  }
  return absl::Seconds(seconds);
}

std::optional<absl::Duration> HeartbeatInterval(std::optional<double> seconds) {
  if (seconds.has_value()) return Seconds(*seconds, "heartbeat_interval");
  return Unwrap(internal::GetEnvDuration("FERRY_HEARTBEAT_INTERVAL"));
}

worker::WorkerServerOptions ServingEndpoint(const ClientHandle& client, const std::string& listen,
                                            const std::string& advertise_host,
                                            const std::string& tls_cert, const std::string& tls_key,
                                            const std::string& tls_client_ca) {
  worker::WorkerServerOptions o;
  o.listen = listen;
  o.advertise_host = advertise_host;
  o.token = client.token.token;
  o.token_file = client.token.token_file;
  o.tls_cert = tls_cert;
  o.tls_key = tls_key;
  o.tls_client_ca = tls_client_ca;
  return o;
}

worker::WorkerClientOptions TargetEndpoint(const ClientHandle& client, const std::string& tls_ca,
                                           const std::string& tls_cert,
                                           const std::string& tls_key) {
  worker::WorkerClientOptions o;
  static_cast<ClientCredentials&>(o) = client.token;
  o.tls_ca_file = tls_ca;
  o.tls_cert_file = tls_cert;
  o.tls_key_file = tls_key;
  return o;
}

void RegisterClient(py::module_& m) {
  m.def(
      "mx_source_id",
      [](const py::dict& identity) {
        return Unwrap(ComputeMxSourceId(IdentityFromDict(identity)));
      },
      py::arg("identity"),
      "The 16-hex-character mx_source_id of an identity dict, as the server computes it.");
  m.def(
      "canonical_identity",
      [](const py::dict& identity) { return IdentityToDict(IdentityFromDict(identity)); },
      py::arg("identity"), "The identity dict validated and with every field filled in.");
  m.def(
      "init_logging",
      [](const std::string& level) { ThrowIfError(internal::InitLogging(level, "log level")); },
      py::arg("level"), "Sets ferry's log level: trace, debug, info, warn or error.");
  m.def(
      "parse_byte_size",
      [](const std::string& text, const std::string& what) {
        return Unwrap(internal::ParseByteSize(text, what));
      },
      py::arg("text"), py::arg("what") = "size",
      "Bytes from a size such as '64MiB' or '1.5GiB': ferry's one byte-size grammar (units are "
      "powers of 1024). ferry.InvalidArgumentError naming `what` otherwise.");
  m.def(
      "resolve_server_address",
      [](std::optional<std::string> server) { return ResolveServerAddress(NonEmpty(server)); },
      py::arg("server") = py::none(),
      "`server` if given, else FERRY_SERVER, else MX_SERVER_ADDRESS, else localhost:8001.");

  py::class_<ClientHandle, std::shared_ptr<ClientHandle>>(
      m, "MetadataClient",
      "A connection to a ferry-server (or any ModelExpress-compatible server). Credentials not "
      "given come from FERRY_TOKEN_FILE / MX_AUTH_TOKEN_PATH / FERRY_TOKEN and FERRY_TLS_*.")
      .def(py::init([](std::optional<std::string> server, std::optional<std::string> token,
                       std::optional<std::string> token_file, std::optional<std::string> tls_ca,
                       std::optional<std::string> tls_cert, std::optional<std::string> tls_key,
                       double call_timeout, double connect_timeout) {
             MetadataClientOptions o;
             o.server_address = ResolveServerAddress(NonEmpty(server));
             o.token = token.value_or("");
             o.token_file = token_file.value_or("");
             o.tls_ca_file = tls_ca.value_or("");
             o.tls_cert_file = tls_cert.value_or("");
             o.tls_key_file = tls_key.value_or("");
             o.call_timeout = Seconds(call_timeout, "call_timeout");
             o.connect_timeout = Seconds(connect_timeout, "connect_timeout");
             ThrowIfError(FillCredentialsFromEnv(&o));
             auto handle = std::make_shared<ClientHandle>();
             handle->client = Unwrap(MetadataClient::Create(o));
             handle->token.token = o.token;
             handle->token.token_file = o.token_file;
             return handle;
           }),
           py::arg("server") = py::none(), py::kw_only(), py::arg("token") = py::none(),
           py::arg("token_file") = py::none(), py::arg("tls_ca") = py::none(),
           py::arg("tls_cert") = py::none(), py::arg("tls_key") = py::none(),
           py::arg("call_timeout") = 30.0, py::arg("connect_timeout") = 5.0)
      .def_property_readonly("server_address",
                             [](const ClientHandle& h) { return h.client->server_address(); })
      .def(
          "list_sources",
          [](const ClientHandle& h, const py::dict& identity, bool ready_only) {
            ListSourcesRequest request;
            *request.mutable_identity() = IdentityFromDict(identity);
            if (ready_only) request.set_status_filter(p2p::SOURCE_STATUS_READY);
            std::vector<SourceInstanceRef> refs;
            {
              py::gil_scoped_release release;
              refs = Unwrap(h.client->ListSources(request));
            }
            py::list out;
            for (const SourceInstanceRef& r : refs) out.append(RefToDict(r));
            return out;
          },
          py::arg("identity"), py::kw_only(), py::arg("ready_only") = true,
          "The workers publishing `identity` (READY ones unless ready_only=False), newest first.")
      .def(
          "get_metadata",
          [](const ClientHandle& h, const std::string& mx_source_id, const std::string& worker_id) {
            GetMetadataResponse r;
            {
              py::gil_scoped_release release;
              r = Unwrap(h.client->GetMetadata(mx_source_id, worker_id));
            }
            py::dict d;
            d["mx_source_id"] = r.mx_source_id();
            d["worker_id"] = r.worker_id();
            d["worker_rank"] = r.worker().worker_rank();
            d["status"] = p2p::SourceStatus_Name(r.worker().status());
            d["worker_grpc_endpoint"] = r.worker().worker_grpc_endpoint();
            d["identity"] = IdentityToDict(r.identity());
            d["accelerator"] = r.worker().accelerator();
            d["agent_name"] = r.worker().agent_name();
            d["metadata_endpoint"] = r.worker().metadata_endpoint();
            d["backend_metadata"] = BackendMetadataName(r.worker());
            d["nixl_metadata"] = py::bytes(r.worker().nixl_metadata());
            d["transfer_engine_session_id"] = r.worker().transfer_engine_session_id();
            d["tensors"] = DescriptorsToList(r.worker());
            return d;
          },
          py::arg("mx_source_id"), py::arg("worker_id"),
          "One worker's record; NotFoundError if the server holds none. `backend_metadata` "
          "names the record's oneof (\"nixl\", \"transfer_engine\" or \"none\"); `tensors` are "
          "its ModelExpress descriptors (name, addr, size, device_id, dtype).")
      .def(
          "health",
          [](const ClientHandle& h) {
            HealthInfo info;
            {
              py::gil_scoped_release release;
              info = Unwrap(h.client->Health());
            }
            py::dict d;
            d["version"] = info.version;
            d["status"] = info.status;
            d["uptime_seconds"] = info.uptime_seconds;
            return d;
          },
          "The server's version, status and uptime.");

  py::class_<Publisher>(m, "Publisher",
                        "Publishes one worker record, marks it READY and heartbeats until "
                        "stop() (which marks it STALE). `nixl_metadata` (NIXL agent metadata) "
                        "or `transfer_engine_session_id`, with `tensors` as ModelExpress "
                        "descriptors (name, addr, size, device_id, dtype), publish a record "
                        "ModelExpress's NIXL or TransferEngine readers load.")
      .def(
          py::init([](std::shared_ptr<ClientHandle> client, const py::dict& identity,
                      uint32_t worker_rank, const std::string& worker_grpc_endpoint,
                      const std::string& accelerator, const std::string& worker_id,
                      std::optional<double> heartbeat_interval,
                      const std::map<std::string, std::string>& topology,
                      const py::bytes& nixl_metadata, const std::string& transfer_engine_session_id,
                      const std::vector<DescriptorTuple>& tensors, const std::string& agent_name,
                      const std::string& metadata_endpoint) {
            const std::string nixl(nixl_metadata);
            if (!nixl.empty() && !transfer_engine_session_id.empty()) {
              throw StatusError(absl::InvalidArgumentError(
                  "a worker record carries nixl_metadata or transfer_engine_session_id, not "
                  "both (ModelExpress's backend_metadata oneof); pass one"));
            }
            PublisherOptions o;
            o.client = client->client.get();
            o.identity = IdentityFromDict(identity);
            o.worker_id = worker_id;
            o.worker.set_worker_rank(worker_rank);
            o.worker.set_worker_grpc_endpoint(worker_grpc_endpoint);
            o.worker.set_accelerator(accelerator);
            o.worker.mutable_topology()->insert(topology.begin(), topology.end());
            o.worker.set_agent_name(agent_name);
            o.worker.set_metadata_endpoint(metadata_endpoint);
            if (!nixl.empty()) o.worker.set_nixl_metadata(nixl);
            if (!transfer_engine_session_id.empty()) {
              o.worker.set_transfer_engine_session_id(transfer_engine_session_id);
            }
            if (!tensors.empty()) {
              // Written twice, as ModelExpress's centralized publisher does (publish.py): the
              // tensor_source payload and the legacy list older servers read.
              p2p::TensorSourceMetadata* source = o.worker.mutable_tensor_source();
              for (const auto& [name, addr, size, device_id, dtype] : tensors) {
                p2p::TensorDescriptor* t = source->add_tensors();
                t->set_name(name);
                t->set_addr(addr);
                t->set_size(size);
                t->set_device_id(device_id);
                t->set_dtype(dtype);
              }
              *o.worker.mutable_tensors() = source->tensors();
            }
            o.heartbeat_interval = HeartbeatInterval(heartbeat_interval);
            std::unique_ptr<Publisher> p = Unwrap(Publisher::Create(std::move(o)));
            return p;
          }),
          py::arg("client"), py::arg("identity"), py::kw_only(), py::arg("worker_rank") = 0,
          py::arg("worker_grpc_endpoint") = "", py::arg("accelerator") = "",
          py::arg("worker_id") = "", py::arg("heartbeat_interval") = py::none(),
          py::arg("topology") = std::map<std::string, std::string>{},
          py::arg("nixl_metadata") = py::bytes(), py::arg("transfer_engine_session_id") = "",
          py::arg("tensors") = std::vector<DescriptorTuple>(), py::arg("agent_name") = "",
          py::arg("metadata_endpoint") = "", py::keep_alive<1, 2>())
      .def(
          "start", [](Publisher& p) { ThrowIfError(p.Start()); },
          py::call_guard<py::gil_scoped_release>())
      .def("stop", &Publisher::Stop, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("mx_source_id", &Publisher::mx_source_id)
      .def_property_readonly("worker_id", &Publisher::worker_id)
      .def_property_readonly("heartbeat_count", &Publisher::heartbeat_count);
}

}  // namespace ferry::python
