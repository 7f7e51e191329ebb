// The CUDA IPC transport (TransportKind::kCudaIpc): device memory between processes on one host,
// GPU to GPU. A source exports, per device region, every allocation behind it (found with
// cuda::FindAllocationPieces, exported whole by its base: a legacy IPC handle for cudaMalloc
// memory, a POSIX descriptor for cuMemCreate memory) and hands them out over the shm transport's
// authenticated socket protocol; a target imports each region once and copies from it on its
// own streams. Host regions are not served (shm, UCX and TCP serve them).
//
// Lifetime: RemoveRegion tells every target that imported the region and waits until each has
// unmapped it (or closed its connection), at most TransferEngineOptions-independent
// shm::ShmServerLimits::export_close_wait (10 s), before the caller frees the memory.
#ifndef FERRY_TRANSFER_CUDA_IPC_CUDA_IPC_TRANSPORT_H_
#define FERRY_TRANSFER_CUDA_IPC_CUDA_IPC_TRANSPORT_H_

#include <memory>

#include "ferry/transfer.h"
#include "transfer/cuda_ipc/ipc_memory.h"
#include "transfer/transport.h"

namespace ferry::internal {

// The transport over `memory` (the CUDA driver's, or a stand-in in tests).
StatusOr<std::unique_ptr<Transport>> CreateCudaIpcTransport(
    const TransferEngineOptions& options, std::shared_ptr<cuda_ipc::IpcMemory> memory);

}  // namespace ferry::internal

#endif  // FERRY_TRANSFER_CUDA_IPC_CUDA_IPC_TRANSPORT_H_
