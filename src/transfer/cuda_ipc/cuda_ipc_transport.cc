#include "transfer/cuda_ipc/cuda_ipc_transport.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "transfer/cuda_ipc/cuda_ipc_peer.h"
#include "transfer/shm/shm_server.h"

namespace ferry::internal {
namespace {

using cuda_ipc::IpcMemory;
using cuda_ipc::PieceRecord;

// This process, as CudaIpcInfo.process names it: random once per process (pids repeat across
// pid namespaces), then the pid (a forked child is another process).
std::string ProcessKey() {
  static const std::string kRandom = [] {
    std::random_device device;
    return absl::StrCat(absl::Hex(device(), absl::kZeroPad8), absl::Hex(device(), absl::kZeroPad8));
  }();
  return absl::StrCat(kRandom, ":", getpid());
}

// How many exported descriptors a source keeps open between targets' opens: a quarter of the
// soft open-file limit, read at each AddRegion (ferry's binaries and Python module raise it to
// the hard limit at start, so normally every region's), leaving the rest to the process.
class DescriptorBudget {
 public:
  // Takes `n` if they fit.
  bool TryTake(int64_t n) {
    rlimit limit{};
    const int64_t cap = ::getrlimit(RLIMIT_NOFILE, &limit) != 0 ? 0
                        : limit.rlim_cur == RLIM_INFINITY
                            ? INT64_MAX / 4
                            : static_cast<int64_t>(limit.rlim_cur) / 4;
    absl::MutexLock lock(&mu_);
    if (held_ + n > cap) return false;
    held_ += n;
    return true;
  }
  void Give(int64_t n) {
    absl::MutexLock lock(&mu_);
    held_ -= n;
  }

