// The target side of the shm transport: one control connection to a source on this host, the
// source's regions mapped read-only on first use (kept until Close), and copies by a few
// threads straight from those mappings.
//
// A source that dies (or is stopped) after a region was mapped leaves its pages alive in the
// mapping: a read already copying completes with the data. The next read notices the closed
// control connection and fails with Unavailable; likewise a region removed by the source is
// refused (NotFound) from the next read on.
//
// Thread-safety: Execute is called by one thread at a time (transport.h); Close may be called
// from any thread, concurrently with Execute (it stops the copy between pieces, then unmaps).
#ifndef FERRY_TRANSFER_SHM_SHM_PEER_H_
#define FERRY_TRANSFER_SHM_SHM_PEER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "transfer/shm/shm_wire.h"
#include "transfer/transport.h"

namespace ferry::internal::shm {

struct ShmPeerOptions {
  int copy_threads = 2;  // 1..16, the calling thread included
};

class ShmPeerConnection : public PeerConnection {
 public:
  // Connects to @socket_name and authenticates with `secret`. Unavailable naming the socket when
  // nobody listens there; PermissionDenied when the source refuses the secret.
  static StatusOr<std::unique_ptr<ShmPeerConnection>> Create(const std::string& socket_name,
                                                             const std::string& secret,
                                                             ShmPeerOptions options,
                                                             std::string description);
  ~ShmPeerConnection() override;  // Close()

  Status Execute(ChunkFeed& feed) override;
  void Close() override;

 private:
  struct Mapping {
    const char* data = nullptr;
    uint64_t size = 0;
  };

  ShmPeerConnection(Fd control, ShmPeerOptions options, std::string description);
  // Applies removal notices waiting on the control socket. Unavailable when the source closed
  // it (stopped or exited).
  Status DrainNotices() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Opens and maps every region of `regions` not mapped yet (into mappings_), their requests
  // pipelined (OpenRegions). The first failure, after trying every region.
  Status MapAll(const std::vector<uint32_t>& regions) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Unmap() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ShmPeerOptions options_;
  const std::string description_;
  std::atomic<bool> closing_{false};
  std::atomic<bool> broken_{false};

  // Held for the whole of Execute, so Close cannot unmap under a copy.
  absl::Mutex mu_;
  Fd control_ ABSL_GUARDED_BY(mu_);
  std::map<uint32_t, Mapping> mappings_ ABSL_GUARDED_BY(mu_);
  std::set<uint32_t> removed_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::internal::shm

#endif  // FERRY_TRANSFER_SHM_SHM_PEER_H_
