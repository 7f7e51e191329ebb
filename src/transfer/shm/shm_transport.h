// The native shared-memory Transport (CreateShmTransport in transport.h): same host only, truly
// one-sided. The source allocates regions as sealed memfds (Allocate) and serves them through a
// ShmServer; a target maps each region read-only once and copies with a few threads
// (ShmPeerConnection). Caller memory (RegisterRegion) cannot be handed out this way: such
// regions are accepted but not served, and the blob marks them so (RegionInfo.shm_served).
#ifndef FERRY_TRANSFER_SHM_SHM_TRANSPORT_H_
#define FERRY_TRANSFER_SHM_SHM_TRANSPORT_H_

#include <cstdint>

#include "ferry/status.h"
#include "transfer/transport.h"

namespace ferry::internal::shm {

// Allocation::handle of the memory Allocate returns: the memfd backing it.
struct MemfdHandle {
  int memfd = -1;
};

// A memfd of `bytes` (MFD_CLOEXEC | MFD_ALLOW_SEALING), mapped MAP_SHARED | MAP_POPULATE
// read-write into this process, then sealed against growing, shrinking and any later writable
// mapping (F_SEAL_FUTURE_WRITE): only this mapping can ever change it, so a target cannot write
// through it even if it reopens the descriptor it was given. Release with FreeMemfd.
StatusOr<Allocation> AllocateMemfd(uint64_t bytes, bool prefault = true);
void FreeMemfd(const Allocation& allocation);

}  // namespace ferry::internal::shm

#endif  // FERRY_TRANSFER_SHM_SHM_TRANSPORT_H_
