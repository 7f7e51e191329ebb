// Publishing a set of named buffers in place, and pulling a source's tensors into one.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "convert.h"
#include "flows/buffers.h"
#include "flows/weight_puller.h"
#include "flows/weight_source.h"
#include "status.h"
#include "weights/dtype.h"
#include "worker/worker_client.h"

namespace ferry::python {

namespace py = pybind11;

namespace {

using BufferTuple =
    std::tuple<std::string, std::string, std::vector<uint64_t>, uintptr_t, uint64_t>;
using SpanTuple = std::tuple<uintptr_t, uint64_t>;

// `span_devices`: per span, -1 for host memory or the GPU ordinal of device memory (a CUDA
// tensor's storage); empty: every span is host memory.
weights::BufferSet MakeBufferSet(const std::vector<BufferTuple>& buffers,
                                 const std::vector<SpanTuple>& spans,
                                 const std::vector<int>& span_devices) {
  if (!span_devices.empty() && span_devices.size() != spans.size()) {
    throw StatusError(absl::InvalidArgumentError(
        absl::StrCat("span_devices has ", span_devices.size(), " entries for ", spans.size(),
                     " spans; give one per span (-1: host memory) or none")));
  }
  weights::BufferSet set;
  for (size_t i = 0; i < spans.size(); ++i) {
    const auto& [address, size] = spans[i];
    set.spans.push_back(weights::MemorySpan{reinterpret_cast<void*>(address), size,
                                            span_devices.empty() ? -1 : span_devices[i]});
  }
  for (const auto& [name, dtype, shape, address, size] : buffers) {
    StatusOr<weights::DType> parsed = weights::ParseDType(dtype);
    if (!parsed.ok()) {
      throw StatusError(absl::InvalidArgumentError(
          absl::StrCat("tensor ", name, ": ", parsed.status().message())));
    }
    set.buffers.push_back(
        weights::NamedBuffer{name, *parsed, shape, reinterpret_cast<void*>(address), size});
  }
  ThrowIfError(weights::ValidateBufferSet(set));
  return set;
}

// A started WeightSource serving caller memory, with what it borrows.
struct SourceHandle {
  std::shared_ptr<ClientHandle> client;
  std::shared_ptr<TransferEngine> engine;
  std::unique_ptr<weights::WeightSource> source;
  std::string mx_source_id;
  std::string worker_id;
  std::string endpoint;
  uint64_t total_bytes = 0;
  size_t regions = 0;
  size_t tensors = 0;
  // Marks the record STALE, closes the endpoint and deregisters the memory, so that the caller
  // may free it afterwards.
  void Stop() {
    if (source != nullptr) source->Stop();
    source.reset();
  }
};

double SecondsOf(absl::Duration d) { return absl::ToDoubleSeconds(d); }

}  // namespace

void RegisterWeights(py::module_& m) {
  m.def(
      "dtypes",
      [] {
        std::vector<std::tuple<std::string, std::string, uint64_t>> out;
        for (const weights::DTypeInfo& d : weights::AllDTypes()) {
          out.emplace_back(std::string(d.name), std::string(d.torch_name), d.size);
        }
        return out;
      },
      "ferry's dtype table (weights/dtype.h), the one list of what ferry moves: "
      "[(safetensors name, torch name, bytes per element), ...], e.g. ('BF16', "
      "'torch.bfloat16', 2). ferry.torch builds its torch mapping from it.");
  py::class_<SourceHandle, std::shared_ptr<SourceHandle>>(
      m, "WeightSource", "Tensors served in place to targets until stop().")
      .def("stop", &SourceHandle::Stop, py::call_guard<py::gil_scoped_release>(),
           "Marks the record STALE, then closes the worker endpoint. Idempotent.")
      .def_property_readonly("serving", [](const SourceHandle& h) { return h.source != nullptr; })
      .def_readonly("mx_source_id", &SourceHandle::mx_source_id)
      .def_readonly("worker_id", &SourceHandle::worker_id)
      .def_readonly("endpoint", &SourceHandle::endpoint)
      .def_property_readonly("total_bytes", [](const SourceHandle& h) { return h.total_bytes; })
      .def_property_readonly("regions", [](const SourceHandle& h) { return h.regions; })
      .def_property_readonly("tensors", [](const SourceHandle& h) { return h.tensors; });

  m.def(
      "serve_buffers",
      [](std::shared_ptr<ClientHandle> client, std::shared_ptr<TransferEngine> engine,
         const py::dict& identity, const std::vector<BufferTuple>& buffers,
         const std::vector<SpanTuple>& spans, uint32_t worker_rank, const std::string& accelerator,
         const std::string& worker_id, const std::string& worker_listen,
         const std::string& advertise_host, bool centralized,
         std::optional<double> heartbeat_interval, int checksum_threads,
         const std::string& tls_cert, const std::string& tls_key, const std::string& tls_client_ca,
         const std::vector<int>& span_devices, const std::string& nixl_agent_name,
         const std::string& nixl_metadata_endpoint) {
        weights::WeightSourceOptions o;
        o.nixl_agent_name = nixl_agent_name;
        o.nixl_metadata_endpoint = nixl_metadata_endpoint;
        o.client = client->client.get();
        o.engine = engine.get();
        o.identity = IdentityFromDict(identity);
        o.worker_rank = worker_rank;
        o.accelerator = accelerator;
        o.worker_id = worker_id;
        o.endpoint = ServingEndpoint(*client, worker_listen, advertise_host, tls_cert, tls_key,
                                     tls_client_ca);
        o.centralized = centralized;
        o.heartbeat_interval = HeartbeatInterval(heartbeat_interval);
        weights::BufferSet set = MakeBufferSet(buffers, spans, span_devices);
        auto handle = std::make_shared<SourceHandle>();
        handle->client = client;
        handle->engine = engine;
        py::gil_scoped_release release;
        weights::ServedModel model =
            Unwrap(weights::ServeBuffers(*engine, set, std::max(1, checksum_threads)));
        handle->total_bytes = model.total_bytes;
        handle->regions = (model.region != nullptr ? 1 : 0) + model.extra_regions.size();
        handle->tensors = model.tensors.size();
        handle->source = Unwrap(weights::WeightSource::Create(std::move(o), std::move(model)));
        ThrowIfError(handle->source->Start());
        handle->mx_source_id = handle->source->mx_source_id();
        handle->worker_id = handle->source->worker_id();
        handle->endpoint = handle->source->endpoint();
        return handle;
      },
      py::arg("client"), py::arg("engine"), py::arg("identity"), py::arg("buffers"),
      py::arg("spans"), py::kw_only(), py::arg("worker_rank") = 0, py::arg("accelerator") = "cpu",
      py::arg("worker_id") = "", py::arg("worker_listen") = "0.0.0.0:0",
      py::arg("advertise_host") = "", py::arg("centralized") = false,
      py::arg("heartbeat_interval") = py::none(), py::arg("checksum_threads") = 2,
      py::arg("tls_cert") = "", py::arg("tls_key") = "", py::arg("tls_client_ca") = "",
      py::arg("span_devices") = std::vector<int>{}, py::arg("nixl_agent_name") = "",
      py::arg("nixl_metadata_endpoint") = "",
      "Registers each span once, checksums every buffer, starts the worker endpoint and "
      "publishes READY. buffers: (name, dtype, shape, address, nbytes); spans: (address, "
      "nbytes); span_devices: per span, -1 (host) or the GPU of device memory; "
      "nixl_agent_name / nixl_metadata_endpoint: a NIXL agent serving the same memory (both or "
      "neither), named in the record and the manifest, with read leases. The memory must "
      "stay alive and unchanged until stop().");

  m.def(
      "pull_into_buffers",
      [](std::shared_ptr<ClientHandle> client, std::shared_ptr<TransferEngine> engine,
         const py::dict& identity, const std::vector<BufferTuple>& buffers,
         const std::vector<SpanTuple>& spans, uint32_t worker_rank, const std::string& accelerator,
         const std::string& transport, int max_sources, double transfer_timeout,
         double stall_timeout, int verify_threads, const std::string& target_worker_id,
         const std::string& worker_tls_ca, const std::string& worker_tls_client_cert,
         const std::string& worker_tls_client_key, int stripe,
         const std::vector<int>& span_devices) {
        weights::PullOptions o;
        o.stripe = std::min(stripe, max_sources);
        o.client = client->client.get();
        o.engine = engine.get();
        o.identity = IdentityFromDict(identity);
        o.worker_rank = worker_rank;
        o.accelerator = accelerator;
        o.transport = Unwrap(ParseTransportKind(transport));
        o.max_sources = max_sources;
        o.transfer_timeout = Seconds(transfer_timeout, "transfer_timeout");
        o.stall_timeout = Seconds(stall_timeout, "stall_timeout");
        o.verify_threads = verify_threads;
        o.target_worker_id = target_worker_id;
        o.endpoint =
            TargetEndpoint(*client, worker_tls_ca, worker_tls_client_cert, worker_tls_client_key);
        weights::BufferSet set = MakeBufferSet(buffers, spans, span_devices);
        weights::PullResult r;
        {
          py::gil_scoped_release release;
          r = Unwrap(weights::PullIntoBuffers(o, set));
        }
        py::dict d;
        d["bytes"] = r.bytes;
        d["tensors"] = set.buffers.size();
        d["seconds"] = SecondsOf(r.total_time);
        d["transfer_seconds"] = SecondsOf(r.transfer_time);
        d["verify_seconds"] = SecondsOf(r.verify_time);
        d["transport"] = std::string(TransportKindName(r.transport));
        d["path"] = r.path;
        d["checksum"] = std::string(weights::ChecksumAlgorithmName(r.checksum_algorithm));
        d["peer"] = r.peer;
        d["mx_source_id"] = r.mx_source_id;
        d["source_worker_id"] = r.source_worker_id;
        d["source_endpoint"] = r.source_endpoint;
        py::list attempts;
        for (const weights::PullAttempt& a : r.attempts) {
          py::dict ad;
          ad["worker_id"] = a.worker_id;
          ad["endpoint"] = a.endpoint;
          ad["bytes"] = a.bytes;
          ad["error"] = a.status.ok() ? py::none() : py::cast(std::string(a.status.message()));
          attempts.append(ad);
        }
        d["attempts"] = attempts;
        py::dict metadata;
        for (const auto& [k, v] : r.model.metadata) metadata[py::str(k)] = v;
        d["metadata"] = metadata;
        return d;
      },
      py::arg("client"), py::arg("engine"), py::arg("identity"), py::arg("buffers"),
      py::arg("spans"), py::kw_only(), py::arg("worker_rank") = 0, py::arg("accelerator") = "cpu",
      py::arg("transport") = "auto", py::arg("max_sources") = 3,
      py::arg("transfer_timeout") = 300.0, py::arg("stall_timeout") = 15.0,
      py::arg("verify_threads") = 2, py::arg("target_worker_id") = "",
      py::arg("worker_tls_ca") = "", py::arg("worker_tls_client_cert") = "",
      py::arg("worker_tls_client_key") = "", py::arg("stripe") = 1,
      py::arg("span_devices") = std::vector<int>{},
      "Pulls a READY source's tensors into the buffers in place and verifies every checksum. "
      "NotFoundError: no source; FailedPreconditionError: the buffers do not match the "
      "source's tensors (nothing moved); UnavailableError: every source tried failed (the "
      "buffers may hold partial data).");

  m.def(
      "worker_serves_ferry",
      [](std::shared_ptr<ClientHandle> client, const std::string& endpoint,
         const std::string& mx_source_id, const std::string& worker_id, double timeout,
         const std::string& worker_tls_ca, const std::string& worker_tls_client_cert,
         const std::string& worker_tls_client_key) {
        worker::WorkerClientOptions o =
            TargetEndpoint(*client, worker_tls_ca, worker_tls_client_cert, worker_tls_client_key);
        o.endpoint = endpoint;
        o.deadline = Seconds(timeout, "timeout");
        py::gil_scoped_release release;
        std::unique_ptr<worker::WorkerClient> worker = Unwrap(worker::WorkerClient::Create(o));
        return Unwrap(worker->ServesFerry(mx_source_id, worker_id));
      },
      py::arg("client"), py::arg("endpoint"), py::arg("mx_source_id"), py::arg("worker_id"),
      py::kw_only(), py::arg("timeout") = 5.0, py::arg("worker_tls_ca") = "",
      py::arg("worker_tls_client_cert") = "", py::arg("worker_tls_client_key") = "",
      "Whether the worker endpoint serves ferry's FerryWorkerService (a ferry source, also one "
      "a NIXL agent serves too) rather than only ModelExpress's WorkerService (False: it answered "
      "UNIMPLEMENTED). Sends the client's token and the worker TLS settings, as a pull does. "
      "Other failures raise (UnavailableError, UnauthenticatedError, ...).");
}

}  // namespace ferry::python
