#include "transfer/engine_core.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "cuda/driver.h"
#include "transfer/peer.h"

namespace ferry::internal {

namespace {

std::string RandomEngineId() {
  absl::BitGen gen;
  return absl::StrFormat("%016x", absl::Uniform<uint64_t>(gen));
}

std::string HostName() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "unknown-host";
  return name;
}

std::string BootId() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

// "net:[4026531992]": identifies this process's network namespace on this boot.
std::string NetNamespace() {
  char target[64] = {};
  const ssize_t n = ::readlink("/proc/self/ns/net", target, sizeof(target) - 1);
  return n > 0 ? std::string(target, static_cast<size_t>(n)) : std::string();
}

std::string KindList(const std::vector<TransportKind>& kinds) {
  if (kinds.empty()) return "none";
  return absl::StrJoin(kinds, ", ", [](std::string* out, TransportKind k) {
    absl::StrAppend(out, std::string(TransportKindName(k)));
  });
}

}  // namespace

StatusOr<std::shared_ptr<EngineCore>> EngineCore::Create(TransferEngineOptions options) {
  // Preference order: CUDA IPC (device memory on this host; it serves no host region), shm
  // (its memfd allocator comes first in AllocateRegion), UCX, TCP.
  std::vector<std::unique_ptr<Transport>> transports;
  auto devices = std::make_shared<cuda::DevicePool>();  // one Device per GPU, for every user
  auto stop_all = [&] {
    for (auto& t : transports) t->Stop();
  };
  if (options.enable_cuda_ipc) {
    auto cuda_ipc = CreateCudaIpcTransport(options);
    if (cuda_ipc.ok()) {
      transports.push_back(std::move(*cuda_ipc));
    } else if (!options.enable_shm && !options.enable_ucx && !options.enable_tcp) {
      return Status(cuda_ipc.status().code(),
                    absl::StrCat("transfer engine \"", options.name,
                                 "\": CUDA IPC was asked for but cannot start: ",
                                 cuda_ipc.status().message()));
    } else {
      // Like UCX without RDMA: absent where it cannot work (no driver, no device).
      spdlog::debug("transfer engine \"{}\": CUDA IPC not started: {}", options.name,
                    cuda_ipc.status().message());
    }
  }
  if (options.enable_shm) {
    auto shm = CreateShmTransport(options);
    if (shm.ok()) {
      transports.push_back(std::move(*shm));
    } else if (!options.enable_ucx && !options.enable_tcp) {
      return Status(shm.status().code(),
                    absl::StrCat("transfer engine \"", options.name,
                                 "\": shm transport unavailable and UCX and TCP are disabled: ",
                                 shm.status().message()));
    } else {
      spdlog::warn("transfer engine \"{}\": shm transport unavailable, continuing without it: {}",
                   options.name, shm.status().message());
    }
  }
  const bool start_ucx =
      options.enable_ucx && (options.ucx_without_rdma || UcxRdmaAvailable(options));
  if (options.enable_ucx && !start_ucx) {
    // No UCX listener nobody asked for: without RDMA, UCX would only add software-served reads.
    if (transports.empty() && !options.enable_tcp) {
      return absl::FailedPreconditionError(absl::StrCat(
          "transfer engine \"", options.name,
          "\": UCX was asked for but this host has no RDMA device it may use; set "
          "ucx_without_rdma (--transport ucx) to use UCX over shared memory between local "
          "processes, or use tcp"));
    }
    spdlog::debug("transfer engine \"{}\": no RDMA device, UCX not started", options.name);
  }
  if (start_ucx) {
    auto ucx = CreateUcxTransport(options);
    if (ucx.ok()) {
      transports.push_back(std::move(*ucx));
    } else if (!options.enable_tcp && transports.empty()) {
      return Status(ucx.status().code(),
                    absl::StrCat("transfer engine \"", options.name,
                                 "\": UCX transport unavailable and TCP is disabled: ",
                                 ucx.status().message()));
    } else {
      spdlog::warn("transfer engine \"{}\": UCX transport unavailable, continuing without it: {}",
                   options.name, ucx.status().message());
    }
  }
  if (options.enable_tcp) {
    auto tcp = CreateTcpTransport(options, devices);
    if (!tcp.ok()) {
      stop_all();
      return Status(tcp.status().code(), absl::StrCat("transfer engine \"", options.name,
                                                      "\": ", tcp.status().message()));
    }
    transports.push_back(std::move(*tcp));
  }
  return std::shared_ptr<EngineCore>(
      new EngineCore(std::move(options), std::move(transports), std::move(devices)));
}

