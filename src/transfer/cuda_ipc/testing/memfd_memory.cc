#include "transfer/cuda_ipc/testing/memfd_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace ferry::internal::cuda_ipc {

// The allocation table, answering like cuMemGetAddressRange.
class MemfdMemory::Table : public cuda::AllocationQuery {
 public:
  explicit Table(MemfdMemory& owner) : owner_(owner) {}
  StatusOr<cuda::AllocationInfo> Find(uint64_t address) const override {
    absl::MutexLock lock(&owner_.mu_);
    auto it = owner_.chunks_.upper_bound(address);
    if (it == owner_.chunks_.begin()) return absl::NotFoundError("no allocation");
    --it;
    if (address - it->first >= it->second.size) return absl::NotFoundError("no allocation");
    return cuda::AllocationInfo{it->first, it->second.size, it->second.kind};
  }

 private:
  MemfdMemory& owner_;
};

// An import: one reserved range holding every descriptor piece back to back, legacy pieces
// mapped apart.
class MemfdMemory::Imported : public SegmentMapping {
 public:
  Imported(std::vector<Segment> segments, std::vector<std::pair<void*, uint64_t>> maps,
           std::atomic<int>& live)
      : SegmentMapping(std::move(segments)), maps_(std::move(maps)), live_(live) {
    ++live_;
  }
  ~Imported() override {
    for (auto& [p, n] : maps_) ::munmap(p, n);
    --live_;
  }

 private:
  std::vector<std::pair<void*, uint64_t>> maps_;
  std::atomic<int>& live_;
};

MemfdMemory::MemfdMemory() : query_(std::make_unique<Table>(*this)) {}

const cuda::AllocationQuery& MemfdMemory::query() const { return *query_; }

MemfdMemory::~MemfdMemory() {
  absl::MutexLock lock(&mu_);
  for (auto& [p, n] : reservations_) ::munmap(p, n);
}

StatusOr<char*> MemfdMemory::Allocate(uint64_t chunk_bytes, int chunks, cuda::ExportKind kind) {
  const uint64_t total = chunk_bytes * chunks;
  void* base = ::mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return absl::ResourceExhaustedError("reserving the range failed");
  absl::MutexLock lock(&mu_);
  reservations_.emplace_back(base, total);
  for (int i = 0; i < chunks; ++i) {
    Fd memfd(::memfd_create("ferry-fake-device", MFD_CLOEXEC));
    if (!memfd.valid() || ::ftruncate(memfd.get(), chunk_bytes) != 0) {
      return absl::ResourceExhaustedError(absl::StrCat("memfd: ", ErrnoText(errno)));
    }
    char* at = static_cast<char*>(base) + i * chunk_bytes;
    if (::mmap(at, chunk_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, memfd.get(), 0) ==
        MAP_FAILED) {
      return absl::ResourceExhaustedError(absl::StrCat("mmap: ", ErrnoText(errno)));
    }
    chunks_.emplace(reinterpret_cast<uint64_t>(at), Chunk{std::move(memfd), chunk_bytes, kind});
  }
  return static_cast<char*>(base);
}

StatusOr<ExportedAllocation> MemfdMemory::Export(const cuda::AllocationInfo& allocation) {
  if (fail_exports_.load()) {
    return absl::ResourceExhaustedError("exporting failed (injected: out of descriptors)");
  }
  absl::MutexLock lock(&mu_);
  auto it = chunks_.find(allocation.base);
  if (it == chunks_.end()) return absl::NotFoundError("not an allocation base");
  ExportedAllocation out;
  if (allocation.kind == cuda::ExportKind::kPosixFd) {
    out.fd = Fd(::fcntl(it->second.memfd.get(), F_DUPFD_CLOEXEC, 0));
    if (!out.fd.valid()) return absl::InternalError(absl::StrCat("dup: ", ErrnoText(errno)));
  } else {
    // A "legacy" or "fabric" handle: names the descriptor in this process, as a CUDA handle
    // names memory.
    const std::string name = absl::StrCat("/proc/", ::getpid(), "/fd/", it->second.memfd.get());
    std::memcpy(out.handle.data(), name.data(), std::min(name.size(), out.handle.size() - 1));
  }
  return out;
}

