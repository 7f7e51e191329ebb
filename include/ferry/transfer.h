// ferry's transfer engine: one per process (per rank). A source registers memory regions (one
// arena, not one region per tensor) and exports a small connection blob; a target connects to
// that blob and reads remote bytes one-sided, in batches, with many reads in flight.
//
// Example (source and target in different processes; the blob travels through the worker
// endpoint):
//
//   // source
//   FERRY_ASSIGN_OR_RETURN(auto engine, ferry::TransferEngine::Create({}));
//   FERRY_ASSIGN_OR_RETURN(auto arena, engine->AllocateRegion(bytes));
//   LoadWeightsInto(arena->data(), arena->size());
//   std::string blob = engine->ExportBlob();            // hand to targets
//
//   // target
//   FERRY_ASSIGN_OR_RETURN(auto engine, ferry::TransferEngine::Create({}));
//   FERRY_ASSIGN_OR_RETURN(auto dst, engine->AllocateRegion(bytes));
//   FERRY_ASSIGN_OR_RETURN(auto peer, engine->Connect(blob));
//   FERRY_RETURN_IF_ERROR(peer->Read({{/*remote_region=*/0, /*remote_offset=*/0,
//                                      dst->data(), bytes}}, absl::Seconds(60)));
//
// Thread-safety: TransferEngine is thread-safe. A Peer runs one read at a time (Read waits for
// the previous one to finish); use several Peers for concurrent reads. Region is
// thread-compatible.
#ifndef FERRY_TRANSFER_H_
#define FERRY_TRANSFER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "absl/types/span.h"
#include "ferry/status.h"

namespace ferry {

namespace internal {
class EngineCore;
class PeerConnection;
}  // namespace internal

enum class MemoryKind { kHost = 0, kCuda = 1 };

enum class TransportKind {
  // Connect() picks, in order: shm for a peer on this host (same hostname, boot id and network
  // namespace) when both sides offer it and the peer's shm serves every region in its blob;
  // else UCX for a peer on this host or with RDMA on both ends; else TCP. When the chosen
  // transport cannot reach the peer (Unavailable), the next candidate is tried.
  kAuto = 0,
  kUcx = 1,      // UCX: RDMA verbs where a NIC exists; shared memory between local processes only
                 // when asked for (TransferEngineOptions::ucx_without_rdma)
  kTcp = 2,      // ferry's native multi-stream TCP
  kShm = 3,      // ferry's native shared memory: same host only, regions from AllocateRegion only
  kCudaIpc = 4,  // CUDA IPC: same host, device memory on both ends (exported allocations)
};

// "auto", "ucx", "tcp", "shm", "cuda_ipc". InvalidArgument listing the valid names otherwise.
StatusOr<TransportKind> ParseTransportKind(std::string_view name);
std::string_view TransportKindName(TransportKind kind);

struct TransferEngineOptions {
  // Human-readable name, put in the blob and in error messages ("publish rank 0"); UTF-8.
  std::string name;

  // Transports this engine serves as a source and may use as a target. At least one.
  bool enable_shm = true;
  bool enable_ucx = true;
  bool enable_tcp = true;

  // shm: threads copying one batch (the calling thread included). Page faults on a fresh
  // mapping dominate a first read, and two threads fault in parallel. 1..16.
  int shm_copy_threads = 2;

  // TCP: the address the data listener binds ("host:port"; port 0 = any free port).
  std::string tcp_listen = "0.0.0.0:0";
  // TCP: the host put in the blob for peers to dial. Empty: the listen host unless it is a
  // wildcard, else this machine's host name.
  std::string advertise_host;
  // TCP: connections (streams) per peer. 1..64.
  int tcp_streams = 4;
  // TCP: socket send/receive buffer bytes; 0 leaves the kernel's autotuning alone.
  int tcp_socket_buffer = 0;

  // Largest single wire request; longer reads are split. 64 KiB..1 GiB.
  uint64_t chunk_bytes = 8ull << 20;
  // Reads in flight per stream (TCP) or per peer (UCX). 1..1024.
  int max_inflight = 16;

  // Bytes per second this engine serves to all its peers together, shared among them in the
  // order their requests arrive (0: no cap). Paced by the TCP server only: shm and UCX reads
  // are one-sided (the target copies, the source never sees them), so a capped engine must
  // have enable_shm and enable_ucx false.
  uint64_t max_upload_rate = 0;