EngineCore::EngineCore(TransferEngineOptions options,
                       std::vector<std::unique_ptr<Transport>> transports,
                       std::shared_ptr<cuda::DevicePool> devices)
    : options_(std::move(options)),
      devices_(std::move(devices)),
      transports_(std::move(transports)),
      engine_id_(RandomEngineId()),
      hostname_(HostName()),
      boot_id_(BootId()),
      net_namespace_(NetNamespace()) {}

EngineCore::~EngineCore() { Stop(); }

void EngineCore::Stop() {
  absl::MutexLock lock(&stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  for (const auto& t : transports_) t->Stop();
}

std::vector<TransportKind> EngineCore::transports() const {
  std::vector<TransportKind> kinds;
  for (const auto& t : transports_) kinds.push_back(t->kind());
  return kinds;
}

Transport* EngineCore::Find(TransportKind kind) const {
  for (const auto& t : transports_) {
    if (t->kind() == kind) return t.get();
  }
  return nullptr;
}

StatusOr<std::unique_ptr<Region>> EngineCore::AllocateRegion(uint64_t bytes,
                                                             const AllocateOptions& options) {
  const MemoryKind kind = options.kind;
  if (bytes == 0) return absl::InvalidArgumentError("AllocateRegion: bytes must be > 0");
  if (kind == MemoryKind::kCuda) {
    FERRY_ASSIGN_OR_RETURN(const cuda::Driver* driver, cuda::Driver::Default());
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<cuda::DeviceAllocation> memory,
                           cuda::DeviceAllocation::Create(*driver, options.device, bytes));
    RegionRecord record;
    record.size = bytes;
    record.kind = kind;
    record.data = memory->data();
    record.device_memory = std::move(memory);
    // On failure the allocation goes with the record.
    return AddRegion(std::move(record));
  }
  RegionRecord record;
  record.size = bytes;
  record.kind = kind;
  record.engine_owned = true;
  for (const auto& t : transports_) {
    if (!options.shareable) break;  // plain anonymous memory below
    auto allocation = t->Allocate(bytes, options.prefault);
    if (allocation.ok()) {
      record.allocator = t.get();
      record.allocation = *allocation;
      record.data = allocation->data;
      break;
    }
    if (allocation.status().code() != absl::StatusCode::kUnimplemented) {
      return allocation.status();
    }
  }
  if (record.allocator == nullptr) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | (options.prefault ? MAP_POPULATE : 0), -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(
          absl::StrCat("AllocateRegion: mmap of ", bytes, " bytes failed: ", strerror(errno)));
    }
    record.data = p;
  }
  RegionRecord copy = record;
  auto region = AddRegion(std::move(record));
  if (!region.ok()) {
    if (copy.allocator != nullptr) {
      copy.allocator->Free(copy.allocation);
    } else {
      ::munmap(copy.data, copy.size);
    }
  }
  return region;
}

StatusOr<std::unique_ptr<Region>> EngineCore::RegisterRegion(void* data, uint64_t bytes,
                                                             MemoryKind kind) {
  if (data == nullptr || bytes == 0) {
    return absl::InvalidArgumentError("RegisterRegion: data must be non-null and bytes > 0");
  }
  RegionRecord record;
  record.data = data;
  record.size = bytes;
  record.kind = kind;
  return AddRegion(std::move(record));
}

StatusOr<std::unique_ptr<Region>> EngineCore::AddRegion(RegionRecord record) {
  uint32_t id;
  {
    absl::MutexLock lock(&mu_);
    id = next_region_id_++;
  }
  for (size_t i = 0; i < transports_.size(); ++i) {
    Transport* t = transports_[i].get();
    Status s = t->AddRegion(id, record.data, record.size, record.kind,
                            t == record.allocator ? &record.allocation : nullptr);
    if (!s.ok()) {
      for (size_t j = 0; j < i; ++j) transports_[j]->RemoveRegion(id);
      return Status(s.code(),
                    absl::StrCat("registering ", record.size, " bytes at ",
                                 absl::StrFormat("%p", record.data), " with ",
                                 std::string(TransportKindName(t->kind())), ": ", s.message()));
    }
  }
  void* data = record.data;
  const uint64_t size = record.size;
  const MemoryKind kind = record.kind;
  {
    absl::MutexLock lock(&mu_);
    if (kind == MemoryKind::kCuda) device_regions_.fetch_add(1);
    regions_.emplace(id, std::move(record));
  }
  return std::unique_ptr<Region>(new Region(shared_from_this(), id, data, size, kind));
}

