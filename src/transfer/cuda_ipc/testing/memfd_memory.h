// Test only (never linked into a shipped binary): an IpcMemory whose "device allocations" are
// memfds, so the CUDA IPC transport runs end to end without a GPU. Allocate() makes an
// expandable-segments-like range (chunks mapped back to back, exported as descriptors, imported
// into one reserved range like cuMemMap) or cudaMalloc-like blocks (exported by a handle naming
// the descriptor, imported apart like cuIpcOpenMemHandle), or memory that cannot be exported.
//
// Thread-safety: thread-safe.
#ifndef FERRY_TRANSFER_CUDA_IPC_TESTING_MEMFD_MEMORY_H_
#define FERRY_TRANSFER_CUDA_IPC_TESTING_MEMFD_MEMORY_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "transfer/cuda_ipc/ipc_memory.h"

namespace ferry::internal::cuda_ipc {

class MemfdMemory : public IpcMemory {
 public:
  MemfdMemory();
  ~MemfdMemory() override;

  // `chunks` allocations of `chunk_bytes` (a page multiple) mapped back to back; returns the
  // first byte. Lives until the MemfdMemory does.
  StatusOr<char*> Allocate(uint64_t chunk_bytes, int chunks, cuda::ExportKind kind);

  // While true, Export fails as a driver out of descriptors would (ResourceExhausted).
  void FailExports(bool fail) { fail_exports_ = fail; }
  // Fails the copy job with this index (counted over the object's life) with DataLoss.
  void FailCopyNumber(uint64_t n) { fail_copy_ = n; }
  uint64_t copies() const { return copies_.load(); }
  int live_imports() const { return live_imports_.load(); }
  // Behave like CUDA, which cannot import its own process's exports.
  void RefuseOwnExports() { opens_own_exports_ = false; }
  // The `local` of the latest Import (0 before any).
  uint64_t last_import_local() const { return last_import_local_.load(); }

  const std::string& name() const override { return name_; }
  bool OpensOwnExports() const override { return opens_own_exports_.load(); }
  const cuda::AllocationQuery& query() const override;
  StatusOr<ExportedAllocation> Export(const cuda::AllocationInfo& allocation) override;
  StatusOr<std::unique_ptr<Mapping>> Import(const std::vector<PieceRecord>& records,
                                            std::vector<Fd> fds, uint64_t size,
                                            uint64_t local) override;
  Status Copy(absl::Span<const CopyJob> jobs, const std::function<bool()>& stop,
              const std::function<void(size_t)>& done) override;

 private:
  struct Chunk {
    Fd memfd;
    uint64_t size = 0;
    cuda::ExportKind kind;
  };
  class Table;
  class Imported;

  const std::string name_ = "memfd stand-in device";
  std::unique_ptr<Table> query_;
  absl::Mutex mu_;
  std::map<uint64_t, Chunk> chunks_ ABSL_GUARDED_BY(mu_);  // by base address
  std::vector<std::pair<void*, uint64_t>> reservations_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> copies_{0};
  std::atomic<uint64_t> fail_copy_{UINT64_MAX};
  std::atomic<int> live_imports_{0};
  std::atomic<bool> opens_own_exports_{true};
  std::atomic<bool> fail_exports_{false};
  std::atomic<uint64_t> last_import_local_{0};
};

}  // namespace ferry::internal::cuda_ipc

#endif  // FERRY_TRANSFER_CUDA_IPC_TESTING_MEMFD_MEMORY_H_
