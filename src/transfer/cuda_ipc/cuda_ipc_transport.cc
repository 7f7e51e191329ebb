#include "transfer/cuda_ipc/cuda_ipc_transport.h"

#include <unistd.h>

#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
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

// The export of one region: a record per allocation behind it. Handles (legacy, fabric) go in
// the records; descriptors (VMM memory) are made for each target that opens the region and
// closed once sent, so a model in thousands of cuMemCreate chunks does not hold thousands of
// descriptors while it is served. Each allocation is exported once here to learn that it can be.
StatusOr<shm::RegionExport> ExportRegion(const std::shared_ptr<IpcMemory>& memory, void* data,
                                         uint64_t size) {
  FERRY_ASSIGN_OR_RETURN(
      std::vector<cuda::AllocationPiece> pieces,
      cuda::FindAllocationPieces(reinterpret_cast<uint64_t>(data), size, memory->query(),
                                 /*require_exportable=*/true));
  shm::RegionExport out;
  out.size = size;
  std::vector<PieceRecord> records;
  std::vector<cuda::AllocationInfo> by_descriptor;  // in the order of their fd_index
  for (const cuda::AllocationPiece& piece : pieces) {
    FERRY_ASSIGN_OR_RETURN(cuda_ipc::ExportedAllocation exported, memory->Export(piece.allocation));
    PieceRecord r{};
    r.allocation_size = piece.allocation.size;
    r.offset = piece.offset;
    r.length = piece.length;
    r.region_offset = piece.region_offset;
    r.kind = static_cast<uint32_t>(piece.allocation.kind);
    r.handle = exported.handle;
    if (piece.allocation.kind == cuda::ExportKind::kPosixFd) {
      if (!exported.fd.valid()) {
        return absl::InternalError(absl::StrCat(memory->name(), " exported no descriptor"));
      }
      r.fd_index = static_cast<uint32_t>(by_descriptor.size());
      by_descriptor.push_back(piece.allocation);
    }
    records.push_back(r);
  }
  out.record_count = static_cast<uint32_t>(records.size());
  out.records.assign(reinterpret_cast<const char*>(records.data()),
                     records.size() * sizeof(PieceRecord));
  if (!by_descriptor.empty()) {
    out.descriptors = [memory, by_descriptor]() -> StatusOr<std::vector<Fd>> {
      std::vector<Fd> fds;
      fds.reserve(by_descriptor.size());
      for (const cuda::AllocationInfo& allocation : by_descriptor) {
        FERRY_ASSIGN_OR_RETURN(cuda_ipc::ExportedAllocation exported, memory->Export(allocation));
        if (!exported.fd.valid()) {
          return absl::InternalError(absl::StrCat(memory->name(), " exported no descriptor"));
        }
        fds.push_back(std::move(exported.fd));
      }
      return fds;
    };
  }
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
    auto exported = ExportRegion(memory_, data, size);
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
