// What the CUDA IPC transport needs from device memory, behind one interface: the transport
// (its protocol, descriptor batches, lifetime rules and copy scheduling) is the same code over
// the CUDA driver (cuda_memory.cc) and over memfds standing in for device allocations
// (testing/memfd_memory.h), so all of it runs in tests on machines without a GPU.
//
// Thread-safety: implementations are thread-safe.
#ifndef FERRY_TRANSFER_CUDA_IPC_IPC_MEMORY_H_
#define FERRY_TRANSFER_CUDA_IPC_IPC_MEMORY_H_

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/types/span.h"
#include "common/fd.h"
#include "cuda/allocation_pieces.h"
#include "ferry/status.h"

namespace ferry::internal::cuda_ipc {

// One allocation behind an exported region, as it travels to a target on the same host (native
// layout: both ends run the same build).
struct PieceRecord {
  uint64_t allocation_size;  // the whole allocation, mapped whole by the target
  uint64_t offset;           // where the region's bytes start in it
  uint64_t length;           // the region's bytes in it
  uint64_t region_offset;    // where they sit in the region
  uint32_t kind;             // cuda::ExportKind: kLegacyIpc, kPosixFd or kFabric
  uint32_t fd_index;         // kPosixFd: the index of its descriptor among those passed
  int32_t device;            // the source's device ordinal
  uint32_t reserved;
  // kLegacyIpc: the legacy IPC handle (CUipcMemHandle); kFabric: the CUmemFabricHandle.
  std::array<char, 64> handle;
};

// One allocation, exported: a handle (kLegacyIpc, kFabric) or a descriptor (kPosixFd).
struct ExportedAllocation {
  std::array<char, 64> handle{};
  Fd fd;
};

// An imported region, mapped into this process. Destroying it unmaps (closes) every piece.
class Mapping {
 public:
  virtual ~Mapping() = default;
  // The local address of the region's byte `offset`, and how many bytes from there are mapped
  // contiguously (to the end of the region, unless pieces had to be mapped apart).
  virtual std::pair<uint64_t, uint64_t> At(uint64_t offset) const = 0;
};

// The usual Mapping: the region as segments (region offset, length, local address), adjacent
// ones that continue each other in memory merged, so At() reports the longest contiguous run.
class SegmentMapping : public Mapping {
 public:
  struct Segment {
    uint64_t region_offset = 0;
    uint64_t length = 0;
    uint64_t address = 0;
  };
  // REQUIRES: `segments` cover the region in order, without gaps.
  explicit SegmentMapping(std::vector<Segment> segments);
  std::pair<uint64_t, uint64_t> At(uint64_t offset) const override;

 private:
  std::vector<Segment> segments_;
};

// One copy of a read: `length` bytes from `src` (in a Mapping) to `dst` (local memory).
struct CopyJob {
  uint64_t dst = 0;
  uint64_t src = 0;
  uint64_t length = 0;
};

class IpcMemory {
 public:
  virtual ~IpcMemory() = default;
  // "CUDA device 0", for messages.
  virtual const std::string& name() const = 0;
  // Whether a target may import what this same process exported (CUDA: no; cuIpcOpenMemHandle
  // refuses a handle of its own process).
  virtual bool OpensOwnExports() const = 0;

  // Source side: which allocation holds an address (cuda::FindAllocationPieces walks it).
  virtual const cuda::AllocationQuery& query() const = 0;
  // Source side: exports one whole allocation, by its base.
  virtual StatusOr<ExportedAllocation> Export(const cuda::AllocationInfo& allocation) = 0;

  // Target side: maps a region of `size` bytes from its records and the descriptors passed
  // with them (fds[record.fd_index]), every allocation whole; VMM pieces back to back in one
  // reserved range, so the region is one contiguous range. `local` is an address the region's
  // bytes will be copied to: CUDA maps in the context of the GPU holding it (the copies run
  // there too). InvalidArgument for records that do not describe `size` bytes in order; the
  // implementation's own errors otherwise. REQUIRES: the mapping is destroyed before this.
  virtual StatusOr<std::unique_ptr<Mapping>> Import(const std::vector<PieceRecord>& records,
                                                    std::vector<Fd> fds, uint64_t size,
                                                    uint64_t local) = 0;

  // Target side: runs `jobs` on the implementation's own streams (CUDA: those of the GPU holding
  // the first job's destination; unified addressing reaches the others), calling done(i) as job i
  // completes (from the calling thread, in any order). Polls `stop` between completions, at
  // least every 100 ms; once it is true no further job starts, the ones in flight are waited
  // for (the memory stays valid), and Cancelled is returned. Copy failures name the job.
  virtual Status Copy(absl::Span<const CopyJob> jobs, const std::function<bool()>& stop,
                      const std::function<void(size_t)>& done) = 0;
};

// Checks that `records` describe `size` bytes of a region in order, each within its allocation,
// with every kPosixFd record naming one of `fd_count` descriptors. InvalidArgument naming the
// first bad record.
Status ValidateRecords(const std::vector<PieceRecord>& records, size_t fd_count, uint64_t size);

// The IpcMemory of this process's CUDA driver, every device (cuda_memory.cc): the device of
// each allocation and destination comes from its pointer, and each is exported, mapped or
// copied in that device's primary context (retained on first use; a device this process does
// not use gets none). FailedPrecondition with the driver's or the build's reason where CUDA is
// not usable.
StatusOr<std::shared_ptr<IpcMemory>> OpenCudaIpcMemory();

}  // namespace ferry::internal::cuda_ipc

#endif  // FERRY_TRANSFER_CUDA_IPC_IPC_MEMORY_H_