 private:
  absl::Mutex mu_;
  int64_t held_ ABSL_GUARDED_BY(mu_) = 0;
};

// A region's exported descriptors, kept open and counted in the budget while the region is
// served.
struct HeldDescriptors {
  HeldDescriptors(std::vector<Fd> f, std::shared_ptr<DescriptorBudget> b)
      : fds(std::move(f)), budget(std::move(b)) {}
  ~HeldDescriptors() { budget->Give(static_cast<int64_t>(fds.size())); }
  const std::vector<Fd> fds;
  const std::shared_ptr<DescriptorBudget> budget;
};

// Exports one cuMemCreate allocation as a descriptor.
StatusOr<Fd> ExportDescriptor(IpcMemory& memory, const cuda::AllocationInfo& allocation) {
  FERRY_ASSIGN_OR_RETURN(cuda_ipc::ExportedAllocation exported, memory.Export(allocation));
  if (!exported.fd.valid()) {
    return absl::InternalError(absl::StrCat(memory.name(), " exported no descriptor"));
  }
  return std::move(exported.fd);
}

// The export of one region: a record per allocation behind it. Handles (legacy, fabric) go in
// the records. Descriptors (VMM memory) are made when the region is added; while they fit the
// budget they stay open and each target that opens the region gets duplicates, else they are
// closed and exported anew for each target (a model in thousands of cuMemCreate chunks in a
// process left at 1,024 open files). Either way the ones sent are closed once sent.
StatusOr<shm::RegionExport> ExportRegion(const std::shared_ptr<IpcMemory>& memory,
                                         const std::shared_ptr<DescriptorBudget>& budget,
                                         void* data, uint64_t size) {
  FERRY_ASSIGN_OR_RETURN(
      std::vector<cuda::AllocationPiece> pieces,
      cuda::FindAllocationPieces(reinterpret_cast<uint64_t>(data), size, memory->query(),
                                 /*require_exportable=*/true));
  shm::RegionExport out;
  out.size = size;
  std::vector<PieceRecord> records;
  std::vector<cuda::AllocationInfo> by_descriptor;  // in the order of their fd_index
  std::vector<Fd> fds;
  for (const cuda::AllocationPiece& piece : pieces) {
    PieceRecord r{};
    r.allocation_size = piece.allocation.size;
    r.offset = piece.offset;
    r.length = piece.length;
    r.region_offset = piece.region_offset;
    r.kind = static_cast<uint32_t>(piece.allocation.kind);
    if (piece.allocation.kind == cuda::ExportKind::kPosixFd) {
      FERRY_ASSIGN_OR_RETURN(Fd fd, ExportDescriptor(*memory, piece.allocation));
      r.fd_index = static_cast<uint32_t>(by_descriptor.size());
      by_descriptor.push_back(piece.allocation);
      fds.push_back(std::move(fd));
    } else {
      FERRY_ASSIGN_OR_RETURN(cuda_ipc::ExportedAllocation exported,
                             memory->Export(piece.allocation));
      r.handle = exported.handle;
    }
    records.push_back(r);
  }
  out.record_count = static_cast<uint32_t>(records.size());
  out.records.assign(reinterpret_cast<const char*>(records.data()),
                     records.size() * sizeof(PieceRecord));
  if (fds.empty()) return out;
  if (budget->TryTake(static_cast<int64_t>(fds.size()))) {
    auto held = std::make_shared<const HeldDescriptors>(std::move(fds), budget);
    out.descriptors = [held]() -> StatusOr<std::vector<Fd>> {
      std::vector<Fd> copies;
      copies.reserve(held->fds.size());
      for (const Fd& fd : held->fds) {
        Fd copy(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
        if (!copy.valid()) {
          return absl::ResourceExhaustedError(
              absl::StrCat("duplicating an exported descriptor: ", ErrnoText(errno),
                           "; check the open-file limit (ulimit -n)"));
        }
        copies.push_back(std::move(copy));
      }
      return copies;
    };
    return out;
  }
  out.descriptors = [memory, by_descriptor]() -> StatusOr<std::vector<Fd>> {
    std::vector<Fd> made;
    made.reserve(by_descriptor.size());
    for (const cuda::AllocationInfo& allocation : by_descriptor) {
      FERRY_ASSIGN_OR_RETURN(Fd fd, ExportDescriptor(*memory, allocation));
      made.push_back(std::move(fd));
    }
    return made;
  };
  return out;
}

// Thread-safe (ShmServer and IpcMemory are).
class CudaIpcTransport : public Transport {
 public:
  CudaIpcTransport(std::shared_ptr<IpcMemory> memory, std::unique_ptr<shm::ShmServer> server)
      : memory_(std::move(memory)), server_(std::move(server)) {}
  ~CudaIpcTransport() override { Stop(); }

  TransportKind kind() const override { return TransportKind::kCudaIpc; }

  // Host regions, and device regions whose memory cannot be exported, are accepted and not
  // served: the blob says so per region (cuda_ipc_served), and targets use another transport.
  Status AddRegion(uint32_t id, void* data, uint64_t size, MemoryKind kind,
                   const Allocation*) override {
    if (kind != MemoryKind::kCuda) return absl::OkStatus();
    auto exported = ExportRegion(memory_, budget_, data, size);
    if (!exported.ok()) {
      // Targets on this host will stage it through host memory instead, much slower: say so.
      spdlog::warn(
          "cuda_ipc: region {} is not served over CUDA IPC (same-host targets will "
          "stage it through host memory): {}",
          id, exported.status().message());
      return absl::OkStatus();
    }
    return server_->AddExport(id, std::move(*exported));
  }
  void RemoveRegion(uint32_t id) override { server_->RemoveRegion(id); }

  Status Reaches(const ferry::v1::TransferBlob& remote, bool same_host) const override {
    if (!same_host) {
      return absl::FailedPreconditionError(
          "cuda_ipc: the peer is on another host or in another network namespace");
    }
    if (!memory_->OpensOwnExports() && remote.cuda_ipc().process() == ProcessKey()) {
      return absl::FailedPreconditionError(
          "cuda_ipc: the peer is this same process, and CUDA cannot open its own IPC handles");
    }
    return absl::OkStatus();
  }
  Status Serves(const ferry::v1::RegionInfo& region) const override {
    if (region.cuda_ipc_served()) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("cuda_ipc: the peer does not export region ", region.id(),
                     region.kind() == ferry::v1::MEMORY_KIND_CUDA
                         ? " (device memory it could not export; its log says why)"
                         : " (host memory)"));
  }
  // Copies from a device mapping into local device or host memory alike.
  bool Writes(MemoryKind) const override { return true; }

  void Describe(ferry::v1::TransferBlob* blob) const override {
    ferry::v1::CudaIpcInfo* info = blob->mutable_cuda_ipc();
    info->set_socket_name(server_->socket_name());
    info->set_secret(server_->secret());
    info->set_process(ProcessKey());
    for (auto& region : *blob->mutable_regions()) {
      region.set_cuda_ipc_served(server_->Serves(region.id()));
    }
  }

  StatusOr<std::unique_ptr<PeerConnection>> Connect(const ferry::v1::TransferBlob& remote,
                                                    const std::string& description) override {
    if (!remote.has_cuda_ipc() || remote.cuda_ipc().socket_name().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("blob of ", description, " has no usable cuda_ipc section"));
    }
    FERRY_ASSIGN_OR_RETURN(auto conn, cuda_ipc::CudaIpcPeerConnection::Create(
                                          remote.cuda_ipc().socket_name(),
                                          remote.cuda_ipc().secret(), memory_, description));
    return std::unique_ptr<PeerConnection>(std::move(conn));
  }

  void Stop() override { server_->Stop(); }

 private:
  const std::shared_ptr<IpcMemory> memory_;
  const std::shared_ptr<DescriptorBudget> budget_ = std::make_shared<DescriptorBudget>();
  const std::unique_ptr<shm::ShmServer> server_;
};

}  // namespace

StatusOr<std::unique_ptr<Transport>> CreateCudaIpcTransport(
    const TransferEngineOptions& options, std::shared_ptr<cuda_ipc::IpcMemory> memory) {
  FERRY_ASSIGN_OR_RETURN(auto server, shm::ShmServer::CreateRandom("ferry-cuda-ipc"));
  return std::unique_ptr<Transport>(new CudaIpcTransport(std::move(memory), std::move(server)));
}

StatusOr<std::unique_ptr<Transport>> CreateCudaIpcTransport(const TransferEngineOptions& options) {
  FERRY_ASSIGN_OR_RETURN(std::shared_ptr<cuda_ipc::IpcMemory> memory,
                         cuda_ipc::OpenCudaIpcMemory());
  return CreateCudaIpcTransport(options, std::move(memory));
}

}  // namespace ferry::internal