StatusOr<std::unique_ptr<Mapping>> MemfdMemory::Import(const std::vector<PieceRecord>& records,
                                                       std::vector<Fd> fds, uint64_t size,
                                                       uint64_t local) {
  FERRY_RETURN_IF_ERROR(ValidateRecords(records, fds.size(), size));
  last_import_local_ = local;  // one "device": recorded for tests only
  uint64_t reserve = 0;
  for (const PieceRecord& r : records) {
    if (cuda::IsVmmExport(static_cast<cuda::ExportKind>(r.kind))) reserve += r.allocation_size;
  }
  std::vector<std::pair<void*, uint64_t>> maps;
  auto unmap_all = [&] {
    for (auto& [p, n] : maps) ::munmap(p, n);
  };
  char* range = nullptr;
  if (reserve > 0) {
    void* p = ::mmap(nullptr, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return absl::ResourceExhaustedError("reserving the import range failed");
    range = static_cast<char*>(p);
    maps.emplace_back(p, reserve);
  }
  std::vector<SegmentMapping::Segment> segments;
  uint64_t at = 0;
  for (const PieceRecord& r : records) {
    char* base;
    const auto kind = static_cast<cuda::ExportKind>(r.kind);
    if (cuda::IsVmmExport(kind)) {
      // Fabric handles name the descriptor in the source process, like the legacy ones.
      Fd named;
      if (kind == cuda::ExportKind::kFabric) {
        const std::string name(r.handle.data(), strnlen(r.handle.data(), r.handle.size()));
        named = Fd(::open(name.c_str(), O_RDONLY | O_CLOEXEC));
      }
      const int fd = kind == cuda::ExportKind::kFabric ? named.get() : fds[r.fd_index].get();
      base = range + at;
      if (fd < 0 ||
          ::mmap(base, r.allocation_size, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
        unmap_all();
        return absl::InternalError(absl::StrCat("mapping a VMM piece: ", ErrnoText(errno)));
      }
      at += r.allocation_size;
    } else {
      const std::string name(r.handle.data(), strnlen(r.handle.data(), r.handle.size()));
      Fd fd(::open(name.c_str(), O_RDONLY | O_CLOEXEC));
      void* p = fd.valid() ? ::mmap(nullptr, r.allocation_size, PROT_READ, MAP_SHARED, fd.get(), 0)
                           : MAP_FAILED;
      if (p == MAP_FAILED) {
        unmap_all();
        return absl::InternalError(absl::StrCat("opening handle ", name, ": ", ErrnoText(errno)));
      }
      maps.emplace_back(p, r.allocation_size);
      base = static_cast<char*>(p);
    }
    segments.push_back({r.region_offset, r.length, reinterpret_cast<uint64_t>(base) + r.offset});
  }
  return std::unique_ptr<Mapping>(
      new Imported(std::move(segments), std::move(maps), live_imports_));
}

Status MemfdMemory::Copy(absl::Span<const CopyJob> jobs, const std::function<bool()>& stop,
                         const std::function<void(size_t)>& done) {
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (stop()) return absl::CancelledError("stopped between copies");
    if (copies_.fetch_add(1) == fail_copy_.load()) {
      return absl::DataLossError(
          absl::StrCat("copy ", i, " of ", jobs[i].length, " bytes failed (injected)"));
    }
    std::memcpy(reinterpret_cast<void*>(jobs[i].dst), reinterpret_cast<const void*>(jobs[i].src),
                jobs[i].length);
    done(i);
  }
  return absl::OkStatus();
}

}  // namespace ferry::internal::cuda_ipc
