// Reads into device memory over a transport that moves host memory (TCP): the target half of
// "pipelined staging" (docs/architecture.md, "GPU memory"). StagedConnection decorates any
// PeerConnection. It hands the inner connection pieces that land in pinned host slots (cut so
// that none crosses a slot), and as each lands it enqueues a host-to-device copy into the real
// destination; the outer piece is Done only once every copy into it completed. A slot is reused
// only after the copies out of it completed, so with two or more slots the next window is on the
// wire while the previous one is copied.
//
// Device addresses travel in Chunk::local (a CUdeviceptr cast to char*), as the engine passes
// them for regions of MemoryKind::kCuda.
//
// Thread-safety: as PeerConnection (transport.h): Execute by one thread at a time, Close from
// any thread; stats() from any thread.
#ifndef FERRY_TRANSFER_STAGING_STAGED_CONNECTION_H_
#define FERRY_TRANSFER_STAGING_STAGED_CONNECTION_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "cuda/device.h"
#include "transfer/transport.h"

namespace ferry::internal::staging {

struct StagingOptions {
  // Bytes of one pinned slot (> 0); no inner piece crosses a slot. Default 4 MiB.
  uint64_t slot_bytes = 4ull << 20;
  // Slots (>= 1). One slot serializes the wire and the copies; two or more overlap them.
  int slots = 4;
  // Optional: sees every staged piece (piece.local: its bytes in the slot; remote_region and
  // remote_offset: where they came from) before its host-to-device copy to `device_address`.
  // An error fails the read with that status. Called from the inner connection's threads,
  // possibly several at once.
  std::function<Status(const Chunk& piece, uint64_t device_address)> verify;
};

// Counters for tests and reports.
struct StagingStats {
  uint64_t pieces_staged = 0;     // inner pieces that landed in a slot
  uint64_t copies_completed = 0;  // host-to-device copies that completed
  // Inner pieces that landed while an earlier host-to-device copy was still running: the wire
  // and the copies overlapped.
  uint64_t landed_while_copying = 0;
  // Times a piece had to wait for a slot's copies to complete before it could be handed out.
  uint64_t slot_waits = 0;
  // Times a thread of the inner connection was told there is nothing for it after waiting too
  // long for a slot that other threads' pieces on the wire held.
  uint64_t gave_up = 0;
};

class StagedConnection final : public PeerConnection {
 public:
  // Takes `inner`; borrows `device` (it must outlive this). Allocates slots * slot_bytes of
  // pinned memory and a copy stream. InvalidArgument naming the bad option field; the device's
  // error when it cannot allocate.
  static StatusOr<std::unique_ptr<StagedConnection>> Create(std::unique_ptr<PeerConnection> inner,
                                                            cuda::Device* device,
                                                            StagingOptions options,
                                                            std::string description);
  ~StagedConnection() override;
  StagedConnection(const StagedConnection&) = delete;
  StagedConnection& operator=(const StagedConnection&) = delete;

  // As PeerConnection::Execute. Returns only after every copy it enqueued completed (so the
  // destination may be freed once it returns, whatever the outcome). Failures: the inner
  // connection's status unchanged; a failed copy: the stream's code with "staged read from
  // <description> failed: host-to-device copy of region R [a, b) into <device> ..."; a verify
  // error: its code and message, with the same prefix. After a failed copy the connection
  // refuses further reads (FailedPrecondition): the device stream is unusable.
  Status Execute(ChunkFeed& feed) override;
  void Close() override;

  StagingStats stats() const;

 private:
  class InnerFeed;
  struct OuterPiece {
    Chunk chunk;
    uint64_t cut = 0;  // bytes handed to the inner connection so far
    int open = 0;      // inner pieces whose copy has not completed
  };
  struct InnerPiece {
    Chunk chunk;  // local: the slot bytes
    uint32_t outer = 0;
    uint64_t device_address = 0;
    int slot = 0;
    std::thread::id owner;  // the inner thread that took it
    bool landed = false;
  };
  struct PendingCopy {
    cuda::CopyMarker marker;
    uint32_t inner = 0;
  };

  StagedConnection(std::unique_ptr<PeerConnection> inner, cuda::Device* device,
                   StagingOptions options, std::string description,
                   std::unique_ptr<cuda::PinnedMemory> slots, std::unique_ptr<cuda::CopyStream>);

  // InnerFeed's methods.
  bool NextInner(Chunk* chunk);
  void InnerDone(const Chunk& chunk);
  bool Stopping() const;

  // Retires completed copies in order until the round is over and no copy is pending.
  void Complete();
  // Records the first failure of this read (later ones are dropped).
  void Fail(Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether the slot after the current one can take pieces; may wait for its copies.
  bool AdvanceSlot() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::unique_ptr<PeerConnection> inner_;
  cuda::Device* const device_;
  const StagingOptions options_;
  const std::string description_;
  const std::unique_ptr<cuda::PinnedMemory> slots_;
  const std::unique_ptr<cuda::CopyStream> stream_;
  std::atomic<bool> closed_{false};
  std::atomic<bool> broken_{false};  // a copy failed: the stream is unusable

  mutable absl::Mutex mu_;
  ChunkFeed* feed_ ABSL_GUARDED_BY(mu_) = nullptr;  // the outer feed, during Execute
  std::atomic<bool> failed_flag_{false};            // failed_ is set (cheap for stopping())
  // feed_ for stopping(), which the inner connection polls often: read without the lock.
  std::atomic<ChunkFeed*> stopping_feed_{nullptr};
  Status failed_ ABSL_GUARDED_BY(mu_);
  bool round_over_ ABSL_GUARDED_BY(mu_) = false;  // the inner Execute returned
  std::map<uint32_t, OuterPiece> outer_ ABSL_GUARDED_BY(mu_);
  std::optional<uint32_t> partial_ ABSL_GUARDED_BY(mu_);  // the outer piece being cut
  std::map<uint32_t, InnerPiece> inner_pieces_ ABSL_GUARDED_BY(mu_);
  // Pieces on the wire (handed out, not landed) per inner thread: a thread that has some must
  // never wait in Next, or it would hold up their arrival (and the slots they fill).
  std::map<std::thread::id, int> on_wire_ ABSL_GUARDED_BY(mu_);
  std::deque<PendingCopy> copies_ ABSL_GUARDED_BY(mu_);
  std::vector<int> slot_users_ ABSL_GUARDED_BY(mu_);  // inner pieces not yet copied, per slot
  int current_slot_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t current_offset_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t next_inner_index_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t landed_in_round_ ABSL_GUARDED_BY(mu_) = 0;
  StagingStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::internal::staging

#endif  // FERRY_TRANSFER_STAGING_STAGED_CONNECTION_H_
