// OpenCudaIpcMemory for CUDA builds: the driver's IPC calls (legacy handles for cudaMalloc
// memory, POSIX descriptors or fabric handles for cuMemCreate memory), VMM imports mapped back to
// back into one reserved range, and copies on a few streams per device with an event per job.
//
// Contexts: each device's primary context (the one PyTorch and the runtime use), retained on
// first use. An allocation is exported in the context of the GPU holding it; a region is mapped,
// and copied from, in the context of the GPU its bytes go to. Every call restores the calling
// thread's own context afterwards (cuda::ScopedContext), so a caller's current device is never
// moved, and a GPU the process does not use never gets a context.
#include <sched.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "cuda/device_pool.h"
#include "cuda/driver.h"
#include "cuda/driver_api.h"
#include "cuda/primary_context.h"
#include "transfer/cuda_ipc/ipc_memory.h"

namespace ferry::internal::cuda_ipc {
namespace {

using cuda::Driver;
using cuda::DriverApi;
using cuda::PrimaryContext;
using cuda::ScopedContext;

constexpr int kStreams = 4;

// Unmaps in the context it was mapped in (cuIpcCloseMemHandle fails in any other, and a handle
// left open keeps the source's memory mapped here after the source was told it is closed).
// REQUIRES: `context` outlives it (the IpcMemory owns it; the Mapping goes first).
class Imported : public SegmentMapping {
 public:
  Imported(const PrimaryContext& context, std::vector<Segment> segments, CUdeviceptr reserved,
           uint64_t reserved_bytes, std::vector<CUdeviceptr> legacy)
      : SegmentMapping(std::move(segments)),
        context_(context),
        reserved_(reserved),
        reserved_bytes_(reserved_bytes),
        legacy_(std::move(legacy)) {}
  ~Imported() override {
    const Driver& driver = context_.driver();
    const DriverApi& api = driver.api();
    ScopedContext in(driver);
    if (Status s = in.Enter(context_); !s.ok()) {
      spdlog::warn("cuda_ipc: cannot unmap an imported region: {}", s.message());
      return;
    }
    if (reserved_bytes_ > 0) {
      api.cuMemUnmap(reserved_, reserved_bytes_);
      api.cuMemAddressFree(reserved_, reserved_bytes_);
    }
    for (CUdeviceptr p : legacy_) {
      if (Status s = driver.Check(api.cuIpcCloseMemHandle(p), "cuIpcCloseMemHandle"); !s.ok()) {
        spdlog::warn("cuda_ipc: {}", s.message());
      }
    }
  }

 private:
  const PrimaryContext& context_;
  const CUdeviceptr reserved_;
  const uint64_t reserved_bytes_;
  const std::vector<CUdeviceptr> legacy_;
};

// One GPU this process exports from, maps into or copies on.
struct DeviceState {
  DeviceState(int o, std::unique_ptr<PrimaryContext> c) : ordinal(o), context(std::move(c)) {}
  const int ordinal;
  const std::unique_ptr<PrimaryContext> context;
  absl::Mutex mu;  // one read at a time uses the streams and events
  std::vector<CUstream> streams ABSL_GUARDED_BY(mu);
  std::vector<CUevent> events ABSL_GUARDED_BY(mu);
};

class CudaIpcMemory : public IpcMemory {
 public:
  CudaIpcMemory(const Driver& driver, std::unique_ptr<cuda::AllocationQuery> query)
      : driver_(driver), query_(std::move(query)) {}
  // Streams and events go in their context, while it is still retained.
  ~CudaIpcMemory() override {
    const DriverApi& api = driver_.api();
    absl::MutexLock devices_lock(&devices_mu_);
    for (auto& [ordinal, d] : devices_) {
      ScopedContext in(driver_);
      if (!in.Enter(*d->context).ok()) continue;
      absl::MutexLock lock(&d->mu);
      for (CUstream s : d->streams) api.cuStreamDestroy(s);
      for (CUevent e : d->events) api.cuEventDestroy(e);
    }
  }

  const std::string& name() const override { return name_; }
  bool OpensOwnExports() const override { return false; }
  // The driver's query keeps its own context discipline (allocation_query.cc).
  const cuda::AllocationQuery& query() const override { return *query_; }

