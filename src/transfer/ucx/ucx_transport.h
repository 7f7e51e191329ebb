// The UCX transport. As a source it owns one UCX context and one worker, whose address goes in
// the blob; regions are ucp_mem_map'ed (UCX-allocated shared memory when the engine allocates
// through us, so local peers read it one-sided with no work on our side) and their packed rkeys
// go in the blob. As a target every PeerConnection gets its own worker (see ucx_peer.h).
//
// Thread-safety: thread-safe (the Transport contract). The source worker is driven only by the
// progress thread; the other methods touch only context-level UCX calls (ucp_mem_map,
// ucp_rkey_pack), which UCX makes thread-safe for a context created with mt_workers_shared.
#ifndef FERRY_TRANSFER_UCX_UCX_TRANSPORT_H_
#define FERRY_TRANSFER_UCX_UCX_TRANSPORT_H_

#include <ucp/api/ucp.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "cuda/allocation_pieces.h"
#include "ferry/status.h"
#include "ferry/transfer.h"
#include "transfer/transport.h"

namespace ferry::internal {

// How the transport registers device memory for GPUDirect RDMA: each allocation behind a region
// on its own (`allocations` says which allocation holds an address), as `memory_type`.
struct UcxDeviceMemory {
  std::shared_ptr<const cuda::AllocationQuery> allocations;
  ucs_memory_type_t memory_type = UCS_MEMORY_TYPE_CUDA;
};

// Knobs that are not engine options: fixed in production, varied by tests and benchmarks.
struct UcxTuning {
  // Run the source progress thread. Needed for reads of memory UCX did not allocate and for
  // UCX over TCP; idle otherwise (measured: no effect on shared-memory reads of UCX-allocated
  // memory, see docs/benchmarks.md).
  bool progress_thread = true;
  // How often a worker checks that its peers are alive (UCX_KEEPALIVE_INTERVAL). A killed
  // source is reported by a reading target within about this long (UCX's default is 20 s).
  absl::Duration keepalive_interval = absl::Seconds(1);
  // Further UCX settings (name without UCX_, value) for experiments; applied last.
  std::vector<std::pair<std::string, std::string>> extra_config;
  // Device memory. Unset: the CUDA driver's allocations, served only when the UCX loaded lists
  // CUDA memory (UcxSupportsCuda) and an RDMA device is available (GPUDirect RDMA), and read
  // into only when UCX lists CUDA memory. Tests set it to host memory standing in for device
  // allocations, which is then served and read regardless.
  std::optional<UcxDeviceMemory> device_memory;
};

// Never starts UCX's tcp transport (see UcxTlsSetting). Starts whether or not an RDMA device
// exists: EngineCore decides that (ucx_without_rdma).
StatusOr<std::unique_ptr<Transport>> CreateUcxTransport(const TransferEngineOptions& options,
                                                        const UcxTuning& tuning);

// Whether this host has an RDMA device that `options` (ucx_transports, ucx_net_devices) lets
// UCX use.
bool UcxRdmaAvailable(const TransferEngineOptions& options);

// Whether an RDMA device `options` let UCX use can register CUDA memory (GPUDirect RDMA: the
// nvidia-peermem module or DMA-BUF). Without one UCX still maps device memory, on its CUDA
// transports only, which a remote NIC cannot read.
bool UcxRdmaRegistersCuda(const TransferEngineOptions& options);

// Whether `context` lists CUDA among its memory types (a UCX built with CUDA: cuda_copy,
// cuda_ipc). Debian's UCX does not.
bool UcxSupportsCuda(ucp_context_h context);

// The UCX_TLS value for `requested` (TransferEngineOptions::ucx_transports): UCX's tcp transport
// removed. Empty or "all": "^tcp"; a negated list gets ",tcp" appended; a list that names tcp
// (or "all") is InvalidArgument. UCX over tcp emulates gets in software and serves any address
// to any peer that reaches its listening port, before any authentication.
StatusOr<std::string> UcxTlsSetting(const std::string& requested);

}  // namespace ferry::internal

#endif  // FERRY_TRANSFER_UCX_UCX_TRANSPORT_H_
