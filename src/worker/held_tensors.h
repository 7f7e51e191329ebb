// Which of a source's tensors it serves now: all of them for a source that holds its whole
// model, and a growing set for a target that serves what it has verified while it still pulls
// (FerryWorkerService.GetHeldTensors).
//
// Thread-safe.
#ifndef FERRY_WORKER_HELD_TENSORS_H_
#define FERRY_WORKER_HELD_TENSORS_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace ferry::worker {

class HeldTensors {
 public:
  // `count` tensors, none held.
  explicit HeldTensors(size_t count) : size_(count), held_(count, false), landing_(count, false) {}

  // Tensor `i` (in GetTransferInfo's order) is verified and may be served. Out of range: ignored.
  void Mark(size_t i) {
    absl::MutexLock lock(&mu_);
    if (i >= held_.size() || held_[i]) return;
    held_[i] = true;
    landing_[i] = false;
    ++count_;
  }
  // Some bytes of tensor `i` landed; it is not verified yet (served soon). Out of range or
  // held: ignored.
  void MarkLanding(size_t i) {
    absl::MutexLock lock(&mu_);
    if (i < landing_.size() && !held_[i]) landing_[i] = true;
  }
  bool Holds(size_t i) const {
    absl::MutexLock lock(&mu_);
    return i < held_.size() && held_[i];
  }
  bool complete() const {
    absl::MutexLock lock(&mu_);
    return count_ == held_.size();
  }
  size_t size() const { return size_; }
  // Bit i % 8 of byte i / 8 set when tensor i is held (GetHeldTensorsResponse.held).
  std::string Bitmap() const {
    absl::MutexLock lock(&mu_);
    return BitsOf(held_);
  }
  // The same for tensors being filled (GetHeldTensorsResponse.landing).
  std::string LandingBitmap() const {
    absl::MutexLock lock(&mu_);
    return BitsOf(landing_);
  }

 private:
  static std::string BitsOf(const std::vector<bool>& flags) {
    std::string bits((flags.size() + 7) / 8, '\0');
    for (size_t i = 0; i < flags.size(); ++i) {
      if (flags[i]) bits[i / 8] = static_cast<char>(bits[i / 8] | (1 << (i % 8)));
    }
    return bits;
  }

  const size_t size_;
  mutable absl::Mutex mu_;
  std::vector<bool> held_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> landing_ ABSL_GUARDED_BY(mu_);
  size_t count_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ferry::worker

#endif  // FERRY_WORKER_HELD_TENSORS_H_
