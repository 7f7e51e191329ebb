// Verification beside the transfer: every tensor is checksummed as soon as its last byte
// landed, by a small pool of threads, while the rest of the model is still on the wire. Fed
// from the read core's per-piece callback (ReadOptions::on_piece).
//
// Thread-safety: Landed may be called from any number of threads at once; the other methods
// from the owning thread.
#ifndef FERRY_FLOWS_LANDING_VERIFIER_H_
#define FERRY_FLOWS_LANDING_VERIFIER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ferry/status.h"

namespace ferry::weights {

class LandingVerifier {
 public:
  struct Tensor {
    std::string name;
    const void* data = nullptr;  // where it lands locally; may be null when size is 0
    uint64_t size = 0;
    uint64_t expected = 0;  // the source's XXH3-64
  };

  // Starts `threads` (1..16) checksum threads. Tensors may share a range (tied weights) but
  // must not partly overlap. Empty tensors are checked at once. When a checksum differs,
  // `*cancel` (optional) is set so that the read stops early.
  LandingVerifier(std::vector<Tensor> tensors, int threads, std::atomic<bool>* cancel);
  ~LandingVerifier();  // stops the threads (Abandon + join)
  LandingVerifier(const LandingVerifier&) = delete;
  LandingVerifier& operator=(const LandingVerifier&) = delete;

  // Bytes [data, data+size) landed. Tensors whose every byte has now landed are queued.
  void Landed(const void* data, uint64_t size);

  // After a successful read: waits until every tensor is checked. OK, or DataLoss naming the
  // first tensor (in the order given) whose checksum differs, or Internal if some tensor never
  // landed completely (a bug: the read said it was done).
  Status Finish();
  // After a failed read: stops the threads without waiting for the queue.
  void Abandon();
  // DataLoss naming a tensor found corrupt so far (the read was then cancelled), else OK.
  Status Mismatch();

  // The checksums computed, in the order given (valid after Finish returned OK).
  const std::vector<uint64_t>& checksums() const { return sums_; }
  // Time spent checksumming after the read ended (inside Finish).
  absl::Duration tail() const { return tail_; }

 private:
  void Work();
  Status MismatchStatus(size_t bad) const;

  const std::vector<Tensor> tensors_;
  std::vector<size_t> by_start_;                 // tensor indices by data address
  std::vector<uintptr_t> max_end_;               // running max of end address along by_start_
  std::vector<std::atomic<int64_t>> remaining_;  // bytes not yet landed per tensor
  std::vector<uint64_t> sums_;
  std::atomic<bool>* const cancel_;
  absl::Duration tail_;

  absl::Mutex mu_;
  std::deque<size_t> queue_ ABSL_GUARDED_BY(mu_);
  size_t checked_ ABSL_GUARDED_BY(mu_) = 0;
  size_t first_bad_ ABSL_GUARDED_BY(mu_) = SIZE_MAX;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace ferry::weights

#endif  // FERRY_FLOWS_LANDING_VERIFIER_H_
