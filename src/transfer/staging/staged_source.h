// The source half of pipelined staging (docs/architecture.md, "GPU memory"): serves reads of
// device memory over a transport that sends host memory. Ranges are enqueued in the order they
// will be sent; each is cut into portions of at most one slot, and device-to-host copies into
// pinned slots run AHEAD of the sender: while one portion is sent, the next ones are copied.
//
// Thread-safety: thread-compatible (one sending thread, e.g. one TCP connection, owns it).
#ifndef FERRY_TRANSFER_STAGING_STAGED_SOURCE_H_
#define FERRY_TRANSFER_STAGING_STAGED_SOURCE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>

#include "absl/types/span.h"
#include "cuda/device.h"
#include "ferry/status.h"

namespace ferry::internal::staging {

struct StagedSourceOptions {
  // Bytes of one pinned slot (> 0): the largest portion handed out. Default 4 MiB.
  uint64_t slot_bytes = 4ull << 20;
  // Slots (>= 1): one is being sent, the others are filled ahead. Default 3.
  int slots = 3;
};

class StagedSource {
 public:
  // Borrows `device` (it must outlive this). InvalidArgument naming a bad option field; the
  // device's error when pinned memory or a stream cannot be had.
  static StatusOr<std::unique_ptr<StagedSource>> Create(cuda::Device* device,
                                                        const StagedSourceOptions& options);
  // Waits for the copies in flight (they write into the slots).
  ~StagedSource();
  StagedSource(const StagedSource&) = delete;
  StagedSource& operator=(const StagedSource&) = delete;

  // Appends device range [address, address + length) to what will be handed out, after every
  // range enqueued before; copies start as slots allow. REQUIRES: the range stays valid until
  // its last portion is released or this object is destroyed. InvalidArgument for length 0;
  // the stream's error once a copy failed.
  Status Enqueue(uint64_t address, uint64_t length);
  // The next portion (at most slot_bytes) of the oldest range, once copied into host memory;
  // valid until Release(). Waits for its copy, polling `stop` every ~50 ms: Cancelled when it
  // returns true. FailedPrecondition when nothing is enqueued or the previous portion was not
  // released; a failed copy: its code, naming the device and the range.
  StatusOr<absl::Span<const char>> Next(const std::function<bool()>& stop);
  // Gives back the portion Next returned: its slot takes the next copy.
  void Release();

  cuda::Device* device() const { return device_; }
  // Portions enqueued and not yet released.
  size_t pending() const { return portions_.size(); }
  // Portions handed out while the copy of the portion after them had already started: the
  // prefetch at work.
  uint64_t prefetched() const { return prefetched_; }

 private:
  struct Portion {
    uint64_t address;
    uint64_t length;
    uint64_t seq;  // its slot is seq % slots
    cuda::CopyMarker marker;
  };

  StagedSource(cuda::Device* device, const StagedSourceOptions& options,
               std::unique_ptr<cuda::PinnedMemory> slots, std::unique_ptr<cuda::CopyStream> stream);
  // Starts copies for the portions that have a free slot.
  Status Pump();
  char* SlotOf(const Portion& p) const;

  cuda::Device* const device_;
  const StagedSourceOptions options_;
  const std::unique_ptr<cuda::PinnedMemory> slots_;
  // Declared after slots_: destroyed first, waiting for the copies into them.
  const std::unique_ptr<cuda::CopyStream> stream_;
  std::deque<Portion> portions_;
  size_t issued_ = 0;  // the first issued_ portions have their copy enqueued
  uint64_t next_seq_ = 0;
  bool handed_out_ = false;
  uint64_t prefetched_ = 0;
  Status failed_;
};

}  // namespace ferry::internal::staging

#endif  // FERRY_TRANSFER_STAGING_STAGED_SOURCE_H_
