// OpenCudaIpcMemory for CUDA builds: the driver's IPC calls (legacy handles for cudaMalloc
// memory, POSIX descriptors for cuMemCreate memory), VMM imports mapped back to back into one
// reserved range, and copies on a few streams with an event per job.
//
// One context: device 0's primary context (the one PyTorch and the runtime use), made current on
// every calling thread. Unified addressing lets it copy to and from any device's memory.
#include <sched.h>

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "cuda/driver.h"
#include "cuda/driver_api.h"
#include "cuda/primary_context.h"
#include "transfer/cuda_ipc/ipc_memory.h"

namespace ferry::internal::cuda_ipc {
namespace {

using cuda::Driver;
using cuda::DriverApi;

constexpr int kStreams = 4;

class Imported : public SegmentMapping {
 public:
  Imported(const Driver& driver, std::vector<Segment> segments, CUdeviceptr reserved,
           uint64_t reserved_bytes, std::vector<CUdeviceptr> legacy)
      : SegmentMapping(std::move(segments)),
        driver_(driver),
        reserved_(reserved),
        reserved_bytes_(reserved_bytes),
        legacy_(std::move(legacy)) {}
  ~Imported() override {
    const DriverApi& api = driver_.api();
    if (reserved_bytes_ > 0) {
      api.cuMemUnmap(reserved_, reserved_bytes_);
      api.cuMemAddressFree(reserved_, reserved_bytes_);
    }
    for (CUdeviceptr p : legacy_) api.cuIpcCloseMemHandle(p);
  }

 private:
  const Driver& driver_;
  const CUdeviceptr reserved_;
  const uint64_t reserved_bytes_;
  const std::vector<CUdeviceptr> legacy_;
};

class CudaIpcMemory : public IpcMemory {
 public:
  CudaIpcMemory(const Driver& driver, std::unique_ptr<cuda::PrimaryContext> primary,
                std::unique_ptr<cuda::AllocationQuery> query, int devices)
      : driver_(driver),
        primary_(std::move(primary)),
        context_(primary_->get()),
        query_(std::move(query)),
        devices_(devices) {}
  // Streams and events go while the context is still retained (primary_ is released after).
  ~CudaIpcMemory() override {
    const DriverApi& api = driver_.api();
    api.cuCtxSetCurrent(context_);
    absl::MutexLock lock(&copy_mu_);
    for (CUstream s : streams_) api.cuStreamDestroy(s);
    for (CUevent e : events_) api.cuEventDestroy(e);
  }

  const std::string& name() const override { return name_; }
  const cuda::AllocationQuery& query() const override {
    driver_.api().cuCtxSetCurrent(context_);
    return *query_;
  }

