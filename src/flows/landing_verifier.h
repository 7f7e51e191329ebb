// Verification beside the transfer: every tensor is checksummed as soon as its last byte
// landed, by a small pool of threads, while the rest of the model is still on the wire. Fed
// from the read core's per-piece callback (ReadOptions::on_piece). A tensor that failed can be
// re-armed and counted again as its bytes are read a second time (a striped pull re-reads it
// from another source).
//
// Thread-safety: Landed may be called from any number of threads at once, and the mismatch
// callback runs on the checksum threads; the other methods from the owning thread.
#ifndef FERRY_FLOWS_LANDING_VERIFIER_H_
#define FERRY_FLOWS_LANDING_VERIFIER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ferry/status.h"
#include "weights/tensor_checksum.h"

namespace ferry::weights {

// A tensor's checksum computed where it landed: TensorChecksum for host memory, on the GPU for
// device memory (flows/device_verify.h). Called from several threads at once.
using ChecksumFunction = std::function<StatusOr<uint64_t>(const void* data, uint64_t size)>;

class LandingVerifier {
 public:
  struct Tensor {
    std::string name;
    const void* data = nullptr;  // where it lands locally; may be null when size is 0
    uint64_t size = 0;
    uint64_t expected = 0;  // the source's checksum (`algorithm`)
  };

  // Starts `threads` (1..16) checksum threads. Tensors may share a range (tied weights) but
  // must not partly overlap. Empty tensors are checked at once. When a checksum differs,
  // `on_mismatch(i)` (optional) is called with the tensor's index, from a checksum thread,
  // before the failure is recorded (so that the caller may Rearm it from there); when it
  // matches, `on_verified(i)` (optional), after it is recorded.
  // `algorithm`: the one the source's checksums were made with; `checksum` (optional) computes
  // it where the tensors land (null: TensorChecksum over host memory). A tensor whose checksum
  // could not be computed counts as failed, and Finish reports that error.
  LandingVerifier(std::vector<Tensor> tensors, int threads,
                  std::function<void(size_t)> on_mismatch = nullptr,
                  std::function<void(size_t)> on_verified = nullptr,
                  ChecksumAlgorithm algorithm = ChecksumAlgorithm::kXxh3_64,
                  ChecksumFunction checksum = nullptr);
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

  // Waits until every tensor that landed completely has been checked (the queue is empty and
  // no check is running). The threads keep running.
  void WaitIdle();
  // Forgets what landed of tensor `i` and any failure it had: it is counted again from zero.
  // Call only while none of its bytes are being read.
  void Rearm(size_t i);
  // Records tensor `i` as checked with checksum `sum` (verified by the caller).
  void MarkVerified(size_t i, uint64_t sum);
  // Whether tensor `i` was checked and matched.
  bool Verified(size_t i);
  // Tensors checked and matched so far.
  size_t verified_count();

  // The checksums computed, in the order given (valid after Finish returned OK, or once every
  // tensor is Verified).
  std::vector<uint64_t> checksums() {
    absl::MutexLock lock(&mu_);
    return sums_;
  }
  // Time spent checksumming after the read ended (inside Finish).
  absl::Duration tail() const { return tail_; }

 private:
  enum class State : uint8_t { kPending, kGood, kBad };
  void Work();
  // DataLoss naming tensor `bad` and the checksum `sum` it had (OK when bad is SIZE_MAX).
  Status MismatchStatus(size_t bad, uint64_t sum) const;

  const std::vector<Tensor> tensors_;
  std::vector<size_t> by_start_;                 // tensor indices by data address
  std::vector<uintptr_t> max_end_;               // running max of end address along by_start_
  std::vector<std::atomic<int64_t>> remaining_;  // bytes not yet landed per tensor
  std::vector<uint64_t> sums_ ABSL_GUARDED_BY(mu_);
  // Tensors whose checksum could not be computed, and why.
  std::map<size_t, Status> errors_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> generation_ ABSL_GUARDED_BY(mu_);  // bumped by Rearm and MarkVerified
  const std::function<void(size_t)> on_mismatch_;
  const std::function<void(size_t)> on_verified_;
  const ChecksumAlgorithm algorithm_;
  const ChecksumFunction checksum_;
  absl::Duration tail_;

  absl::Mutex mu_;
  std::deque<size_t> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<State> state_ ABSL_GUARDED_BY(mu_);
  size_t checked_ ABSL_GUARDED_BY(mu_) = 0;  // tensors in kGood or kBad
  size_t good_ ABSL_GUARDED_BY(mu_) = 0;
  size_t running_ ABSL_GUARDED_BY(mu_) = 0;  // checks in progress
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace ferry::weights

#endif  // FERRY_FLOWS_LANDING_VERIFIER_H_
