// The target side of the CUDA IPC transport: one control connection to a source on this host
// (the shm transport's authenticated socket protocol, shm_wire.h), each remote region imported
// on first use (every allocation behind it mapped whole; kept until the source removes the
// region or the connection closes), and copies on the IpcMemory's own streams straight from
// those mappings into local memory.
//
// Thread-safety: Execute is called by one thread at a time (transport.h); Close may be called
// from any thread (it stops the copies between pieces, then unmaps).
#ifndef FERRY_TRANSFER_CUDA_IPC_CUDA_IPC_PEER_H_
#define FERRY_TRANSFER_CUDA_IPC_CUDA_IPC_PEER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/fd.h"
#include "transfer/cuda_ipc/ipc_memory.h"
#include "transfer/transport.h"

namespace ferry::internal::cuda_ipc {

// Pieces copied at once per Execute round (each may be split where a mapping is not
// contiguous): enough to keep a few copy streams busy.
inline constexpr size_t kPiecesPerRound = 8;
// Bound on the records one region may announce (a model's expandable segments: thousands).
inline constexpr uint32_t kMaxRecords = 1 << 20;

class CudaIpcPeerConnection : public PeerConnection {
 public:
  // Connects to @socket_name with `secret`. Errors as shm::Greet.
  static StatusOr<std::unique_ptr<CudaIpcPeerConnection>> Create(const std::string& socket_name,
                                                                 const std::string& secret,
                                                                 std::shared_ptr<IpcMemory> memory,
                                                                 std::string description);
  ~CudaIpcPeerConnection() override;  // Close()

  Status Execute(ChunkFeed& feed) override;
  void Close() override;

 private:
  CudaIpcPeerConnection(Fd control, std::shared_ptr<IpcMemory> memory, std::string description);
  // Applies removal notices waiting on the control socket: unmaps those regions and tells the
  // source. Unavailable when the source closed the socket.
  Status DrainNotices() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Maps every region of `regions` not mapped yet (into mappings_; once per connection), their
  // requests pipelined (shm::OpenRegions); `local` is a destination of the read
  // (IpcMemory::Import). The first failure, after trying every region.
  Status MapAll(const std::vector<uint32_t>& regions, uint64_t local)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Unmap(uint32_t region) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::shared_ptr<IpcMemory> memory_;
  const std::string description_;
  std::atomic<bool> closing_{false};
  std::atomic<bool> broken_{false};
  absl::Mutex mu_;  // held for a whole Execute, and by Close
  Fd control_ ABSL_GUARDED_BY(mu_);
  std::map<uint32_t, std::unique_ptr<Mapping>> mappings_ ABSL_GUARDED_BY(mu_);
  std::set<uint32_t> removed_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::internal::cuda_ipc

#endif  // FERRY_TRANSFER_CUDA_IPC_CUDA_IPC_PEER_H_
