#include "transfer/shm/shm_transport.h"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "transfer/shm/shm_peer.h"
#include "transfer/shm/shm_server.h"
#include "transfer/shm/shm_wire.h"

namespace ferry::internal {

namespace shm {

StatusOr<Allocation> AllocateMemfd(uint64_t bytes, bool prefault) {
  Fd memfd(::memfd_create("ferry-region", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!memfd.valid()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("shm: memfd_create for ", bytes, " bytes failed: ", ErrnoText(errno)));
  }
  if (::ftruncate(memfd.get(), static_cast<off_t>(bytes)) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat("shm: sizing a memfd to ", bytes,
                                                     " bytes failed: ", ErrnoText(errno),
                                                     "; check the size and /dev/shm limits"));
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_SHARED | (prefault ? MAP_POPULATE : 0), memfd.get(), 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("shm: mapping a memfd of ", bytes, " bytes failed: ", ErrnoText(errno)));
  }
  // After the owner's writable mapping exists: it keeps working, every later one is refused.
  if (::fcntl(memfd.get(), F_ADD_SEALS,
              F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) != 0) {
    const int err = errno;
    ::munmap(p, bytes);
    return absl::InternalError(
        absl::StrCat("shm: sealing a memfd failed: ", ErrnoText(err), " (needs Linux >= 5.1)"));
  }
  Allocation allocation;
  allocation.data = p;
  allocation.size = bytes;
  allocation.handle = new MemfdHandle{memfd.Release()};
  return allocation;
}

void FreeMemfd(const Allocation& allocation) {
  auto* handle = static_cast<MemfdHandle*>(allocation.handle);
  ::munmap(allocation.data, allocation.size);
  if (handle != nullptr) {
    ::close(handle->memfd);
    delete handle;
  }
}

}  // namespace shm

namespace {

// Thread-safe (ShmServer is; the rest is immutable after Create).
class ShmTransport : public Transport {
 public:
  ShmTransport(const TransferEngineOptions& options, std::unique_ptr<shm::ShmServer> server,
               std::string socket_name, std::string secret)
      : options_(options),
        server_(std::move(server)),
        socket_name_(std::move(socket_name)),
        secret_(std::move(secret)) {}
  ~ShmTransport() override { Stop(); }

  TransportKind kind() const override { return TransportKind::kShm; }

  StatusOr<Allocation> Allocate(uint64_t bytes, bool prefault) override {
    return shm::AllocateMemfd(bytes, prefault);
  }
  void Free(const Allocation& allocation) override { shm::FreeMemfd(allocation); }

  // Serves only memory this transport allocated; other regions are accepted and not served.
  Status AddRegion(uint32_t id, void* data, uint64_t size, MemoryKind kind,
                   const Allocation* allocation) override {
    if (allocation == nullptr || allocation->handle == nullptr) return absl::OkStatus();
    return server_->AddRegion(id, static_cast<shm::MemfdHandle*>(allocation->handle)->memfd, size);
  }
  void RemoveRegion(uint32_t id) override { server_->RemoveRegion(id); }

  void Describe(ferry::v1::TransferBlob* blob) const override {
    ferry::v1::ShmInfo* info = blob->mutable_shm();
    info->set_socket_name(socket_name_);
    info->set_secret(secret_);
    for (auto& region : *blob->mutable_regions()) {
      region.set_shm_served(server_->Serves(region.id()));
    }
  }

  Status Reaches(const ferry::v1::TransferBlob& remote, bool same_host) const override {
    if (same_host) return absl::OkStatus();
    return absl::FailedPreconditionError(
        "shm: the peer is on another host or in another network namespace");
  }

  Status Serves(const ferry::v1::RegionInfo& region) const override {
    if (region.shm_served()) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("shm: the peer's shm does not serve region ", region.id(),
                     region.kind() == ferry::v1::MEMORY_KIND_CUDA
                         ? " (device memory)"
                         : " (memory registered in place, not allocated by its engine)"));
  }

  StatusOr<std::unique_ptr<PeerConnection>> Connect(const ferry::v1::TransferBlob& remote,
                                                    const std::string& description) override {
    if (!remote.has_shm() || remote.shm().socket_name().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("blob of ", description, " has no usable shm section"));
    }
    shm::ShmPeerOptions peer_options;
    peer_options.copy_threads = options_.shm_copy_threads;
    FERRY_ASSIGN_OR_RETURN(
        auto conn, shm::ShmPeerConnection::Create(remote.shm().socket_name(), remote.shm().secret(),
                                                  peer_options, description));
    return std::unique_ptr<PeerConnection>(std::move(conn));
  }

  void Stop() override { server_->Stop(); }

 private:
  const TransferEngineOptions options_;
  const std::unique_ptr<shm::ShmServer> server_;
  const std::string socket_name_;
  const std::string secret_;
};

}  // namespace

StatusOr<std::unique_ptr<Transport>> CreateShmTransport(const TransferEngineOptions& options) {
  FERRY_ASSIGN_OR_RETURN(auto server, shm::ShmServer::CreateRandom("ferry-shm"));
  std::string socket_name = server->socket_name();
  std::string secret = server->secret();
  return std::unique_ptr<Transport>(
      new ShmTransport(options, std::move(server), std::move(socket_name), std::move(secret)));
}

}  // namespace ferry::internal