  StatusOr<ExportedAllocation> Export(const cuda::AllocationInfo& allocation) override {
    const DriverApi& api = driver_.api();
    FERRY_ASSIGN_OR_RETURN(DeviceState * device,
                           Device(allocation.device >= 0 ? allocation.device : 0));
    ScopedContext in(driver_);
    FERRY_RETURN_IF_ERROR(in.Enter(*device->context));
    ExportedAllocation out;
    // A region's cuMemCreate allocations each take a descriptor while the region is sent to a
    // target (a 1 GiB tensor in expandable segments: about 50), so the open-file limit is the
    // likely cause.
    auto fd_hint = [](Status s) {
      return Status(s.code(),
                    absl::StrCat(s.message(),
                                 "; sending a region takes one open file descriptor per "
                                 "cuMemCreate allocation behind it: check the open-file limit "
                                 "(ulimit -n)"));
    };
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
    if (allocation.kind == cuda::ExportKind::kFabric) {
      CUmemFabricHandle fabric;
      Status exported = driver_.Check(
          api.cuMemExportToShareableHandle(&fabric, generic, CU_MEM_HANDLE_TYPE_FABRIC, 0),
          "cuMemExportToShareableHandle(fabric)");
      api.cuMemRelease(generic);
      FERRY_RETURN_IF_ERROR(exported);
      static_assert(sizeof(fabric) == sizeof(out.handle));
      std::memcpy(out.handle.data(), &fabric, sizeof(fabric));
      return out;
    }
    int fd = -1;
    Status exported = driver_.Check(
        api.cuMemExportToShareableHandle(&fd, generic, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
        "cuMemExportToShareableHandle");
    api.cuMemRelease(generic);
    if (!exported.ok()) return fd_hint(exported);
    out.fd = Fd(fd);
    return out;
  }

  StatusOr<std::unique_ptr<Mapping>> Import(const std::vector<PieceRecord>& records,
                                            std::vector<Fd> fds, uint64_t size,
                                            uint64_t local) override {
    FERRY_RETURN_IF_ERROR(ValidateRecords(records, fds.size(), size));
    const DriverApi& api = driver_.api();
    FERRY_ASSIGN_OR_RETURN(DeviceState * device, DeviceFor(local));
    ScopedContext in(driver_);
    FERRY_RETURN_IF_ERROR(in.Enter(*device->context));
    uint64_t reserve = 0;
    for (const PieceRecord& r : records) {
      if (cuda::IsVmmExport(static_cast<cuda::ExportKind>(r.kind))) reserve += r.allocation_size;
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
      const auto kind = static_cast<cuda::ExportKind>(r.kind);
      if (cuda::IsVmmExport(kind)) {
        base = range + mapped;
        CUmemGenericAllocationHandle generic;
        CUmemFabricHandle fabric;
        static_assert(sizeof(fabric) == sizeof(r.handle));
        std::memcpy(&fabric, r.handle.data(), sizeof(fabric));
        Status s =
            kind == cuda::ExportKind::kFabric
                ? driver_.Check(api.cuMemImportFromShareableHandle(&generic, &fabric,
                                                                   CU_MEM_HANDLE_TYPE_FABRIC),
                                "cuMemImportFromShareableHandle(fabric)")
                : driver_.Check(
                      api.cuMemImportFromShareableHandle(
                          &generic,
                          reinterpret_cast<void*>(static_cast<intptr_t>(fds[r.fd_index].get())),
                          CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
                      "cuMemImportFromShareableHandle");
        if (!s.ok() && kind == cuda::ExportKind::kFabric) {
          s = Status(s.code(), absl::StrCat(s.message(),
                                            "; importing a fabric handle needs an IMEX channel "
                                            "(/dev/nvidia-caps-imex-channels) in this process"));
        }
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
      std::vector<CUmemAccessDesc> access(driver_.device_count());
      for (int d = 0; d < driver_.device_count(); ++d) {
        access[d].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        access[d].location.id = d;
        access[d].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
      }
      // Every device if it can (a read may land on several), else the one that copies.
      if (api.cuMemSetAccess(range, mapped, access.data(), access.size()) != CUDA_SUCCESS) {
        Status s = driver_.Check(api.cuMemSetAccess(range, mapped, &access[device->ordinal], 1),
                                 "cuMemSetAccess");
        if (!s.ok()) {
          undo();
          return s;
        }
      }
    }
    return std::unique_ptr<Mapping>(
        new Imported(*device->context, std::move(segments), range, mapped, std::move(legacy)));
  }

  Status Copy(absl::Span<const CopyJob> jobs, const std::function<bool()>& stop,
              const std::function<void(size_t)>& done) override {
    if (jobs.empty()) return absl::OkStatus();
    const DriverApi& api = driver_.api();
    FERRY_ASSIGN_OR_RETURN(DeviceState * device, DeviceFor(jobs[0].dst));
    absl::MutexLock lock(&device->mu);
    ScopedContext in(driver_);
    FERRY_RETURN_IF_ERROR(in.Enter(*device->context));
    FERRY_RETURN_IF_ERROR(EnsureResources(*device, jobs.size()));
    // Held: device->mu (the analysis does not look into lambdas).
    const std::vector<CUstream> streams = device->streams;
    const std::vector<CUevent> events = device->events;
    auto wait_all = [&] {
      for (CUstream s : streams) api.cuStreamSynchronize(s);
    };
    for (size_t i = 0; i < jobs.size(); ++i) {
      CUstream stream = streams[i % streams.size()];
      Status s = driver_.Check(api.cuMemcpyAsync(jobs[i].dst, jobs[i].src, jobs[i].length, stream),
                               "cuMemcpyAsync");
      if (s.ok()) s = driver_.Check(api.cuEventRecord(events[i], stream), "cuEventRecord");
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
        const CUresult r = api.cuEventQuery(events[i]);
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
  // The state of GPU `ordinal`, its primary context retained on first use.
  StatusOr<DeviceState*> Device(int ordinal) {
    absl::MutexLock lock(&devices_mu_);
    auto it = devices_.find(ordinal);
    if (it != devices_.end()) return it->second.get();
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<PrimaryContext> context,
                           PrimaryContext::Retain(driver_, ordinal));
    return devices_.emplace(ordinal, std::make_unique<DeviceState>(ordinal, std::move(context)))
        .first->second.get();
  }

  // The GPU holding `local`; for host memory, a GPU already in use here (this object's first,
  // else one whose primary context is active in the process), else device 0.
  StatusOr<DeviceState*> DeviceFor(uint64_t local) {
    auto ordinal = cuda::DeviceOfAddress(driver_, local);
    if (ordinal.ok()) return Device(*ordinal);
    {
      absl::MutexLock lock(&devices_mu_);
      if (!devices_.empty()) return devices_.begin()->second.get();
    }
    return Device(std::max(cuda::ActivePrimaryDevice(driver_), 0));
  }

  Status EnsureResources(DeviceState& device, size_t jobs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(device.mu) {
    const DriverApi& api = driver_.api();
    while (device.streams.size() < kStreams) {
      CUstream s;
      FERRY_RETURN_IF_ERROR(
          driver_.Check(api.cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), "cuStreamCreate"));
      device.streams.push_back(s);
    }
    while (device.events.size() < jobs) {
      CUevent e;
      FERRY_RETURN_IF_ERROR(
          driver_.Check(api.cuEventCreate(&e, CU_EVENT_DISABLE_TIMING), "cuEventCreate"));
      device.events.push_back(e);
    }
    return absl::OkStatus();
  }

  const Driver& driver_;
  const std::unique_ptr<cuda::AllocationQuery> query_;
  const std::string name_ = "CUDA (each GPU's primary context)";
  absl::Mutex devices_mu_;
  // Never erased: Imported mappings refer to the contexts.
  std::map<int, std::unique_ptr<DeviceState>> devices_ ABSL_GUARDED_BY(devices_mu_);
};

}  // namespace

StatusOr<std::shared_ptr<IpcMemory>> OpenCudaIpcMemory() {
  FERRY_ASSIGN_OR_RETURN(const Driver* driver, Driver::Default());
  if (driver->device_count() == 0) {
    return absl::FailedPreconditionError(
        "the CUDA driver sees no device; check nvidia-smi, CUDA_VISIBLE_DEVICES and the "
        "container's device mounts, or serve host memory");
  }
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<cuda::AllocationQuery> query,
                         cuda::DriverAllocationQuery(*driver));
  return std::shared_ptr<IpcMemory>(new CudaIpcMemory(*driver, std::move(query)));
}

}  // namespace ferry::internal::cuda_ipc