  StatusOr<ExportedAllocation> Export(const cuda::AllocationInfo& allocation) override {
    const DriverApi& api = driver_.api();
    FERRY_RETURN_IF_ERROR(driver_.Check(api.cuCtxSetCurrent(context_), "cuCtxSetCurrent"));
    ExportedAllocation out;
    if (allocation.kind == cuda::ExportKind::kLegacyIpc) {
      CUipcMemHandle handle;
      FERRY_RETURN_IF_ERROR(
          driver_.Check(api.cuIpcGetMemHandle(&handle, static_cast<CUdeviceptr>(allocation.base)),
                        "cuIpcGetMemHandle"));
      static_assert(sizeof(handle) == sizeof(out.handle));
      std::memcpy(out.handle.data(), &handle, sizeof(handle));
      return out;
    }
    CUmemGenericAllocationHandle generic;
    FERRY_RETURN_IF_ERROR(driver_.Check(
        api.cuMemRetainAllocationHandle(&generic, reinterpret_cast<void*>(allocation.base)),
        "cuMemRetainAllocationHandle"));
    int fd = -1;
    Status exported = driver_.Check(
        api.cuMemExportToShareableHandle(&fd, generic, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
        "cuMemExportToShareableHandle");
    api.cuMemRelease(generic);
    FERRY_RETURN_IF_ERROR(exported);
    out.fd = Fd(fd);
    return out;
  }

  StatusOr<std::unique_ptr<Mapping>> Import(const std::vector<PieceRecord>& records,
                                            std::vector<Fd> fds, uint64_t size) override {
    FERRY_RETURN_IF_ERROR(ValidateRecords(records, fds.size(), size));
    const DriverApi& api = driver_.api();
    FERRY_RETURN_IF_ERROR(driver_.Check(api.cuCtxSetCurrent(context_), "cuCtxSetCurrent"));
    uint64_t reserve = 0;
    for (const PieceRecord& r : records) {
      if (r.kind == static_cast<uint32_t>(cuda::ExportKind::kPosixFd)) reserve += r.allocation_size;
    }
    CUdeviceptr range = 0;
    std::vector<CUdeviceptr> legacy;
    uint64_t mapped = 0;  // bytes of `range` mapped so far
    auto undo = [&] {
      if (mapped > 0) api.cuMemUnmap(range, mapped);
      if (reserve > 0 && range != 0) api.cuMemAddressFree(range, reserve);
      for (CUdeviceptr p : legacy) api.cuIpcCloseMemHandle(p);
    };
    if (reserve > 0) {
      FERRY_RETURN_IF_ERROR(
          driver_.Check(api.cuMemAddressReserve(&range, reserve, 0, 0, 0), "cuMemAddressReserve"));
    }
    std::vector<SegmentMapping::Segment> segments;
    for (const PieceRecord& r : records) {
      CUdeviceptr base;
      if (r.kind == static_cast<uint32_t>(cuda::ExportKind::kPosixFd)) {
        base = range + mapped;
        CUmemGenericAllocationHandle generic;
        Status s = driver_.Check(
            api.cuMemImportFromShareableHandle(
                &generic, reinterpret_cast<void*>(static_cast<intptr_t>(fds[r.fd_index].get())),
                CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
            "cuMemImportFromShareableHandle");
        if (s.ok()) {
          s = driver_.Check(api.cuMemMap(base, r.allocation_size, 0, generic, 0), "cuMemMap");
          api.cuMemRelease(generic);  // the mapping holds the allocation from here
        }
        if (!s.ok()) {
          undo();
          return s;
        }
        mapped += r.allocation_size;
      } else {
        CUipcMemHandle handle;
        std::memcpy(&handle, r.handle.data(), sizeof(handle));
        Status s =
            driver_.Check(api.cuIpcOpenMemHandle(&base, handle, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS),
                          "cuIpcOpenMemHandle");
        if (!s.ok()) {
          undo();
          return s;
        }
        legacy.push_back(base);
      }
      segments.push_back({r.region_offset, r.length, base + r.offset});
    }
    if (mapped > 0) {
      std::vector<CUmemAccessDesc> access(devices_);
      for (int d = 0; d < devices_; ++d) {
        access[d].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        access[d].location.id = d;
        access[d].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
      }
      // Every device if it can, else the context's own.
      if (api.cuMemSetAccess(range, mapped, access.data(), access.size()) != CUDA_SUCCESS) {
        Status s =
            driver_.Check(api.cuMemSetAccess(range, mapped, access.data(), 1), "cuMemSetAccess");
        if (!s.ok()) {
          undo();
          return s;
        }
      }
    }
    return std::unique_ptr<Mapping>(
        new Imported(driver_, std::move(segments), range, mapped, std::move(legacy)));
  }

  Status Copy(absl::Span<const CopyJob> jobs, const std::function<bool()>& stop,
              const std::function<void(size_t)>& done) override {
    const DriverApi& api = driver_.api();
    absl::MutexLock lock(&copy_mu_);  // one read at a time uses the streams and events
    FERRY_RETURN_IF_ERROR(driver_.Check(api.cuCtxSetCurrent(context_), "cuCtxSetCurrent"));
    FERRY_RETURN_IF_ERROR(EnsureResources(jobs.size()));
    // Held: copy_mu_ (the analysis does not look into lambdas).
    const std::vector<CUstream> streams = streams_;
    auto wait_all = [&] {
      for (CUstream s : streams) api.cuStreamSynchronize(s);
    };
    for (size_t i = 0; i < jobs.size(); ++i) {
      CUstream stream = streams_[i % streams_.size()];
      Status s = driver_.Check(api.cuMemcpyAsync(jobs[i].dst, jobs[i].src, jobs[i].length, stream),
                               "cuMemcpyAsync");
      if (s.ok()) s = driver_.Check(api.cuEventRecord(events_[i], stream), "cuEventRecord");
      if (!s.ok()) {
        wait_all();
        return Status(s.code(),
                      absl::StrFormat("copy %d (%d bytes from 0x%x to 0x%x): %s", i, jobs[i].length,
                                      jobs[i].src, jobs[i].dst, s.message()));
      }
    }
    std::vector<bool> finished(jobs.size(), false);
    size_t left = jobs.size();
    while (left > 0) {
      if (stop()) {
        wait_all();
        return absl::CancelledError("stopped between copies");
      }
      bool progressed = false;
      for (size_t i = 0; i < jobs.size(); ++i) {
        if (finished[i]) continue;
        const CUresult r = api.cuEventQuery(events_[i]);
        if (r == CUDA_ERROR_NOT_READY) continue;
        if (r != CUDA_SUCCESS) {
          wait_all();
          return driver_.Check(r, "cuEventQuery (a copy failed)", absl::StatusCode::kDataLoss);
        }
        finished[i] = true;
        --left;
        progressed = true;
        done(i);
      }
      if (!progressed) sched_yield();
    }
    return absl::OkStatus();
  }

 private:
  Status EnsureResources(size_t jobs) ABSL_EXCLUSIVE_LOCKS_REQUIRED(copy_mu_) {
    const DriverApi& api = driver_.api();
    while (streams_.size() < kStreams) {
      CUstream s;
      FERRY_RETURN_IF_ERROR(
          driver_.Check(api.cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), "cuStreamCreate"));
      streams_.push_back(s);
    }
    while (events_.size() < jobs) {
      CUevent e;
      FERRY_RETURN_IF_ERROR(
          driver_.Check(api.cuEventCreate(&e, CU_EVENT_DISABLE_TIMING), "cuEventCreate"));
      events_.push_back(e);
    }
    return absl::OkStatus();
  }

  const Driver& driver_;
  const std::unique_ptr<cuda::PrimaryContext> primary_;
  const CUcontext context_;
  const std::unique_ptr<cuda::AllocationQuery> query_;
  const int devices_;
  const std::string name_ = "CUDA (device 0's primary context)";
  absl::Mutex copy_mu_;
  std::vector<CUstream> streams_ ABSL_GUARDED_BY(copy_mu_);
  std::vector<CUevent> events_ ABSL_GUARDED_BY(copy_mu_);
};

}  // namespace

StatusOr<std::shared_ptr<IpcMemory>> OpenCudaIpcMemory() {
  FERRY_ASSIGN_OR_RETURN(const Driver* driver, Driver::Default());
  if (driver->device_count() == 0) {
    return absl::FailedPreconditionError(
        "the CUDA driver sees no device; check nvidia-smi, CUDA_VISIBLE_DEVICES and the "
        "container's device mounts, or serve host memory");
  }
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<cuda::PrimaryContext> primary,
                         cuda::PrimaryContext::Retain(*driver, 0));
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<cuda::AllocationQuery> query,
                         cuda::DriverAllocationQuery(*driver));
  return std::shared_ptr<IpcMemory>(
      new CudaIpcMemory(*driver, std::move(primary), std::move(query), driver->device_count()));
}

}  // namespace ferry::internal::cuda_ipc
