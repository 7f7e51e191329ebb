// Device over the CUDA driver (device.h): the primary context of one device, streams with a
// pool of events for markers, and pinned memory from cuMemHostAlloc. Every driver call makes
// the context current on the calling thread first and restores the thread's own afterwards
// (ScopedContext): the pipeline calls in from whichever thread delivered the bytes, the
// caller's included.
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cuda/device.h"
#include "cuda/driver.h"
#include "cuda/driver_api.h"
#include "cuda/primary_context.h"

namespace ferry::internal::cuda {
namespace {

class CudaPinned final : public PinnedMemory {
 public:
  CudaPinned(const PrimaryContext& ctx, void* data, uint64_t size)
      : ctx_(ctx), data_(static_cast<char*>(data)), size_(size) {}
  ~CudaPinned() override {
    ScopedContext in(ctx_.driver());
    if (in.Enter(ctx_).ok()) ctx_.driver().api().cuMemFreeHost(data_);
  }
  char* data() const override { return data_; }
  uint64_t size() const override { return size_; }

 private:
  const PrimaryContext& ctx_;
  char* const data_;
  const uint64_t size_;
};

class CudaStream final : public CopyStream {
 public:
  CudaStream(const PrimaryContext& ctx, std::string device_name, CUstream stream)
      : ctx_(ctx), device_name_(std::move(device_name)), stream_(stream) {}

  ~CudaStream() override {
    absl::MutexLock lock(&mu_);
    ScopedContext in(ctx_.driver());
    if (!in.Enter(ctx_).ok()) return;
    const DriverApi& api = ctx_.driver().api();
    api.cuStreamSynchronize(stream_);  // copies in flight still use their memory
    for (auto& [seq, event] : recorded_) api.cuEventDestroy(event);
    for (CUevent event : free_) api.cuEventDestroy(event);
    api.cuStreamDestroy(stream_);
  }

  Status ToDevice(uint64_t dst, const void* src, uint64_t n) override {
    absl::MutexLock lock(&mu_);
    ScopedContext in(ctx_.driver());
    FERRY_RETURN_IF_ERROR(Usable(in));
    return Fail(ctx_.driver().api().cuMemcpyHtoDAsync(dst, src, n, stream_), "cuMemcpyHtoDAsync",
                absl::StrCat("to device address 0x", absl::Hex(dst), " (", n, " bytes)"));
  }

  Status ToHost(void* dst, uint64_t src, uint64_t n) override {
    absl::MutexLock lock(&mu_);
    ScopedContext in(ctx_.driver());
    FERRY_RETURN_IF_ERROR(Usable(in));
    return Fail(ctx_.driver().api().cuMemcpyDtoHAsync(dst, src, n, stream_), "cuMemcpyDtoHAsync",
                absl::StrCat("from device address 0x", absl::Hex(src), " (", n, " bytes)"));
  }

  StatusOr<CopyMarker> Record() override {
    absl::MutexLock lock(&mu_);
    ScopedContext in(ctx_.driver());
    FERRY_RETURN_IF_ERROR(Usable(in));
    const DriverApi& api = ctx_.driver().api();
    CUevent event = nullptr;
    if (!free_.empty()) {
      event = free_.back();
      free_.pop_back();
    } else {
      FERRY_RETURN_IF_ERROR(
          Fail(api.cuEventCreate(&event, CU_EVENT_DISABLE_TIMING), "cuEventCreate", ""));
    }
    if (Status s = Fail(api.cuEventRecord(event, stream_), "cuEventRecord", ""); !s.ok()) {
      api.cuEventDestroy(event);
      return s;
    }
    recorded_.emplace_back(++last_seq_, event);
    return CopyMarker{last_seq_};
  }

  StatusOr<bool> Reached(const CopyMarker& marker) override {
    absl::MutexLock lock(&mu_);
    return ReachedLocked(marker);
  }

  StatusOr<bool> WaitUntil(const CopyMarker& marker, absl::Time deadline) override {
    // cuEventSynchronize cannot be bounded; poll with a growing pause instead (a copy of a
    // staging slot takes ~100 us to a few ms).
    absl::Duration pause = absl::Microseconds(5);
    for (;;) {
      {
        absl::MutexLock lock(&mu_);
        FERRY_ASSIGN_OR_RETURN(bool reached, ReachedLocked(marker));
        if (reached) return true;
      }
      const absl::Time now = absl::Now();
      if (now >= deadline) return false;
      absl::SleepFor(std::min(pause, deadline - now));
      pause = std::min(pause * 2, absl::Microseconds(200));
    }
  }

 private:
  // Makes the context current through `in` (restored when the caller's call returns).
  Status Usable(ScopedContext& in) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    FERRY_RETURN_IF_ERROR(failed_);
    if (Status s = in.Enter(ctx_); !s.ok()) {
      failed_ = Status(s.code(), absl::StrCat(device_name_, ": ", s.message()));
    }
    return failed_;
  }

