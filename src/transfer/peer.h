// The engine's Peer: op validation against the remote blob, one read at a time per Peer, the
// read itself in the read core (read_core.h).
#ifndef FERRY_TRANSFER_PEER_H_
#define FERRY_TRANSFER_PEER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "ferry/transfer.h"
#include "transfer/transport.h"

namespace ferry::internal {

// `region_sizes` are the remote blob's regions (id -> bytes), against which Submit validates;
// `choice` is Peer::choice().
std::unique_ptr<Peer> MakePeer(std::shared_ptr<PeerConnection> connection, TransportKind kind,
                               std::string description, std::map<uint32_t, uint64_t> region_sizes,
                               uint64_t chunk_bytes, std::string choice = "");

// InvalidArgument naming the first bad op (index and range) and `description`; OK otherwise.
Status ValidateOps(const std::vector<ReadOp>& ops, const std::map<uint32_t, uint64_t>& sizes,
                   const std::string& description);

}  // namespace ferry::internal

#endif  // FERRY_TRANSFER_PEER_H_
