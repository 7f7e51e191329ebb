#include "transfer/staging/staged_source.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace ferry::internal::staging {
namespace {

constexpr absl::Duration kPollInterval = absl::Milliseconds(50);
constexpr uint64_t kMaxStagingBytes = 64ull << 30;

}  // namespace

StatusOr<std::unique_ptr<StagedSource>> StagedSource::Create(cuda::Device* device,
                                                             const StagedSourceOptions& options) {
  if (device == nullptr) return absl::InvalidArgumentError("StagedSource: a device is required");
  if (options.slot_bytes == 0) {
    return absl::InvalidArgumentError("StagedSourceOptions.slot_bytes must be at least 1");
  }
  if (options.slots < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("StagedSourceOptions.slots is ", options.slots, "; it must be at least 1"));
  }
  if (options.slot_bytes > kMaxStagingBytes / static_cast<uint64_t>(options.slots)) {
    return absl::InvalidArgumentError(
        absl::StrCat("StagedSourceOptions: ", options.slots, " slots of ", options.slot_bytes,
                     " bytes exceed the ", kMaxStagingBytes, "-byte limit of pinned memory"));
  }
  FERRY_ASSIGN_OR_RETURN(auto slots, device->AllocatePinned(options.slot_bytes * options.slots));
  FERRY_ASSIGN_OR_RETURN(auto stream, device->CreateStream());
  return std::unique_ptr<StagedSource>(
      new StagedSource(device, options, std::move(slots), std::move(stream)));
}

StagedSource::StagedSource(cuda::Device* device, const StagedSourceOptions& options,
                           std::unique_ptr<cuda::PinnedMemory> slots,
                           std::unique_ptr<cuda::CopyStream> stream)
    : device_(device), options_(options), slots_(std::move(slots)), stream_(std::move(stream)) {}

StagedSource::~StagedSource() = default;

char* StagedSource::SlotOf(const Portion& p) const {
  return slots_->data() + (p.seq % options_.slots) * options_.slot_bytes;
}

Status StagedSource::Enqueue(uint64_t address, uint64_t length) {
  if (length == 0) return absl::InvalidArgumentError("StagedSource: an empty range was enqueued");
  FERRY_RETURN_IF_ERROR(failed_);
  for (uint64_t done = 0; done < length;) {
    const uint64_t n = std::min(options_.slot_bytes, length - done);
    portions_.push_back(Portion{address + done, n, next_seq_++, {}});
    done += n;
  }
  return Pump();
}

Status StagedSource::Pump() {
  while (failed_.ok() && issued_ < portions_.size() &&
         issued_ < static_cast<size_t>(options_.slots)) {
    Portion& p = portions_[issued_];
    Status s = stream_->ToHost(SlotOf(p), p.address, p.length);
    if (s.ok()) {
      StatusOr<cuda::CopyMarker> m = stream_->Record();
      if (m.ok()) {
        p.marker = *m;
      } else {
        s = m.status();
      }
    }
    if (!s.ok()) {
      failed_ = Status(s.code(), absl::StrCat("staged read of device memory 0x",
                                              absl::Hex(p.address), " (", p.length, " bytes) on ",
                                              device_->name(), " failed: ", s.message()));
      return failed_;
    }
    ++issued_;
  }
  return failed_;
}

StatusOr<absl::Span<const char>> StagedSource::Next(const std::function<bool()>& stop) {
  FERRY_RETURN_IF_ERROR(failed_);
  if (handed_out_) {
    return absl::FailedPreconditionError("StagedSource: Next before the last portion's Release");
  }
  if (portions_.empty()) return absl::FailedPreconditionError("StagedSource: nothing enqueued");
  FERRY_RETURN_IF_ERROR(Pump());
  const Portion& p = portions_.front();
  for (;;) {
    StatusOr<bool> reached = stream_->WaitUntil(p.marker, absl::Now() + kPollInterval);
    if (!reached.ok()) {
      failed_ = Status(
          reached.status().code(),
          absl::StrCat("staged read of device memory 0x", absl::Hex(p.address), " (", p.length,
                       " bytes) on ", device_->name(), " failed: ", reached.status().message()));
      return failed_;
    }
    if (*reached) break;
    if (stop && stop()) {
      return absl::CancelledError("staged read stopped while waiting for a device-to-host copy");
    }
  }
  handed_out_ = true;
  if (issued_ > 1) ++prefetched_;
  return absl::Span<const char>(SlotOf(p), p.length);
}

void StagedSource::Release() {
  if (!handed_out_) return;
  handed_out_ = false;
  portions_.pop_front();
  --issued_;
  // The slot just freed takes the next copy; a failure shows at the next Next.
  Pump().IgnoreError();
}

}  // namespace ferry::internal::staging
