#include "transfer/ucx/ucx_transport.h"

#include <ucp/api/ucp.h>
#include <uct/api/uct.h>

#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "common/pages.h"
#include "cuda/driver.h"
#include "transfer/ucx/ucx_handles.h"
#include "transfer/ucx/ucx_peer.h"
#include "transfer/ucx/ucx_progress.h"

namespace ferry::internal {

namespace {

// The memory domains of UCT's "ib" component (one per HCA). With `cuda`, only those that can
// register CUDA memory (GPUDirect RDMA: nvidia-peermem or DMA-BUF), which takes opening each.
std::vector<std::string> IbDomains(bool cuda) {
  uct_component_h* components = nullptr;
  unsigned count = 0;
  if (uct_query_components(&components, &count) != UCS_OK) return {};
  std::vector<std::string> hcas;
  for (unsigned i = 0; i < count; ++i) {
    uct_component_attr_t attr = {};
    attr.field_mask = UCT_COMPONENT_ATTR_FIELD_NAME | UCT_COMPONENT_ATTR_FIELD_MD_RESOURCE_COUNT;
    if (uct_component_query(components[i], &attr) != UCS_OK) continue;
    if (std::string(attr.name) != "ib" || attr.md_resource_count == 0) continue;
    std::vector<uct_md_resource_desc_t> mds(attr.md_resource_count);
    attr.field_mask = UCT_COMPONENT_ATTR_FIELD_MD_RESOURCES;
    attr.md_resources = mds.data();
    if (uct_component_query(components[i], &attr) != UCS_OK) continue;
    for (const auto& md : mds) {
      if (cuda) {
        uct_md_config_t* config = nullptr;
        if (uct_md_config_read(components[i], nullptr, nullptr, &config) != UCS_OK) continue;
        uct_md_h handle = nullptr;
        const ucs_status_t opened = uct_md_open(components[i], md.md_name, config, &handle);
        uct_config_release(config);
        if (opened != UCS_OK) continue;
        uct_md_attr_t md_attr = {};
        const bool registers = uct_md_query(handle, &md_attr) == UCS_OK &&
                               (md_attr.cap.reg_mem_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
        uct_md_close(handle);
        if (!registers) continue;
      }
      hcas.emplace_back(md.md_name);
    }
  }
  uct_release_component_list(components);
  return hcas;
}

// Whether `options` (ucx_transports, ucx_net_devices) let UCX use one of `hcas`. UCX has no query
// for "the transports my context uses", so this mirrors the two settings we pass it.
bool AllowsRdma(const TransferEngineOptions& options, const std::vector<std::string>& hcas) {
  if (hcas.empty()) return false;
  const std::string tls = absl::AsciiStrToLower(options.ucx_transports);
  if (!tls.empty() && tls[0] != '^' && tls != "all") {
    bool any = false;
    for (absl::string_view tl : absl::StrSplit(tls, ',')) {
      for (absl::string_view rdma_tl : {"rc", "ud", "dc", "ib"}) {
        if (absl::StartsWith(tl, rdma_tl)) any = true;
      }
    }
    if (!any) return false;
  }
  const std::string& devs = options.ucx_net_devices;
  if (devs.empty() || devs == "all") return true;
  for (absl::string_view dev : absl::StrSplit(devs, ',')) {
    const absl::string_view name = dev.substr(0, dev.find(':'));
    for (const auto& hca : hcas) {
      if (name == hca) return true;
    }
  }
  return false;
}

}  // namespace

// Whether this context may use an RDMA device: an InfiniBand/RoCE memory domain exists and
// neither NET_DEVICES nor TLS rules it out.
bool UcxRdmaAvailable(const TransferEngineOptions& options) {
  return AllowsRdma(options, IbDomains(/*cuda=*/false));
}

bool UcxRdmaRegistersCuda(const TransferEngineOptions& options) {
  return AllowsRdma(options, IbDomains(/*cuda=*/true));
}

bool UcxSupportsCuda(ucp_context_h context) {
  ucp_context_attr_t attr = {};
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  if (ucp_context_query(context, &attr) != UCS_OK) return false;
  return (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
}

StatusOr<std::string> UcxTlsSetting(const std::string& requested) {
  const std::string tls = absl::AsciiStrToLower(absl::StripAsciiWhitespace(requested));
  if (tls.empty() || tls == "all") return std::string("^tcp");
  const bool negated = tls[0] == '^';
  std::vector<std::string> names = absl::StrSplit(negated ? tls.substr(1) : tls, ',');
  for (const std::string& name : names) {
    if (name == "tcp" || name == "all") {
      if (negated) return tls;  // already excludes tcp ("^tcp,...")
      return absl::InvalidArgumentError(absl::StrCat(
          "ucx_transports \"", requested,
          "\" names UCX's tcp transport, which ferry refuses: it emulates one-sided reads in "
          "software and serves any address to whoever connects to its port, without "
          "authentication; use ferry's own tcp transport (--transport tcp) instead"));
    }
  }
  return negated ? absl::StrCat(tls, ",tcp") : tls;
}

namespace {

class UcxTransport final : public Transport {
 public:
  static StatusOr<std::unique_ptr<Transport>> Create(const TransferEngineOptions& options,
                                                     const UcxTuning& tuning);
  ~UcxTransport() override;

  TransportKind kind() const override { return TransportKind::kUcx; }
  StatusOr<Allocation> Allocate(uint64_t bytes, bool prefault) override;
  void Free(const Allocation& allocation) override;
  Status AddRegion(uint32_t id, void* data, uint64_t size, MemoryKind kind,
                   const Allocation* allocation) override;
  void RemoveRegion(uint32_t id) override;
  void Describe(ferry::v1::TransferBlob* blob) const override;
  Status Reaches(const ferry::v1::TransferBlob& remote, bool same_host) const override;
  Status Serves(const ferry::v1::RegionInfo& region) const override;
  bool Writes(MemoryKind kind) const override {
    return kind == MemoryKind::kHost || (kind == MemoryKind::kCuda && device_reads_);
  }
  StatusOr<std::unique_ptr<PeerConnection>> Connect(const ferry::v1::TransferBlob& remote,
                                                    const std::string& description) override;
  void Stop() override;

 private:
  // One registration of device memory: the part of a region inside one allocation.
  struct DevicePiece {
    uint64_t offset = 0;  // in the region
    uint64_t length = 0;
    ucx::MemHandle memh;
    std::string rkey;
  };
  struct RegionEntry {
    ucp_mem_h memh = nullptr;
    std::optional<ucx::MemHandle> owned;  // set when we mapped caller memory ourselves
    std::string rkey;
    std::vector<DevicePiece> device;  // device memory: one per allocation, instead of the above
  };

  UcxTransport(TransferEngineOptions options, std::shared_ptr<ucx::Context> context,
               ucx::Worker worker, std::string address, bool rdma)
      : options_(std::move(options)),
        context_(std::move(context)),
        worker_(std::move(worker)),
        address_(std::move(address)),
        rdma_(rdma) {}

  // Decides what device memory this transport serves and reads into (UcxTuning::device_memory).
  void SetUpDeviceMemory(const std::optional<UcxDeviceMemory>& stand_in);
  // Registers device region `id` allocation by allocation; a region that cannot be registered
  // is not served (logged; targets stage it through host memory instead).
  Status AddDeviceRegion(uint32_t id, void* data, uint64_t size);

  const TransferEngineOptions options_;
  // Declared first so it is destroyed last (peers may still hold it).
  std::shared_ptr<ucx::Context> context_;
  ucx::Worker worker_;  // the source worker; driven only by progress_ once started
  const std::string address_;
  const bool rdma_;
  std::unique_ptr<ucx::ProgressThread> progress_;  // null when tuning.progress_thread is false
  // Device memory (GPUDirect RDMA): how it is registered, whether this side serves it and
  // whether it reads into it, and why not (for Serves' messages). Set once in Create.
  std::optional<UcxDeviceMemory> device_;
  bool device_serves_ = false;
  bool device_reads_ = false;
  std::string device_why_not_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint32_t, RegionEntry> regions_ ABSL_GUARDED_BY(mu_);
  // Allocations not yet freed, unmapped by the destructor if the engine did not.
  absl::flat_hash_map<void*, ucp_mem_h> allocations_ ABSL_GUARDED_BY(mu_);
};

StatusOr<std::unique_ptr<Transport>> UcxTransport::Create(const TransferEngineOptions& options,
                                                          const UcxTuning& tuning) {
  // Shared memory transports only advertise peer-failure detection (which our endpoints
  // require) with *_ERROR_HANDLING=y; without it UCX would pick TCP between local processes.
  FERRY_ASSIGN_OR_RETURN(
      ucx::Config config,
      ucx::ReadConfig(
          {{"MM_ERROR_HANDLING", "y"},
           {"KEEPALIVE_INTERVAL",
            absl::StrCat(absl::ToInt64Milliseconds(tuning.keepalive_interval), "ms")}}));
  if (!options.ucx_net_devices.empty()) {
    const ucs_status_t st =
        ucp_config_modify(config.get(), "NET_DEVICES", options.ucx_net_devices.c_str());
    if (st != UCS_OK) {
      return ucx::UcsError("ucp_config_modify(NET_DEVICES)", st,
                           absl::StrCat("ucx_net_devices \"", options.ucx_net_devices, "\""));
    }
  }
  {
    FERRY_ASSIGN_OR_RETURN(const std::string tls, UcxTlsSetting(options.ucx_transports));
    const ucs_status_t st = ucp_config_modify(config.get(), "TLS", tls.c_str());
    if (st != UCS_OK) {
      return ucx::UcsError("ucp_config_modify(TLS)", st,
                           absl::StrCat("ucx_transports \"", options.ucx_transports, "\""));
    }
  }

  for (const auto& [name, value] : tuning.extra_config) {
    if (absl::AsciiStrToUpper(name) == "TLS") {
      FERRY_RETURN_IF_ERROR(UcxTlsSetting(value).status());
    }
    const ucs_status_t st = ucp_config_modify(config.get(), name.c_str(), value.c_str());
    if (st != UCS_OK) return ucx::UcsError(absl::StrCat("ucp_config_modify(", name, ")"), st);
  }

  ucp_params_t params = {};
  params.field_mask =
      UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = 1;  // target connections create workers on other threads
  params.name = "ferry";
  auto context = ucx::Context::Create(config.get(), params);
  if (!context.ok()) {
    return absl::Status(context.status().code(),
                        absl::StrCat("UCX transport: ", context.status().message(),
                                     "; check ucx_net_devices / ucx_transports"));
  }
  FERRY_ASSIGN_OR_RETURN(ucx::Worker worker,
                         ucx::CreateWorker((*context)->get(), UCS_THREAD_MODE_SINGLE));
  std::string address;
  {
    FERRY_ASSIGN_OR_RETURN(ucx::WorkerAddress addr, ucx::WorkerAddress::Get(worker.get()));
    address = addr.bytes();
  }
  std::unique_ptr<UcxTransport> t(new UcxTransport(options, *std::move(context), std::move(worker),
                                                   std::move(address), UcxRdmaAvailable(options)));
  t->SetUpDeviceMemory(tuning.device_memory);
  if (tuning.progress_thread) {
    FERRY_ASSIGN_OR_RETURN(t->progress_, ucx::ProgressThread::Start(t->worker_.get()));
  }
  return std::unique_ptr<Transport>(std::move(t));
}

UcxTransport::~UcxTransport() {
  Stop();
  absl::MutexLock lock(&mu_);
  regions_.clear();  // unmaps what we mapped
  for (auto& [data, memh] : allocations_) ucx::MemHandle(context_->get(), memh).Reset();
  allocations_.clear();
}

void UcxTransport::Stop() {
  if (progress_ != nullptr) progress_->Stop();
}

StatusOr<Allocation> UcxTransport::Allocate(uint64_t bytes, bool prefault) {
  if (bytes == 0) return absl::InvalidArgumentError("UCX Allocate: bytes must be > 0");
  FERRY_ASSIGN_OR_RETURN(ucx::MemHandle memh, ucx::MemHandle::Map(context_->get(), nullptr, bytes));
  FERRY_ASSIGN_OR_RETURN(void* data, memh.address());
  // Without `prefault` the caller faults pages in itself (a pull prepares them beside the
  // transfer); an RDMA registration pins, and so faults in, every page anyway.
  if (prefault) {
    Status faulted = FaultInForWriting(data, bytes);
    if (!faulted.ok()) {
      return Status(faulted.code(),
                    absl::StrCat("UCX Allocate of ", bytes, " bytes: ", faulted.message(),
                                 "; free memory or allocate less at once"));
    }
  }
  Allocation a;
  a.data = data;
  a.size = bytes;
  a.handle = memh.release();
  absl::MutexLock lock(&mu_);
  allocations_[a.data] = static_cast<ucp_mem_h>(a.handle);
  return a;
}

void UcxTransport::Free(const Allocation& allocation) {
  {
    absl::MutexLock lock(&mu_);
    if (allocations_.erase(allocation.data) == 0) return;  // not ours, or freed already
  }
  ucx::MemHandle(context_->get(), static_cast<ucp_mem_h>(allocation.handle)).Reset();
}

void UcxTransport::SetUpDeviceMemory(const std::optional<UcxDeviceMemory>& stand_in) {
  if (stand_in.has_value()) {
    device_ = stand_in;
    device_serves_ = device_reads_ = true;
    return;
  }
  if (!UcxSupportsCuda(context_->get())) {
    device_why_not_ = "the UCX loaded here has no CUDA support";
    return;
  }
  auto driver = cuda::Driver::Default();
  auto query = driver.ok() ? cuda::DriverAllocationQuery(**driver)
                           : StatusOr<std::unique_ptr<cuda::AllocationQuery>>(driver.status());
  if (!query.ok()) {
    device_why_not_ = absl::StrCat("UCX lists CUDA memory, but ", query.status().message());
    return;
  }
  device_ = UcxDeviceMemory{std::shared_ptr<const cuda::AllocationQuery>(std::move(*query)),
                            UCS_MEMORY_TYPE_CUDA};
  device_reads_ = true;
  device_serves_ = rdma_ && UcxRdmaRegistersCuda(options_);
  if (!rdma_) {
    device_why_not_ = "UCX lists CUDA memory, but no RDMA device is available";
  } else if (!device_serves_) {
    // UCX then still maps device memory, on its CUDA transports only, which a remote NIC cannot
    // read: the target's gets would fail instead of falling back to staging.
    device_why_not_ =
        "UCX lists CUDA memory, but no RDMA device here can register it (load nvidia-peermem, "
        "or use a kernel and driver with DMA-BUF)";
  }
}

Status UcxTransport::AddDeviceRegion(uint32_t id, void* data, uint64_t size) {
  if (!device_serves_) return absl::OkStatus();  // Serves says why on the target
  auto not_served = [&](const Status& s) {
    spdlog::warn(
        "ucx: device region {} is not served over UCX (targets stage it through host "
        "memory instead): {}",
        id, s.message());
    return absl::OkStatus();
  };
  auto pieces = cuda::FindAllocationPieces(reinterpret_cast<uint64_t>(data), size,
                                           *device_->allocations, /*require_exportable=*/false);
  if (!pieces.ok()) return not_served(pieces.status());
  RegionEntry entry;
  for (const cuda::AllocationPiece& piece : *pieces) {
    if (!piece.allocation.rdma_capable) {
      return not_served(absl::FailedPreconditionError(
          absl::StrCat("the allocation at 0x", absl::Hex(piece.allocation.base),
                       " is not GPUDirect RDMA capable (cuMemCreate memory needs "
                       "allocFlags.gpuDirectRDMACapable)")));
    }
    auto memh = ucx::MemHandle::Map(context_->get(), static_cast<char*>(data) + piece.region_offset,
                                    piece.length, device_->memory_type);
    if (!memh.ok()) {
      return not_served(Status(memh.status().code(),
                               absl::StrCat(memh.status().message(),
                                            " (registering device memory for GPUDirect RDMA "
                                            "needs the nvidia-peermem module or DMA-BUF)")));
    }
    auto rkey = ucx::PackRkey(context_->get(), memh->get());
    if (!rkey.ok()) return not_served(rkey.status());
    entry.device.push_back({piece.region_offset, piece.length, *std::move(memh), *std::move(rkey)});
  }
  absl::MutexLock lock(&mu_);
  if (regions_.contains(id)) {
    return absl::AlreadyExistsError(absl::StrCat("UCX region ", id, " is already registered"));
  }
  regions_.emplace(id, std::move(entry));
  return absl::OkStatus();
}

Status UcxTransport::AddRegion(uint32_t id, void* data, uint64_t size, MemoryKind kind,
                               const Allocation* allocation) {
  // Device memory is served with GPUDirect RDMA only, registered allocation by allocation.
  if (kind == MemoryKind::kCuda) return AddDeviceRegion(id, data, size);
  if (kind != MemoryKind::kHost) return absl::OkStatus();
  RegionEntry entry;
  if (allocation != nullptr && allocation->handle != nullptr) {
    entry.memh = static_cast<ucp_mem_h>(allocation->handle);
  } else {
    auto mapped = ucx::MemHandle::Map(context_->get(), data, size);
    if (!mapped.ok()) {
      return absl::Status(mapped.status().code(),
                          absl::StrCat("UCX region ", id, ": ", mapped.status().message()));
    }
    entry.memh = mapped->get();
    entry.owned.emplace(std::move(*mapped));
  }
  auto rkey = ucx::PackRkey(context_->get(), entry.memh);
  if (!rkey.ok()) {
    return absl::Status(rkey.status().code(),
                        absl::StrCat("UCX region ", id, ": ", rkey.status().message()));
  }
  entry.rkey = *std::move(rkey);
  absl::MutexLock lock(&mu_);
  if (regions_.contains(id)) {
    return absl::AlreadyExistsError(absl::StrCat("UCX region ", id, " is already registered"));
  }
  regions_.emplace(id, std::move(entry));
  return absl::OkStatus();
}

void UcxTransport::RemoveRegion(uint32_t id) {
  std::optional<RegionEntry> entry;
  {
    absl::MutexLock lock(&mu_);
    auto it = regions_.find(id);
    if (it == regions_.end()) return;
    entry.emplace(std::move(it->second));
    regions_.erase(it);
  }
  // A software read UCX is serving from this memory right now finishes before we return.
  if (progress_ != nullptr) progress_->Barrier();
  entry.reset();  // unmaps caller memory we mapped; allocations stay mapped until Free
}

Status UcxTransport::Reaches(const ferry::v1::TransferBlob& remote, bool same_host) const {
  if (same_host || (rdma_ && remote.ucx().rdma())) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "ucx: the peer is on another host and RDMA is not on both ends (here: ", rdma_ ? "yes" : "no",
      ", the peer: ", remote.ucx().rdma() ? "yes" : "no", ")"));
}

Status UcxTransport::Serves(const ferry::v1::RegionInfo& region) const {
  if (region.kind() == ferry::v1::MEMORY_KIND_CUDA && region.ucx_pieces().empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "ucx: region ", region.id(),
        " is device memory, which ferry reads over UCX only with GPUDirect RDMA, and the peer "
        "does not serve it so",
        device_why_not_.empty() ? "" : absl::StrCat(" (here: ", device_why_not_, ")"),
        "; device memory is staged through host memory instead"));
  }
  if (region.kind() == ferry::v1::MEMORY_KIND_CUDA) return absl::OkStatus();
  if (region.ucx_rkey().empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("ucx: the peer's UCX does not serve region ", region.id()));
  }
  return absl::OkStatus();
}

