// The target side of the UCX transport: one connection to a remote engine's worker.
//
// Design: each connection has its own UCX worker, driven by the thread that calls Read (and by
// Close). The engine runs one batch per Peer at a time, so a worker per connection needs no
// queue and no hand-off between threads, and a busy connection never waits behind another one.
// (The alternative, one shared worker owned by a progress thread with a request queue, adds a
// thread hop per chunk and a second place where completions must be routed back.) A worker
// costs a few shared-memory FIFOs and one address; connections are few (one per source).
//
// Thread-safety: thread-safe; Read and Close serialize on a mutex (Close waits for a running
// Read, which returns promptly after cancellation or its deadline).
#ifndef FERRY_TRANSFER_UCX_UCX_PEER_H_
#define FERRY_TRANSFER_UCX_UCX_PEER_H_

#include <memory>
#include <string>

#include "ferry/status.h"
#include "ferry/transfer.h"
#include "ferry/v1/transfer.pb.h"
#include "transfer/transport.h"
#include "transfer/ucx/ucx_handles.h"

namespace ferry::internal::ucx {

// Connects to `remote` (which must have a ucx section): creates the worker and an endpoint with
// peer-failure detection, and unpacks every region's rkey. Unavailable naming `description`
// when the address or an rkey cannot be used (e.g. the source process is gone).
StatusOr<std::unique_ptr<PeerConnection>> ConnectUcxPeer(std::shared_ptr<Context> context,
                                                         const TransferEngineOptions& options,
                                                         const ferry::v1::TransferBlob& remote,
                                                         const std::string& description);

}  // namespace ferry::internal::ucx

#endif  // FERRY_TRANSFER_UCX_UCX_PEER_H_