  // UCX starts only where an RDMA device exists (reads are one-sided and the NIC checks every
  // rkey), unless this is set: then it also starts without one, for shared memory between local
  // processes (`--transport ucx`). Without RDMA and without this, enable_ucx starts nothing.
  bool ucx_without_rdma = false;
  // UCX network devices (UCX_NET_DEVICES, e.g. "lo" in tests) and transports (UCX_TLS), set on
  // ferry's own UCX config with ucp_config_modify, never through the environment. Empty: UCX's
  // defaults less `tcp`. UCX's tcp transport is always refused: it emulates one-sided reads in
  // software and serves any address to whoever connects to its port, with no authentication.
  std::string ucx_net_devices;
  std::string ucx_transports;

  // CUDA IPC: serves device regions to targets on this host, and reads device regions of
  // sources on this host into device memory, GPU to GPU. Starts only where the CUDA driver
  // loads and a device exists; elsewhere it is silently absent, like UCX without RDMA.
  bool enable_cuda_ipc = true;

  // Device memory over a transport that moves host memory (TCP, shm, UCX without CUDA) is
  // staged through pinned host memory, double buffered: `staging_slots` slots of
  // `staging_slot_bytes` per connection (2..64 slots, 64 KiB..256 MiB each).
  int staging_slots = 4;
  uint64_t staging_slot_bytes = 8ull << 20;

  // Validates ranges; errors name the field.
  Status Validate() const;
};

// A registered memory range. Destroying it deregisters it from every transport; reads by peers
// that are still in flight then fail on their side (never touch freed memory on ours: memory
// the engine allocated is released only after deregistration).
class Region {
 public:
  ~Region();
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

  uint32_t id() const { return id_; }
  void* data() const { return data_; }
  // Faults in the pages of [offset, offset + length) for writing (MADV_POPULATE_WRITE), so that
  // a later copy into them runs at memory speed. Thread-safe; a no-op for pages already there.
  // ResourceExhausted when the memory cannot be provided.
  Status Prefault(uint64_t offset, uint64_t length) const;
  uint64_t size() const { return size_; }
  MemoryKind kind() const { return kind_; }

 private:
  friend class internal::EngineCore;
  Region(std::shared_ptr<internal::EngineCore> core, uint32_t id, void* data, uint64_t size,
         MemoryKind kind)
      : core_(std::move(core)), id_(id), data_(data), size_(size), kind_(kind) {}

