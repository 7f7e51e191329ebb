// The engine behind TransferEngine: the enabled transports, the region table, the blob, and
// transport selection for Connect. TransferEngine and every Region share it, so a Region may
// outlive its engine object.
//
// Thread-safety: thread-safe.
#ifndef FERRY_TRANSFER_ENGINE_CORE_H_
#define FERRY_TRANSFER_ENGINE_CORE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "cuda/device_allocation.h"
#include "cuda/device_pool.h"
#include "ferry/transfer.h"
#include "transfer/transport.h"

namespace ferry::internal {

class EngineCore : public std::enable_shared_from_this<EngineCore> {
 public:
  // REQUIRES: options.Validate() is OK.
  static StatusOr<std::shared_ptr<EngineCore>> Create(TransferEngineOptions options);
  ~EngineCore();  // Stop()
  EngineCore(const EngineCore&) = delete;
  EngineCore& operator=(const EngineCore&) = delete;

  StatusOr<std::unique_ptr<Region>> AllocateRegion(uint64_t bytes, const AllocateOptions& options);
  StatusOr<std::unique_ptr<Region>> RegisterRegion(void* data, uint64_t bytes, MemoryKind kind);
  // Called by ~Region: removes the region from every transport, then frees memory the engine
  // allocated for it. Idempotent.
  void RemoveRegion(uint32_t id);

  std::string ExportBlob() const;
  // TransferEngine::TakeServingLoad: the busiest transport's figure.
  double TakeLoad();
  // TransferEngine::LimitServing.
  Status LimitRegion(uint32_t id, std::function<bool(uint64_t, uint64_t)> allowed);
  StatusOr<std::unique_ptr<Peer>> Connect(std::string_view blob, TransportKind kind);

  std::vector<TransportKind> transports() const;
  // The Device of the GPU holding `local` when it lies in a device region of this engine (a
  // read into it is staged over host transports), null for any other memory.
  StatusOr<cuda::Device*> LocalDevice(const void* local);
  const TransferEngineOptions& options() const { return options_; }
  void Stop();

 private:
  struct RegionRecord {
    void* data = nullptr;
    uint64_t size = 0;
    MemoryKind kind = MemoryKind::kHost;
    bool engine_owned = false;       // AllocateRegion: freed on removal
    Transport* allocator = nullptr;  // the transport that allocated it; nullptr: mmap
    Allocation allocation;
    // MemoryKind::kCuda memory the engine allocated (freed after every transport let go).
    std::shared_ptr<cuda::DeviceAllocation> device_memory;
  };

  EngineCore(TransferEngineOptions options, std::vector<std::unique_ptr<Transport>> transports,
             std::shared_ptr<cuda::DevicePool> devices);
  // Registers `record` with every transport under a fresh id. On failure, undoes the partial
  // registration (the caller frees engine-owned memory).
  StatusOr<std::unique_ptr<Region>> AddRegion(RegionRecord record);
  Transport* Find(TransportKind kind) const;
  // The transports to try for `remote`, best first, and why (kAuto: each transport of this
  // engine's preference order that the peer offers, reaches from here (Transport::Reaches) and
  // that serves every region in its blob (Transport::Serves); an explicit `wanted` alone), or
  // FailedPrecondition naming what each side offers and why each transport was passed over.
  struct Choice {
    std::vector<Transport*> candidates;  // never empty
    std::string reason;                  // kAuto: "auto chose tcp (shm: ...; ucx: ...)"
  };
  StatusOr<Choice> Candidates(const ferry::v1::TransferBlob& remote, TransportKind wanted) const;

  const TransferEngineOptions options_;
  // The GPUs this engine uses, shared with the TCP transport (declared first: it outlives them).
  const std::shared_ptr<cuda::DevicePool> devices_;
  const std::vector<std::unique_ptr<Transport>> transports_;  // preference order
  const std::string engine_id_;
  const std::string hostname_;
  const std::string boot_id_;
  const std::string net_namespace_;  // "net:[inode]"; see TransferBlob.net_namespace

  mutable absl::Mutex mu_;
  uint32_t next_region_id_ ABSL_GUARDED_BY(mu_) = 0;
  // Device regions registered now: while none is, reads skip the per-op region lookup.
  std::atomic<int> device_regions_{0};
  std::map<uint32_t, RegionRecord> regions_ ABSL_GUARDED_BY(mu_);
  absl::Mutex stop_mu_;
  bool stopped_ ABSL_GUARDED_BY(stop_mu_) = false;
};

}  // namespace ferry::internal

#endif  // FERRY_TRANSFER_ENGINE_CORE_H_
