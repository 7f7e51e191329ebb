// The engine's Peer: op validation against the remote blob, one read at a time per Peer, the
// read itself in the read core (read_core.h).
#ifndef FERRY_TRANSFER_PEER_H_
#define FERRY_TRANSFER_PEER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "cuda/device.h"
#include "ferry/transfer.h"
#include "transfer/transport.h"

namespace ferry::internal {

struct PeerSetup {
  std::shared_ptr<PeerConnection> connection;
  TransportKind kind = TransportKind::kTcp;
  std::string description;
  // The remote blob's regions (id -> bytes), against which reads are validated, and which of
  // them are device memory (the source stages those over a host transport).
  std::map<uint32_t, uint64_t> region_sizes;
  std::set<uint32_t> remote_device_regions;
  uint64_t chunk_bytes = 8ull << 20;
  std::string choice;  // Peer::choice()
  // Whether the transport writes local device memory itself (Transport::Writes(kCuda)). When
  // it does not, a read landing in device memory goes through a StagedConnection into
  // `local_device(op.local)`: the Device of the GPU holding that local memory, or null for host
  // memory. Null local_device: every destination is host memory.
  bool writes_device = false;
  std::function<StatusOr<cuda::Device*>(const void* local)> local_device;
  int staging_slots = 4;
  uint64_t staging_slot_bytes = 8ull << 20;
};

std::unique_ptr<Peer> MakePeer(PeerSetup setup);

// InvalidArgument naming the first bad op (index and range) and `description`; OK otherwise.
Status ValidateOps(const std::vector<ReadOp>& ops, const std::map<uint32_t, uint64_t>& sizes,
                   const std::string& description);

}  // namespace ferry::internal

#endif  // FERRY_TRANSFER_PEER_H_