  std::shared_ptr<internal::EngineCore> core_;
  uint32_t id_;
  void* data_;
  uint64_t size_;
  MemoryKind kind_;
};

// One remote range to read into local memory. `local` must stay valid until the read ends.
struct ReadOp {
  uint32_t remote_region = 0;
  uint64_t remote_offset = 0;
  void* local = nullptr;
  uint64_t length = 0;
};

// How one read runs. Every field is optional.
struct ReadOptions {
  // Limit for the whole read, counted from `start`. DeadlineExceeded when it passes.
  absl::Duration timeout = absl::InfiniteDuration();
  absl::Time start = absl::InfinitePast();  // InfinitePast: when Read is called
  // A peer that delivers no byte for this long while it holds unfinished pieces is abandoned:
  // its pieces go to the read's other peers, or the read fails with DeadlineExceeded "the
  // transfer stalled: ...". Zero: no stall detection.
  absl::Duration stall_timeout = absl::ZeroDuration();
  // Set from any thread to stop the read (it then returns Cancelled within about 100 ms).
  const std::atomic<bool>* cancel = nullptr;
  // Set from any thread to end the read early and cleanly: no piece is handed out any more,
  // the pieces in flight land (and are reported), and the read returns Aborted ("paused") —
  // so that the reader can start another over more peers and read only what is missing.
  const std::atomic<bool>* pause = nullptr;
  // Largest piece handed to a transport; 0: the engine's TransferEngineOptions::chunk_bytes.
  uint64_t chunk_bytes = 0;
  // Where in the read's pieces this reader starts (modulo their count; pieces are then taken
  // in order, wrapping around): targets reading one model from the same sources at once start
  // at different places, so that they hold different pieces they can give each other.
  uint64_t first_piece = 0;
  // How far ahead each peer is given pieces, as time at its own recent rate: a peer holds at
  // most two pieces plus as many as it finished in the last `lookahead`, so a slow peer holds
  // little and a fast one ramps up to what its transport keeps in flight. A piece handed out
  // stays with its peer until it lands, so a read that may be paused to add peers, or whose
  // source is shared by many readers, keeps its commitments short this way. Zero: as many as
  // the transport keeps in flight (one peer), or a few per peer (several).
  absl::Duration lookahead = absl::ZeroDuration();
  // Called about ten times a second (from the read's one watcher thread) while bytes move,
  // and once with (total, total) after a successful read. `done` counts finished pieces.
  std::function<void(uint64_t done, uint64_t total)> on_progress;
  // Called once for every piece as soon as all its bytes landed in local memory, from the
  // thread that received it (several at once): keep it short and thread-safe. `piece` is a
  // sub-range of one op (local pointer and the serving peer's remote coordinates); `peer` is
  // that peer's index in the read's list (0 for Peer::Read).
  std::function<void(const ReadOp& piece, size_t peer)> on_piece;
  // Called for every piece just before a transport starts on it, from the thread that will
  // execute it (several at once), with the piece's local bytes: for example to fault its
  // destination pages in, in one kernel call instead of a fault per page in the copy. It
  // delays that piece, so keep it bounded (well under the stall timeout).
  std::function<void(void* local, uint64_t length)> before_piece;
};

// A connection to one remote engine, over one transport.
class Peer {
 public:
  virtual ~Peer() = default;
  virtual TransportKind transport() const = 0;
  // How the latest read moved its bytes, for reports: the transport's name ("tcp", "cuda_ipc"),
  // with "+staged" when device memory went through pinned host memory on either end.
  virtual std::string path() const { return std::string(TransportKindName(transport())); }
  // Why Connect chose this transport (kAuto: the transports it passed over and why), for
  // reports and logs; empty for an explicit choice.
  virtual const std::string& choice() const {
    static const std::string kNone;
    return kNone;
  }
  // "<remote name> (<engine id>) at <address> over <transport>", for messages.
  virtual const std::string& description() const = 0;
  // Validates every op against the remote regions (InvalidArgument naming the op), then reads
  // them in pieces of at most chunk_bytes, in the calling thread (plus the transport's own
  // stream or copy threads, and one watcher thread when a stall timeout or progress callback
  // is set). Waits for this Peer's previous read to finish first. Errors name the peer and the
  // first unfinished range ("region 0 [4096, 8392704)"). After a failed read the connection may
  // refuse further reads with FailedPrecondition.
  virtual Status Read(std::vector<ReadOp> ops, const ReadOptions& options) = 0;
  // Read with only a timeout.
  Status Read(std::vector<ReadOp> ops, absl::Duration timeout);
  // Closes the connection; later reads fail with FailedPrecondition. Idempotent; also done by
  // the destructor.
  virtual void Disconnect() = 0;
};

// One read spread over several peers that serve the same remote regions (the same model from
// several sources): pieces are handed out dynamically, so a faster peer takes more, and a peer
// that fails or stalls loses only its unfinished pieces, which the others take over. Fails only
// when every peer failed (the error lists each). `peers` must be distinct and stay valid.
Status ReadFromPeers(absl::Span<Peer* const> peers, std::vector<ReadOp> ops,
                     const ReadOptions& options);

// One peer's part in a striped read: the same local bytes as every other peer's ops (same
// count, local pointers and lengths, in the same order), at this peer's own remote
// coordinates, since sources of one model may lay it out differently.
struct PeerRead {
  Peer* peer = nullptr;  // borrowed; must stay valid until the read returns
  std::vector<ReadOp> ops;
  // Set from any thread to drop this peer (its bytes failed verification, say): it stops
  // within about 100 ms and its unfinished pieces go to the others. Optional.
  const std::atomic<bool>* drop = nullptr;
  // Whether the peer serves `piece` (in this peer's coordinates) now; null: every piece. A
  // peer still filling its memory (a target serving while it pulls) takes only what it holds;
  // the answer may change from false to true while the read runs. Called often, under the
  // read's lock: keep it short. A peer without `serves` (a complete source) takes first the
  // pieces no peer with `serves` holds now: what only it can give comes from it, and what the
  // others hold is left to them (it takes those too once nothing else is left).
  std::function<bool(const ReadOp& piece)> serves;
  // Whether the peer is filling `piece` now (some of its bytes landed there, not yet verified):
  // it will serve it soon, so a peer without `serves` leaves it, like the pieces others hold.
  // Optional; the same rules as `serves`.
  std::function<bool(const ReadOp& piece)> fills;
  // For a peer without `serves`: the pieces this reader takes from it before any other (a
  // swarm target's own part of the model, which the other targets leave to it). Optional; the
  // same rules as `serves`.
  std::function<bool(const ReadOp& piece)> own;
};

// What one peer of a striped read did.
struct PeerOutcome {
  Status status;       // OK unless it failed, stalled or was dropped
  uint64_t bytes = 0;  // bytes of finished pieces it delivered
};

// ReadFromPeers over peers whose layouts may differ. InvalidArgument when the peers' op lists
// do not describe the same local bytes. `outcomes` (optional) gets one entry per peer, also
// when the read as a whole failed.
Status ReadFromPeers(absl::Span<const PeerRead> reads, const ReadOptions& options,
                     std::vector<PeerOutcome>* outcomes = nullptr);

// Merges ops that continue each other both remotely and locally, so that the op count does not
// grow with the number of small adjacent pieces.
std::vector<ReadOp> CoalesceReadOps(std::vector<ReadOp> ops);

// How AllocateRegion prepares memory.
struct AllocateOptions {
  MemoryKind kind = MemoryKind::kHost;
  // MemoryKind::kCuda: the device ordinal to allocate on (cuMemAlloc on its primary context).
  int device = 0;
  // true: memory of the transports' own allocators, so that every transport serves it (with shm
  // enabled, a sealed memfd local peers map). false: plain anonymous memory, registered with the
  // engine (TCP and UCX serve it, shm does not); cheaper to prepare (here about 0.40 s per GiB
  // instead of 0.55 s), for a destination that will not be served by shared memory.
  bool shareable = true;
  // true: every page is faulted in before AllocateRegion returns. false: pages fault on first
  // touch; Region::Prefault prepares a range ahead of use.
  bool prefault = true;
};

class TransferEngine {
 public:
  static StatusOr<std::unique_ptr<TransferEngine>> Create(TransferEngineOptions options);
  ~TransferEngine();  // calls Stop()
  TransferEngine(const TransferEngine&) = delete;
  TransferEngine& operator=(const TransferEngine&) = delete;

