// The transfer engine: regions (with the buffer protocol, so numpy/torch can view them), the
// connection blob, and one-sided reads from a peer.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <tuple>

#include "absl/strings/str_cat.h"
#include "convert.h"
#include "ferry/transfer.h"
#include "status.h"

namespace ferry::python {

namespace py = pybind11;

namespace {

// A region and the engine it belongs to: the engine's core outlives every region anyway, and
// the Python object keeps its engine alive (keep_alive) for clarity.
struct RegionHandle {
  std::unique_ptr<Region> region;
  void Release() { region.reset(); }
  Region& Get() const {
    if (region == nullptr) {
      throw StatusError(absl::FailedPreconditionError("the region was released"));
    }
    return *region;
  }
};

}  // namespace

TransferEngineOptions EngineOptionsFrom(const std::string& name,
                                        const std::vector<std::string>& transports,
                                        const std::string& tcp_listen,
                                        const std::string& advertise_host, int tcp_streams,
                                        const std::string& ucx_net_devices,
                                        uint64_t max_upload_rate) {
  TransferEngineOptions o;
  o.name = name;
  if (!transports.empty()) {
    o.enable_shm = o.enable_tcp = o.enable_ucx = o.enable_cuda_ipc = false;
    for (const std::string& t : transports) {
      const TransportKind kind = Unwrap(ParseTransportKind(t));
      if (kind == TransportKind::kShm) o.enable_shm = true;
      if (kind == TransportKind::kTcp) o.enable_tcp = true;
      if (kind == TransportKind::kUcx) o.enable_ucx = o.ucx_without_rdma = true;
      if (kind == TransportKind::kCudaIpc) o.enable_cuda_ipc = true;
      if (kind == TransportKind::kAuto) {
        o.enable_shm = o.enable_tcp = o.enable_ucx = o.enable_cuda_ipc = true;
      }
    }
  }
  o.tcp_listen = tcp_listen;
  o.advertise_host = advertise_host;
  if (tcp_streams > 0) o.tcp_streams = tcp_streams;
  o.ucx_net_devices = ucx_net_devices;
  o.max_upload_rate = max_upload_rate;
  return o;
}

void RegisterEngine(py::module_& m) {
  py::class_<RegionHandle, std::shared_ptr<RegionHandle>>(
      m, "Region", py::buffer_protocol(),
      "Registered memory. Supports the buffer protocol: memoryview(region), "
      "numpy.frombuffer(region, ...), torch.frombuffer(region, ...).")
      .def_property_readonly("id", [](const RegionHandle& r) { return r.Get().id(); })
      .def_property_readonly(
          "address",
          [](const RegionHandle& r) { return reinterpret_cast<uintptr_t>(r.Get().data()); })
      .def_property_readonly("size", [](const RegionHandle& r) { return r.Get().size(); })
      .def("release", &RegionHandle::Release, py::call_guard<py::gil_scoped_release>(),
           "Deregisters the region (and frees memory the engine allocated). Views of it must "
           "not be used afterwards.")
      .def_buffer([](RegionHandle& r) {
        Region& region = r.Get();
        return py::buffer_info(region.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(region.size())}, {1});
      });

  py::class_<Peer>(m, "Peer", "A connection to one remote engine.")
      .def_property_readonly(
          "transport", [](const Peer& p) { return std::string(TransportKindName(p.transport())); })
      .def_property_readonly("description", &Peer::description)
      .def(
          "read",
          [](Peer& p, const std::vector<std::tuple<uint32_t, uint64_t, uintptr_t, uint64_t>>& ops,
             double timeout) {
            std::vector<ReadOp> batch;
            batch.reserve(ops.size());
            for (const auto& [region, offset, local, length] : ops) {
              batch.push_back(ReadOp{region, offset, reinterpret_cast<void*>(local), length});
            }
            const absl::Duration limit = Seconds(timeout, "timeout");
            py::gil_scoped_release release;
            ThrowIfError(p.Read(std::move(batch), limit));
          },
          py::arg("ops"), py::arg("timeout") = 60.0,
          "Reads (remote_region, remote_offset, local_address, length) ranges one-sided into "
          "local memory; every local range must stay valid during the call.")
      .def("disconnect", &Peer::Disconnect, py::call_guard<py::gil_scoped_release>());

  py::class_<TransferEngine, std::shared_ptr<TransferEngine>>(
      m, "TransferEngine",
      "One per process (per rank): registers memory and reads remote regions one-sided.")
      .def(py::init([](const std::string& name, const std::vector<std::string>& transports,
                       const std::string& tcp_listen, const std::string& advertise_host,
                       int tcp_streams, const std::string& ucx_net_devices,
                       uint64_t max_upload_rate) {
             TransferEngineOptions o =
                 EngineOptionsFrom(name, transports, tcp_listen, advertise_host, tcp_streams,
                                   ucx_net_devices, max_upload_rate);
             py::gil_scoped_release release;
             return std::shared_ptr<TransferEngine>(Unwrap(TransferEngine::Create(o)));
           }),
           py::arg("name") = "python", py::kw_only(),
           py::arg("transports") = std::vector<std::string>{}, py::arg("tcp_listen") = "0.0.0.0:0",
           py::arg("advertise_host") = "", py::arg("tcp_streams") = 0,
           py::arg("ucx_net_devices") = "", py::arg("max_upload_rate") = 0)
      .def(
          "allocate_region",
          [](TransferEngine& e, uint64_t size) {
            py::gil_scoped_release release;
            return std::make_shared<RegionHandle>(RegionHandle{Unwrap(e.AllocateRegion(size))});
          },
          py::arg("size"), py::keep_alive<0, 1>(),
          "Allocates and registers `size` bytes of pre-faulted memory every transport serves.")
      .def(
          "register_region",
          [](TransferEngine& e, uintptr_t address, uint64_t size) {
            py::gil_scoped_release release;
            return std::make_shared<RegionHandle>(
                RegionHandle{Unwrap(e.RegisterRegion(reinterpret_cast<void*>(address), size))});
          },
          py::arg("address"), py::arg("size"), py::keep_alive<0, 1>(),
          "Registers caller memory, which must outlive the region (keep the tensor alive).")
      .def("export_blob", [](const TransferEngine& e) { return py::bytes(e.ExportBlob()); })
      .def(
          "connect",
          [](TransferEngine& e, const py::bytes& blob, const std::string& transport) {
            const TransportKind kind = Unwrap(ParseTransportKind(transport));
            std::string b = blob;
            py::gil_scoped_release release;
            return Unwrap(e.Connect(b, kind));
          },
          py::arg("blob"), py::arg("transport") = "auto", py::keep_alive<0, 1>())
      .def_property_readonly("transports",
                             [](const TransferEngine& e) {
                               std::vector<std::string> out;
                               for (TransportKind k : e.transports()) {
                                 out.emplace_back(TransportKindName(k));
                               }
                               return out;
                             })
      .def("stop", &TransferEngine::Stop, py::call_guard<py::gil_scoped_release>());
}

}  // namespace ferry::python