  // Records and returns the error of `result` (OK for CUDA_SUCCESS), naming the device.
  Status Fail(CUresult result, const char* call, const std::string& what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (result == CUDA_SUCCESS) return absl::OkStatus();
    Status s = ctx_.driver().Check(result, call);
    failed_ = Status(s.code(), absl::StrCat(device_name_, ": ", s.message(),
                                            what.empty() ? "" : absl::StrCat(" copying ", what)));
    return failed_;
  }

  StatusOr<bool> ReachedLocked(const CopyMarker& marker) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    FERRY_RETURN_IF_ERROR(failed_);
    if (marker.seq <= reached_seq_) return true;
    ScopedContext in(ctx_.driver());
    FERRY_RETURN_IF_ERROR(Usable(in));
    const DriverApi& api = ctx_.driver().api();
    while (!recorded_.empty() && recorded_.front().first <= marker.seq) {
      const CUresult r = api.cuEventQuery(recorded_.front().second);
      if (r == CUDA_ERROR_NOT_READY) return false;
      FERRY_RETURN_IF_ERROR(Fail(r, "cuEventQuery", ""));
      reached_seq_ = recorded_.front().first;
      free_.push_back(recorded_.front().second);
      recorded_.pop_front();
    }
    return marker.seq <= reached_seq_;
  }

  const PrimaryContext& ctx_;
  const std::string device_name_;
  const CUstream stream_;
  absl::Mutex mu_;
  Status failed_ ABSL_GUARDED_BY(mu_);
  uint64_t last_seq_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t reached_seq_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<std::pair<uint64_t, CUevent>> recorded_ ABSL_GUARDED_BY(mu_);
  std::vector<CUevent> free_ ABSL_GUARDED_BY(mu_);
};

class CudaDevice final : public Device {
 public:
  CudaDevice(std::unique_ptr<PrimaryContext> ctx, std::string name)
      : ctx_(std::move(ctx)), name_(std::move(name)) {}

  const std::string& name() const override { return name_; }

  StatusOr<std::unique_ptr<CopyStream>> CreateStream() override {
    ScopedContext in(ctx_->driver());
    FERRY_RETURN_IF_ERROR(in.Enter(*ctx_));
    CUstream stream = nullptr;
    if (Status s = ctx_->driver().Check(
            ctx_->driver().api().cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
        !s.ok()) {
      return Status(s.code(), absl::StrCat(name_, ": ", s.message()));
    }
    return std::make_unique<CudaStream>(*ctx_, name_, stream);
  }

  StatusOr<std::unique_ptr<PinnedMemory>> AllocatePinned(uint64_t bytes) override {
    if (bytes == 0) return absl::InvalidArgumentError("pinned memory of 0 bytes requested");
    ScopedContext in(ctx_->driver());
    FERRY_RETURN_IF_ERROR(in.Enter(*ctx_));
    void* data = nullptr;
    const CUresult r = ctx_->driver().api().cuMemHostAlloc(&data, bytes, CU_MEMHOSTALLOC_PORTABLE);
    if (r != CUDA_SUCCESS) {
      Status s = ctx_->driver().Check(r, "cuMemHostAlloc", absl::StatusCode::kResourceExhausted);
      return Status(s.code(),
                    absl::StrCat(name_, ": ", bytes, " bytes of pinned memory: ", s.message(),
                                 "; lower the staging slots or raise the "
                                 "locked-memory limit (ulimit -l)"));
    }
    return std::make_unique<CudaPinned>(*ctx_, data, bytes);
  }

 private:
  std::unique_ptr<PrimaryContext> ctx_;
  const std::string name_;
};

}  // namespace

StatusOr<std::unique_ptr<Device>> OpenCudaDevice(const Driver& driver, int ordinal) {
  if (ordinal < 0 || ordinal >= driver.device_count()) {
    return absl::InvalidArgumentError(absl::StrCat("no CUDA device cuda:", ordinal, ": the driver ",
                                                   "lists ", driver.device_count(),
                                                   "; check CUDA_VISIBLE_DEVICES or --device"));
  }
  const DriverApi& api = driver.api();
  const std::string label = absl::StrCat("cuda:", ordinal);
  auto named = [&](Status s) {
    return Status(s.code(), absl::StrCat("opening ", label, ": ", s.message()));
  };
  auto ctx = PrimaryContext::Retain(driver, ordinal);
  if (!ctx.ok()) return named(ctx.status());
  char model[256] = {};
  if (Status s = driver.Check(api.cuDeviceGetName(model, sizeof(model) - 1, (*ctx)->device()),
                              "cuDeviceGetName");
      !s.ok()) {
    return named(s);
  }
  return std::unique_ptr<Device>(
      new CudaDevice(std::move(*ctx), absl::StrCat(label, " (", model, ")")));
}

}  // namespace ferry::internal::cuda