  // Allocates `bytes` of memory and registers it (see AllocateOptions). Shareable memory is,
  // with shm, a sealed memfd (local peers map it read-only and copy one-sided; UCX and TCP serve
  // it as ordinary memory), else with UCX UCX-allocated shared memory. The Region owns the
  // memory: it is released after the region is deregistered.
  StatusOr<std::unique_ptr<Region>> AllocateRegion(uint64_t bytes, AllocateOptions options = {});
  // Registers caller-owned memory, which must outlive the Region. UCX reads from such memory by
  // local peers need this engine's progress thread (it runs while the engine is started). The
  // shm transport does not serve such regions (kAuto then picks UCX or TCP for this engine).
  StatusOr<std::unique_ptr<Region>> RegisterRegion(void* data, uint64_t bytes,
                                                   MemoryKind kind = MemoryKind::kHost);

  // Serialized ferry.v1.TransferBlob describing this engine and its current regions. What this
  // thread wrote to a region before the call is what peers reading through the blob get.
  std::string ExportBlob() const;

  // How busy serving peers was since the previous call, in [0, 1]: the fraction of that time
  // during which the TCP server was sending, or with max_upload_rate the share of the cap it
  // used, whichever is larger (a source's own `source_load`). shm and UCX reads are one-sided
  // and never counted.
  double TakeServingLoad();

  // Peers may read only the ranges of `region` that `allowed(offset, length)` accepts (a
  // target serving what it has verified while it still pulls); a read of any other range is
  // refused, and the reader takes it elsewhere. `allowed` is called from the serving threads,
  // concurrently: keep it short and thread-safe. Null: every range. FailedPrecondition when
  // the engine serves shm or UCX, whose reads are one-sided (the source never sees them).
  Status LimitServing(const Region& region, std::function<bool(uint64_t, uint64_t)> allowed);

  // Connects to the engine described by `blob` over `transport` (kAuto: see TransportKind).
  // InvalidArgument for a malformed blob; FailedPrecondition when neither side shares the
  // requested transport; Unavailable when the peer cannot be reached (names the address).
  StatusOr<std::unique_ptr<Peer>> Connect(std::string_view blob,
                                          TransportKind transport = TransportKind::kAuto);

  // The transports this engine serves, in preference order.
  std::vector<TransportKind> transports() const;
  const TransferEngineOptions& options() const;

  // Stops listeners and progress threads and fails peers' in-flight reads. Regions must be
  // destroyed by their owners (before or after). Idempotent.
  void Stop();

 private:
  explicit TransferEngine(std::shared_ptr<internal::EngineCore> core);
  std::shared_ptr<internal::EngineCore> core_;
};

}  // namespace ferry

#endif  // FERRY_TRANSFER_H_