void EngineCore::RemoveRegion(uint32_t id) {
  RegionRecord record;
  {
    absl::MutexLock lock(&mu_);
    auto it = regions_.find(id);
    if (it == regions_.end()) return;
    record = std::move(it->second);
    regions_.erase(it);
    if (record.kind == MemoryKind::kCuda) device_regions_.fetch_sub(1);
  }
  for (const auto& t : transports_) t->RemoveRegion(id);
  record.device_memory.reset();  // after every transport let go (CUDA IPC waited for targets)
  if (!record.engine_owned) return;
  if (record.allocator != nullptr) {
    record.allocator->Free(record.allocation);
  } else {
    ::munmap(record.data, record.size);
  }
}

StatusOr<cuda::Device*> EngineCore::LocalDevice(const void* local) {
  if (device_regions_.load(std::memory_order_relaxed) == 0) return nullptr;
  const uintptr_t address = reinterpret_cast<uintptr_t>(local);
  bool device = false;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, r] : regions_) {
      const uintptr_t base = reinterpret_cast<uintptr_t>(r.data);
      if (address >= base && address - base < r.size) {
        device = r.kind == MemoryKind::kCuda;
        break;
      }
    }
  }
  if (!device) return nullptr;
  return devices_->ForAddress(address);
}

double EngineCore::TakeLoad() {
  double load = 0.0;
  for (const auto& transport : transports_) load = std::max(load, transport->TakeLoad());
  return load;
}

Status EngineCore::LimitRegion(uint32_t id, std::function<bool(uint64_t, uint64_t)> allowed) {
  for (const auto& transport : transports_) {
    if (transport->kind() != TransportKind::kTcp) {
      return absl::FailedPreconditionError(absl::StrCat(
          "engine ", options_.name, " serves ", std::string(TransportKindName(transport->kind())),
          ", whose reads are one-sided: it cannot serve only some ranges of region ", id,
          "; serve over TCP only (enable_shm and enable_ucx false)"));
    }
  }
  for (const auto& transport : transports_) {
    FERRY_RETURN_IF_ERROR(transport->LimitRegion(id, allowed));
  }
  return absl::OkStatus();
}

std::string EngineCore::ExportBlob() const {
  ferry::v1::TransferBlob blob;
  blob.set_version(1);
  blob.set_engine_id(engine_id_);
  blob.set_name(options_.name);
  blob.set_hostname(hostname_);
  blob.set_boot_id(boot_id_);
  blob.set_net_namespace(net_namespace_);
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, r] : regions_) {
      ferry::v1::RegionInfo* info = blob.add_regions();
      info->set_id(id);
      info->set_size(r.size);
      info->set_kind(r.kind == MemoryKind::kCuda ? ferry::v1::MEMORY_KIND_CUDA
                                                 : ferry::v1::MEMORY_KIND_HOST);
      info->set_base_address(reinterpret_cast<uint64_t>(r.data));
    }
  }
  for (const auto& t : transports_) t->Describe(&blob);
  return blob.SerializeAsString();
}

StatusOr<EngineCore::Choice> EngineCore::Candidates(const ferry::v1::TransferBlob& remote,
                                                    TransportKind wanted) const {
  std::vector<TransportKind> theirs;
  if (remote.has_cuda_ipc()) theirs.push_back(TransportKind::kCudaIpc);
  if (remote.has_shm()) theirs.push_back(TransportKind::kShm);
  if (remote.has_ucx()) theirs.push_back(TransportKind::kUcx);
  if (remote.has_tcp()) theirs.push_back(TransportKind::kTcp);
  auto offered = [&](TransportKind kind) {
    return std::find(theirs.begin(), theirs.end(), kind) != theirs.end() ? Find(kind) : nullptr;
  };
  auto mismatch = [&](const std::string& what) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot connect to \"", remote.name(), "\" (", remote.engine_id(), ") ", what,
                     ": this engine offers [", KindList(transports()), "], the peer offers [",
                     KindList(theirs), "]; enable a common transport on both sides"));
  };
  // The first reason `t` cannot serve one of the blob's regions (OK: it serves all); `all`
  // false: only whether it serves none of them.
  auto serves = [&](const Transport& t, bool all) -> Status {
    Status first;
    int served = 0;
    for (const auto& r : remote.regions()) {
      Status s = t.Serves(r);
      if (s.ok()) {
        ++served;
      } else if (first.ok()) {
        first = s;
      }
    }
    if (all || served == 0) return first;
    return absl::OkStatus();
  };
  Choice choice;
  if (wanted != TransportKind::kAuto) {
    Transport* t = offered(wanted);
    if (t == nullptr) {
      return mismatch(absl::StrCat("over ", std::string(TransportKindName(wanted))));
    }
    // An explicit transport is refused only when it serves none of the regions: the ops decide.
    if (Status s = serves(*t, /*all=*/false); !s.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot read from \"", remote.name(), "\" (", remote.engine_id(), ") over ",
          std::string(TransportKindName(wanted)),
          ", which serves none of its regions: ", s.message(), "; use auto, or another transport"));
    }
    choice.candidates.push_back(t);
    return choice;
  }
  // Another network namespace on this machine shares the host name and boot id but cannot reach
  // our abstract unix sockets or UCX's loopback paths: it is another host to us.
  const bool same_host =
      remote.hostname() == hostname_ && remote.boot_id() == boot_id_ &&
      (remote.net_namespace().empty() || remote.net_namespace() == net_namespace_);
  std::vector<std::string> passed_over;
  for (const auto& t : transports_) {  // preference order
    const std::string name(TransportKindName(t->kind()));
    if (offered(t->kind()) == nullptr) {
      passed_over.push_back(absl::StrCat(name, ": the peer does not offer it"));
      continue;
    }
    Status s = t->Reaches(remote, same_host);
    if (s.ok()) s = serves(*t, /*all=*/true);
    if (!s.ok()) {
      passed_over.push_back(std::string(s.message()));
      continue;
    }
    choice.candidates.push_back(t.get());
  }
  for (TransportKind kind : theirs) {
    if (Find(kind) == nullptr) {
      passed_over.push_back(
          absl::StrCat(std::string(TransportKindName(kind)), ": not enabled on this engine"));
    }
  }
  if (choice.candidates.empty()) {
    return mismatch(absl::StrCat("automatically (", absl::StrJoin(passed_over, "; "), ")"));
  }
  choice.reason = absl::StrCat(
      "auto chose ", std::string(TransportKindName(choice.candidates[0]->kind())),
      passed_over.empty() ? "" : absl::StrCat(" (", absl::StrJoin(passed_over, "; "), ")"));
  return choice;
}

