// Preparing a pull's destination beside the transfer: a file pull allocates its destination
// without faulting its pages in, and this faults them in (Region::Prefault, one kernel call per
// 8 MiB step) on one thread that runs ahead of the transfer, in the order the read fills them.
// When the copy catches up with it, the transport's thread prepares the step it is about to
// copy into itself, or waits for the thread to finish that step (Prepare, called through
// ReadOptions::before_piece): a copy never faults its destination page by page, which costs
// more than one kernel call per step.
//
// Thread-safety: Prepare may be called from any number of threads at once; the rest from the
// owning thread.
#ifndef FERRY_FLOWS_PREFAULTER_H_
#define FERRY_FLOWS_PREFAULTER_H_

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "ferry/status.h"
#include "ferry/transfer.h"

namespace ferry::weights {

class Prefaulter {
 public:
  static constexpr uint64_t kStep = 8ull << 20;

  // Starts the thread over `ops`' local ranges in `region` (ranges outside it are skipped), in
  // order. A null `region` makes a Prefaulter that does nothing (memory that exists). A failure
  // to fault pages in sets `cancel` (the read stops) and is returned by Finish.
  Prefaulter(const Region* region, const std::vector<ReadOp>& ops, std::atomic<bool>* cancel);
  ~Prefaulter();  // joins the thread
  Prefaulter(const Prefaulter&) = delete;
  Prefaulter& operator=(const Prefaulter&) = delete;

  bool active() const { return region_ != nullptr; }

  // Returns once every step that [local, local+length) touches is prepared: prepares those no
  // one has started, waits for those another thread is preparing. Ranges outside the region are
  // ignored. After a failure or cancellation it returns without preparing.
  void Prepare(const void* local, uint64_t length);

  // Joins the thread; the first error met preparing, if any.
  Status Finish();

 private:
  enum : uint8_t { kTodo, kBusy, kDone };

  // The steps [first, last] that [local, local+length) touches; false outside the region.
  bool Steps(const void* local, uint64_t length, uint64_t* first, uint64_t* last) const;
  bool Claim(uint64_t step);
  void Run(uint64_t step);  // prepares a claimed step and marks it done, whatever the outcome

  const Region* const region_;
  std::atomic<bool>* const cancel_;
  std::vector<std::atomic<uint8_t>> state_;  // per step: kTodo, kBusy, kDone
  absl::Mutex mu_;
  Status status_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace ferry::weights

#endif  // FERRY_FLOWS_PREFAULTER_H_
