// The Transport interface: one implementation per folder (tcp/, ucx/, shm/). The engine core
// (engine.cc) owns one Transport per enabled kind, tells each about every region, merges their
// blob sections, and asks one of them to connect to a remote blob.
//
// Thread-safety: every method of Transport may be called from any thread, concurrently.
// PeerConnection::Read is called by one thread at a time (the engine serializes batches per
// Peer).
#ifndef FERRY_TRANSFER_TRANSPORT_H_
#define FERRY_TRANSFER_TRANSPORT_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "absl/types/span.h"
#include "ferry/status.h"
#include "ferry/transfer.h"
#include "ferry/v1/transfer.pb.h"

namespace ferry::internal {

// Memory a transport allocated for a region; freed by Transport::Free after the region is
// removed from every transport.
struct Allocation {
  void* data = nullptr;
  uint64_t size = 0;
  void* handle = nullptr;  // transport-private (UCX: the ucp_mem_h)
};

// Shared state of one running batch, set by the engine and read by the transport.
struct ReadControl {
  absl::Time deadline = absl::InfiniteFuture();
  const std::atomic<bool>* cancelled = nullptr;  // never null while Read runs
  std::atomic<uint64_t>* bytes_done = nullptr;   // never null; add bytes as they land
};

// A connection to one remote engine.
class PeerConnection {
 public:
  virtual ~PeerConnection() = default;
  // Performs every op (already validated against the remote regions by the engine). Returns
  // OK when all bytes landed; DeadlineExceeded past ctl.deadline; Cancelled when
  // *ctl.cancelled became true; Unavailable/DataLoss/Internal for transport failures. Every
  // error names the peer (`description`) and the first op range that did not complete, e.g.
  // "region 0 [4096, 8392704)". Returns promptly (within ~100 ms) after cancellation or the
  // deadline. After a failure the connection may refuse further reads with FailedPrecondition.
  virtual Status Read(absl::Span<const ReadOp> ops, const ReadControl& ctl) = 0;
  // Closes sockets/endpoints. Idempotent. Read after Close fails with FailedPrecondition.
  virtual void Close() = 0;
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual TransportKind kind() const = 0;

  // Allocates memory this transport serves best (shm: a sealed memfd; UCX: ucp_mem_map with
  // ALLOCATE); the engine asks the transports in preference order. Unimplemented
  // when the transport has no preference (the engine then uses pre-faulted anonymous mmap).
  virtual StatusOr<Allocation> Allocate(uint64_t bytes) {
    return absl::UnimplementedError("no transport-specific allocator");
  }
  virtual void Free(const Allocation& allocation) {}

  // Makes [data, data+size) readable by peers as region `id`. `allocation` is non-null when
  // this transport allocated the memory itself (so it can reuse that registration).
  virtual Status AddRegion(uint32_t id, void* data, uint64_t size, MemoryKind kind,
                           const Allocation* allocation) = 0;
  // After this returns, no new read by a peer touches the region. Idempotent.
  virtual void RemoveRegion(uint32_t id) = 0;

  // Fills this transport's part of the blob: its section (tcp / ucx / shm) and, for each region
  // already listed in blob->regions(), its per-region fields (ucx_rkey, shm_served).
  virtual void Describe(ferry::v1::TransferBlob* blob) const = 0;

  // Connects to `remote` (which has this transport's section). `description` is the engine's
  // text for the peer, to use in errors. Unavailable naming the address when unreachable.
  virtual StatusOr<std::unique_ptr<PeerConnection>> Connect(const ferry::v1::TransferBlob& remote,
                                                            const std::string& description) = 0;

  // Stops listeners/progress threads; peers' in-flight reads fail. Idempotent.
  virtual void Stop() = 0;
};

// Factories, one per transport folder. `options` was validated by the engine.
StatusOr<std::unique_ptr<Transport>> CreateTcpTransport(const TransferEngineOptions& options);
StatusOr<std::unique_ptr<Transport>> CreateUcxTransport(const TransferEngineOptions& options);
StatusOr<std::unique_ptr<Transport>> CreateShmTransport(const TransferEngineOptions& options);
// Whether UCX has an RDMA device here that `options` let it use (ucx/ucx_transport.cc).
bool UcxRdmaAvailable(const TransferEngineOptions& options);

}  // namespace ferry::internal

#endif  // FERRY_TRANSFER_TRANSPORT_H_