StatusOr<std::unique_ptr<Peer>> EngineCore::Connect(std::string_view blob, TransportKind kind) {
  ferry::v1::TransferBlob remote;
  if (!remote.ParseFromArray(blob.data(), static_cast<int>(blob.size())) || remote.version() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed transfer blob (", blob.size(), " bytes",
                     remote.version() != 1 ? absl::StrCat(", version ", remote.version()) : "",
                     "); pass the exact bytes TransferEngine::ExportBlob() returned (version 1)"));
  }
  FERRY_ASSIGN_OR_RETURN(Choice choice, Candidates(remote, kind));
  const std::vector<Transport*>& candidates = choice.candidates;
  for (size_t i = 0;; ++i) {
    Transport* transport = candidates[i];
    const std::string address =
        transport->kind() == TransportKind::kTcp
            ? (remote.tcp().host().find(':') != std::string::npos
                   ? absl::StrCat("[", remote.tcp().host(), "]:", remote.tcp().port())
                   : absl::StrCat(remote.tcp().host(), ":", remote.tcp().port()))
            : remote.hostname();
    std::string description =
        absl::StrCat(remote.name(), " (", remote.engine_id(), ") at ", address, " over ",
                     std::string(TransportKindName(transport->kind())));
    auto conn = transport->Connect(remote, description);
    if (!conn.ok()) {
      // kAuto only: an unreachable transport (another network namespace, a firewalled port)
      // falls back to the next candidate; an explicit choice never does.
      if (conn.status().code() == absl::StatusCode::kUnavailable && i + 1 < candidates.size()) {
        spdlog::info("transfer: {} unreachable, trying {}: {}", description,
                     TransportKindName(candidates[i + 1]->kind()), conn.status().message());
        continue;
      }
      return conn.status();
    }
    PeerSetup setup;
    setup.connection = std::shared_ptr<PeerConnection>(std::move(*conn));
    setup.kind = transport->kind();
    setup.description = std::move(description);
    for (const auto& r : remote.regions()) {
      setup.region_sizes[r.id()] = r.size();
      if (r.kind() == ferry::v1::MEMORY_KIND_CUDA) setup.remote_device_regions.insert(r.id());
    }
    setup.chunk_bytes = options_.chunk_bytes;
    setup.choice = choice.reason;
    if (i > 0) {
      absl::StrAppend(&setup.choice, "; ", std::string(TransportKindName(candidates[0]->kind())),
                      " was unreachable, so ", std::string(TransportKindName(transport->kind())),
                      " is used");
    }
    setup.writes_device = transport->Writes(MemoryKind::kCuda);
    setup.local_device = [weak = weak_from_this()](const void* local) -> StatusOr<cuda::Device*> {
      std::shared_ptr<EngineCore> core = weak.lock();
      if (core == nullptr) return nullptr;
      return core->LocalDevice(local);
    };
    setup.staging_slots = options_.staging_slots;
    setup.staging_slot_bytes = options_.staging_slot_bytes;
    return MakePeer(std::move(setup));
  }
}

}  // namespace ferry::internal
