// The read core: every read of the engine, over one connection or several, runs here. It cuts
// ops into pieces, hands them to the connections' transports (ChunkFeed), counts what landed,
// reports progress, enforces the deadline, cancellation and the stall timeout, moves a failed
// or stalled connection's unfinished pieces to the others, and writes the one error message
// (naming the peer and the first unfinished range). Transports only execute pieces.
//
// Threads: the caller runs the first connection; each further connection gets one thread; one
// watcher thread runs while a stall timeout or a progress callback is set.
#ifndef FERRY_TRANSFER_READ_CORE_H_
#define FERRY_TRANSFER_READ_CORE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "ferry/status.h"
#include "ferry/transfer.h"
#include "transfer/transport.h"

namespace ferry::internal {

// One connection a read may use, with the engine's text for its peer and its ops. Every
// connection's ops describe the same local bytes (see PeerRead).
struct ReadConnection {
  PeerConnection* connection = nullptr;
  std::string description;
  std::vector<ReadOp> ops;
  const std::atomic<bool>* drop = nullptr;  // optional; see PeerRead::drop
  // Optional: whether this connection's peer serves a piece now (see PeerRead::serves).
  std::function<bool(const ReadOp& piece)> serves;
  std::function<bool(const ReadOp& piece)> fills;  // optional; see PeerRead::fills
  std::function<bool(const ReadOp& piece)> own;    // optional; see PeerRead::own
};

// Reads the connections' ops (validated against each connection's remote regions) in pieces of
// at most `chunk_bytes`. OK when every byte landed; otherwise the error of the last connection
// that failed (all of them, listed, when there were several), or Cancelled, DeadlineExceeded
// (deadline or stall), each naming the first unfinished range. InvalidArgument when the
// connections' ops do not cut into the same local pieces. `outcomes` (optional) gets one entry
// per connection.
Status RunRead(absl::Span<const ReadConnection> connections, uint64_t chunk_bytes,
               const ReadOptions& options, std::vector<PeerOutcome>* outcomes = nullptr);

// `ops` cut into pieces of at most `chunk_bytes` (> 0), indexed in order, zero-length ops
// dropped; `regions` gets the distinct remote regions they touch, ascending. InvalidArgument
// beyond 2^32 - 1 pieces (the index is a TCP request id).
StatusOr<std::vector<Chunk>> CutIntoPieces(const std::vector<ReadOp>& ops, uint64_t chunk_bytes,
                                           std::vector<uint32_t>* regions);

}  // namespace ferry::internal

#endif  // FERRY_TRANSFER_READ_CORE_H_
