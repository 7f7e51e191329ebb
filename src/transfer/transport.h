// The Transport interface: one implementation per folder (tcp/, ucx/, shm/, cuda_ipc/). The engine
// core (engine.cc) owns one Transport per enabled kind, tells each about every region, merges their
// blob sections, and asks one of them to connect to a remote blob.
//
// Thread-safety: every method of Transport may be called from any thread, concurrently.
// PeerConnection::Execute is called by one thread at a time (the engine serializes reads per
// Peer).
#ifndef FERRY_TRANSFER_TRANSPORT_H_
#define FERRY_TRANSFER_TRANSPORT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "ferry/status.h"
#include "ferry/transfer.h"
#include "ferry/v1/transfer.pb.h"

namespace ferry::internal::cuda {
class DevicePool;
}  // namespace ferry::internal::cuda

namespace ferry::internal {

// Memory a transport allocated for a region; freed by Transport::Free after the region is
// removed from every transport.
struct Allocation {
  void* data = nullptr;
  uint64_t size = 0;
  void* handle = nullptr;  // transport-private (UCX: the ucp_mem_h)
};

// One piece of a read: a sub-range of one op, at most the read's chunk size.
struct Chunk {
  uint32_t index = 0;  // in the read's list of pieces; fits a TCP request id
  uint32_t remote_region = 0;
  uint64_t remote_offset = 0;
  char* local = nullptr;
  uint64_t length = 0;
};

// "region R [a, b)": how errors name a remote range.
inline std::string RangeText(uint32_t region, uint64_t offset, uint64_t length) {
  return absl::StrCat("region ", region, " [", offset, ", ", offset + length, ")");
}
inline std::string RangeText(const Chunk& c) {
  return RangeText(c.remote_region, c.remote_offset, c.length);
}

// What a transport executes: the read core's pieces, handed out one at a time, so that one
// read can be spread over several connections and a piece re-issued elsewhere after a failure.
// Every method may be called from several of the connection's threads at once.
class ChunkFeed {
 public:
  virtual ~ChunkFeed() = default;
  // The next piece for this connection; false when none is left or the read is stopping, or
  // (in a read over several connections) this connection holds its share of pieces already:
  // a transport may ask again after one of its pieces is Done, and otherwise returns from
  // Execute once its pieces landed (the core calls Execute again while pieces are left).
  // Pieces come in ascending order of their index.
  virtual bool Next(Chunk* chunk) = 0;
  // `bytes` of a piece in progress arrived (progress and stall detection only).
  virtual void Moved(uint64_t bytes) = 0;
  // Every byte of `chunk` landed. Exactly once per piece taken, unless the connection fails.
  virtual void Done(const Chunk& chunk) = 0;
  // True when the connection must stop: cancelled, past the deadline, stalled, or another
  // thread of this connection failed. Cheap; poll it at least every 100 ms while blocked.
  virtual bool stopping() const = 0;
  // The distinct remote regions the read touches (ascending), for transports that prepare
  // per region (shm maps them, UCX checks its rkeys).
  virtual const std::vector<uint32_t>& regions() const = 0;
};

// A connection to one remote engine.
class PeerConnection {
 public:
  virtual ~PeerConnection() = default;
  // Takes pieces from `feed` until it has none left, executing several at once as the
  // transport allows, and reports each with feed.Done as it lands. Returns OK when every piece
  // taken landed; when feed.stopping() became true, returns promptly (within ~100 ms) with any
  // status (the core reports why it stopped); on a transport failure, Unavailable, DataLoss,
  // NotFound, InvalidArgument or Internal with a message that starts with what failed and
  // names the peer (`description`); the core appends the first unfinished range. After a
  // failure the connection may refuse further reads with FailedPrecondition.
  virtual Status Execute(ChunkFeed& feed) = 0;
  // Closes sockets/endpoints. Idempotent. Execute after Close fails with FailedPrecondition.
  virtual void Close() = 0;
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual TransportKind kind() const = 0;

  // Allocates memory this transport serves best (shm: a sealed memfd; UCX: ucp_mem_map with
  // ALLOCATE); the engine asks the transports in preference order. Unimplemented
  // when the transport has no preference (the engine then uses pre-faulted anonymous mmap).
  // `prefault`: fault every page in before returning.
  virtual StatusOr<Allocation> Allocate(uint64_t bytes, bool prefault) {
    return absl::UnimplementedError("no transport-specific allocator");
  }
  virtual void Free(const Allocation& allocation) {}

  // Makes [data, data+size) readable by peers as region `id`. `allocation` is non-null when
  // this transport allocated the memory itself (so it can reuse that registration).
  virtual Status AddRegion(uint32_t id, void* data, uint64_t size, MemoryKind kind,
                           const Allocation* allocation) = 0;
  // After this returns, no new read by a peer touches the region. Idempotent.
  virtual void RemoveRegion(uint32_t id) = 0;
  // How busy serving peers was since the previous call, in [0, 1] (see TcpServer::TakeLoad);
  // 0 for transports whose reads are one-sided (the source never sees them).
  virtual double TakeLoad() { return 0.0; }
  // Serves only the ranges of region `id` that `allowed` accepts (null: all). Unimplemented for
  // transports whose reads are one-sided.
  virtual Status LimitRegion(uint32_t id, std::function<bool(uint64_t, uint64_t)> allowed) {
    return absl::UnimplementedError("this transport's reads are one-sided: it cannot refuse one");
  }

  // Whether this transport can reach `remote` from this engine: OK, or FailedPrecondition with
  // the reason ("the peer is on another host"), which Connect reports when it passes the
  // transport over. `same_host`: hostname, boot id and network namespace agree (the engine
  // decides that once). Consulted for TransportKind::kAuto only; an explicit choice is tried.
  virtual Status Reaches(const ferry::v1::TransferBlob& remote, bool same_host) const = 0;
  // Whether this transport serves the remote region `region` (from the per-region fields its
  // Describe fills on the source): OK, or FailedPrecondition with the reason.
  virtual Status Serves(const ferry::v1::RegionInfo& region) const = 0;
  // Whether a read over this transport writes local memory of `kind` itself. Where it does not
  // (device memory over a transport that moves host memory), the engine stages the read
  // through pinned host memory.
  virtual bool Writes(MemoryKind kind) const { return kind == MemoryKind::kHost; }

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

// Factories, one per transport folder. `options` was validated by the engine. The TCP transport
// stages device regions through the GPUs of `devices`, the engine's pool (one Device per GPU for
// the whole engine).
StatusOr<std::unique_ptr<Transport>> CreateTcpTransport(const TransferEngineOptions& options,
                                                        std::shared_ptr<cuda::DevicePool> devices);
StatusOr<std::unique_ptr<Transport>> CreateUcxTransport(const TransferEngineOptions& options);
StatusOr<std::unique_ptr<Transport>> CreateShmTransport(const TransferEngineOptions& options);
// FailedPrecondition (the driver's or the build's reason) where CUDA cannot be used here.
StatusOr<std::unique_ptr<Transport>> CreateCudaIpcTransport(const TransferEngineOptions& options);
// Whether UCX has an RDMA device here that `options` let it use (ucx/ucx_transport.cc).
bool UcxRdmaAvailable(const TransferEngineOptions& options);

}  // namespace ferry::internal

#endif  // FERRY_TRANSFER_TRANSPORT_H_
