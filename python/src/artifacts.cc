// Compile-cache artifacts: publishing a cache directory and pulling one into a directory.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "absl/strings/str_cat.h"
#include "artifacts/kinds.h"
#include "artifacts/signing.h"
#include "common/env.h"
#include "convert.h"
#include "flows/artifact_puller.h"
#include "flows/artifact_source.h"
#include "status.h"

namespace ferry::python {

namespace py = pybind11;

namespace {

struct ArtifactHandle {
  std::shared_ptr<ClientHandle> client;
  std::shared_ptr<TransferEngine> engine;
  std::unique_ptr<artifacts::ArtifactSource> source;
  void Stop() {
    if (source != nullptr) source->Stop();
  }
  artifacts::ArtifactSource& Get() const {
    if (source == nullptr) {
      throw StatusError(absl::FailedPreconditionError("the artifact source was not started"));
    }
    return *source;
  }
};

SourceIdentity ArtifactIdentity(const py::dict& identity, const std::string& kind) {
  const artifacts::ArtifactKind k = Unwrap(artifacts::ParseArtifactKind(kind));
  py::dict fields(identity);
  fields["mx_source_type"] = static_cast<int>(k.type);
  return IdentityFromDict(fields);
}

}  // namespace

void RegisterArtifacts(py::module_& m) {
  m.def(
      "artifact_kinds", [] { return artifacts::ArtifactKindNames(); },
      "The cache kinds: torch-compile, triton, ...");

  py::class_<ArtifactHandle, std::shared_ptr<ArtifactHandle>>(
      m, "ArtifactSource", "A cache directory's snapshot served to targets until stop().")
      .def("stop", &ArtifactHandle::Stop, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("artifact_id",
                             [](const ArtifactHandle& h) { return h.Get().artifact_id(); })
      .def_property_readonly("mx_source_id",
                             [](const ArtifactHandle& h) { return h.Get().mx_source_id(); })
      .def_property_readonly("worker_id",
                             [](const ArtifactHandle& h) { return h.Get().worker_id(); })
      .def_property_readonly("endpoint", [](const ArtifactHandle& h) { return h.Get().endpoint(); })
      .def_property_readonly("signed",
                             [](const ArtifactHandle& h) { return h.Get().signed_artifact(); })
      .def_property_readonly("total_size",
                             [](const ArtifactHandle& h) { return h.Get().summary().total_size; })
      .def_property_readonly("file_count",
                             [](const ArtifactHandle& h) { return h.Get().summary().file_count; });

  m.def(
      "publish_artifact",
      [](std::shared_ptr<ClientHandle> client, std::shared_ptr<TransferEngine> engine,
         const std::string& directory, const std::string& kind, const py::dict& identity,
         uint32_t node_rank, uint32_t worker_rank, const std::string& accelerator,
         std::optional<std::string> signing_key, int64_t chunk_size, const std::string& worker_id,
         const std::string& worker_listen, const std::string& advertise_host,
         std::optional<double> heartbeat_interval, const std::string& tls_cert,
         const std::string& tls_key, const std::string& tls_client_ca) {
        artifacts::ArtifactSourceOptions o;
        o.client = client->client.get();
        o.engine = engine.get();
        o.identity = ArtifactIdentity(identity, kind);
        o.root = directory;
        o.seal.chunk_size = chunk_size;
        o.seal.mx_source_type = o.identity.mx_source_type();
        o.node_rank = node_rank;
        o.worker_rank = worker_rank;
        o.accelerator = accelerator;
        o.worker_id = worker_id;
        o.endpoint = ServingEndpoint(*client, worker_listen, advertise_host, tls_cert, tls_key,
                                     tls_client_ca);
        o.heartbeat_interval = HeartbeatInterval(heartbeat_interval);
        auto handle = std::make_shared<ArtifactHandle>();
        handle->client = client;
        handle->engine = engine;
        py::gil_scoped_release release;
        std::optional<artifacts::SigningKey> key;
        if (signing_key.has_value()) key = Unwrap(artifacts::SigningKey::Load(*signing_key));
        o.signing_key = key.has_value() ? &*key : nullptr;
        handle->source = Unwrap(artifacts::ArtifactSource::Create(std::move(o)));
        ThrowIfError(handle->source->Start());
        return handle;
      },
      py::arg("client"), py::arg("engine"), py::arg("directory"), py::arg("kind"),
      py::arg("identity"), py::kw_only(), py::arg("node_rank") = 0, py::arg("worker_rank") = 0,
      py::arg("accelerator") = "", py::arg("signing_key") = py::none(),
      py::arg("chunk_size") = artifacts::kDefaultChunkSize, py::arg("worker_id") = "",
      py::arg("worker_listen") = "0.0.0.0:0", py::arg("advertise_host") = "",
      py::arg("heartbeat_interval") = py::none(), py::arg("tls_cert") = "", py::arg("tls_key") = "",
      py::arg("tls_client_ca") = "",
      "Snapshots, seals and (with signing_key) signs `directory`, serves it and publishes READY.");

  m.def(
      "pull_artifact",
      [](std::shared_ptr<ClientHandle> client, std::shared_ptr<TransferEngine> engine,
         const std::string& kind, const py::dict& identity, const std::string& into,
         const std::vector<std::string>& trust, bool allow_unsigned, uint32_t node_rank,
         const std::string& accelerator, const std::string& transport, int max_sources,
         double transfer_timeout, double stall_timeout, std::optional<std::string> state_dir,
         double lock_timeout, double failure_ttl, bool force, const std::string& worker_tls_ca,
         const std::string& worker_tls_client_cert, const std::string& worker_tls_client_key) {
        artifacts::ArtifactPullOptions o;
        o.client = client->client.get();
        o.engine = engine.get();
        o.identity = ArtifactIdentity(identity, kind);
        o.into = into;
        o.allow_unsigned = allow_unsigned;
        o.node_rank = node_rank;
        o.accelerator = accelerator;
        o.transport = Unwrap(ParseTransportKind(transport));
        o.max_sources = max_sources;
        o.transfer_timeout = Seconds(transfer_timeout, "transfer_timeout");
        o.stall_timeout = Seconds(stall_timeout, "stall_timeout");
        o.state_dir = state_dir.value_or(internal::GetEnv("FERRY_ARTIFACT_STATE_DIR")
                                             .value_or(artifacts::kDefaultArtifactStateDir));
        o.lock_timeout = Seconds(lock_timeout, "lock_timeout");
        o.failure_ttl = Seconds(failure_ttl, "failure_ttl");
        o.force = force;
        o.endpoint =
            TargetEndpoint(*client, worker_tls_ca, worker_tls_client_cert, worker_tls_client_key);
        artifacts::ArtifactPullResult r;
        {
          py::gil_scoped_release release;
          artifacts::TrustedKeys keys = Unwrap(artifacts::TrustedKeys::Load(trust));
          o.trusted = &keys;
          r = Unwrap(artifacts::PullArtifact(o));
        }
        py::dict d;
        d["installed"] = r.installed;
        d["into"] = r.installed_into;
        d["artifact_id"] = r.artifact_id;
        d["mx_source_id"] = r.mx_source_id;
        d["source_worker_id"] = r.source_worker_id;
        d["source_endpoint"] = r.source_endpoint;
        d["transport"] = std::string(TransportKindName(r.transport));
        d["trust"] = std::string(artifacts::TrustDecisionName(r.trust));
        d["signer"] = r.signer;
        d["bytes"] = r.bytes;
        d["files"] = r.files;
        d["seconds"] = absl::ToDoubleSeconds(r.total_time);
        return d;
      },
      py::arg("client"), py::arg("engine"), py::arg("kind"), py::arg("identity"), py::arg("into"),
      py::kw_only(), py::arg("trust") = std::vector<std::string>{},
      py::arg("allow_unsigned") = false, py::arg("node_rank") = 0, py::arg("accelerator") = "",
      py::arg("transport") = "auto", py::arg("max_sources") = 3,
      py::arg("transfer_timeout") = 600.0, py::arg("stall_timeout") = 15.0,
      py::arg("state_dir") = py::none(), py::arg("lock_timeout") = 1800.0,
      py::arg("failure_ttl") = 120.0, py::arg("force") = false, py::arg("worker_tls_ca") = "",
      py::arg("worker_tls_client_cert") = "", py::arg("worker_tls_client_key") = "",
      "Pulls the cache of `kind` for `identity`, verifies signature and CRC32Cs, and installs it "
      "into `into` atomically under the node lock (see `ferry artifact pull`).");
}

}  // namespace ferry::python