void UcxTransport::Describe(ferry::v1::TransferBlob* blob) const {
  blob->mutable_ucx()->set_worker_address(address_);
  blob->mutable_ucx()->set_rdma(rdma_);
  absl::MutexLock lock(&mu_);
  for (auto& region : *blob->mutable_regions()) {
    auto it = regions_.find(region.id());
    if (it == regions_.end()) continue;
    if (it->second.device.empty()) {
      region.set_ucx_rkey(it->second.rkey);
      continue;
    }
    for (const DevicePiece& piece : it->second.device) {
      ferry::v1::UcxPiece* out = region.add_ucx_pieces();
      out->set_offset(piece.offset);
      out->set_length(piece.length);
      out->set_rkey(piece.rkey);
    }
  }
}

StatusOr<std::unique_ptr<PeerConnection>> UcxTransport::Connect(
    const ferry::v1::TransferBlob& remote, const std::string& description) {
  return ucx::ConnectUcxPeer(context_, options_, remote, description);
}

}  // namespace

StatusOr<std::unique_ptr<Transport>> CreateUcxTransport(const TransferEngineOptions& options,
                                                        const UcxTuning& tuning) {
  return UcxTransport::Create(options, tuning);
}

StatusOr<std::unique_ptr<Transport>> CreateUcxTransport(const TransferEngineOptions& options) {
  return UcxTransport::Create(options, UcxTuning{});
}

}  // namespace ferry::internal
