// Read leases on a source's tensors (ModelExpress 0.7.0's PrepareTensorRead / ReleaseTensorRead):
// a target that reads the tensors over NIXL holds a lease from taking the manifest until its
// read ended, and a released lease that the source no longer held tells it the bytes may not be
// what the manifest described. ferry serves them only where a NIXL agent serves the same memory
// (publish(backend="ferry+nixl")); ferry's own targets verify checksums instead.
//
// Bounded as ModelExpress's own worker server is not: at most `max_leases` outstanding (more are
// RESOURCE_EXHAUSTED), each expiring `ttl` after it was taken (ModelExpress's default lifetime,
// 2 * max(120 s, MX_TRANSFER_TIMEOUT) + 30 s = 270 s). Expired leases are dropped on every call.
//
// Thread-safe.
#ifndef FERRY_WORKER_TENSOR_READ_LEASES_H_
#define FERRY_WORKER_TENSOR_READ_LEASES_H_

#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ferry/status.h"
#include "worker/lease_options.h"

namespace ferry::worker {

// ModelExpress 0.7.0's tensor read lease lifetime with its default MX_TRANSFER_TIMEOUT.
inline constexpr absl::Duration kTensorReadLeaseTtl = absl::Seconds(270);
// Outstanding tensor read leases one source holds at most (one per target reading it).
inline constexpr int kMaxTensorReadLeases = 256;

inline LeaseOptions TensorReadLeaseOptions() {
  LeaseOptions o;
  o.ttl = kTensorReadLeaseTtl;
  o.max_leases = kMaxTensorReadLeases;
  return o;
}

class TensorReadLeases {
 public:
  // InvalidArgument naming the field when max_leases < 1 or ttl is not positive and finite.
  static StatusOr<std::unique_ptr<TensorReadLeases>> Create(LeaseOptions options);

  TensorReadLeases(const TensorReadLeases&) = delete;
  TensorReadLeases& operator=(const TensorReadLeases&) = delete;

  // A new lease id (32 hex digits, as ModelExpress's), valid for ttl. ResourceExhausted when
  // max_leases are outstanding (after dropping the expired ones); Unavailable once Close()d.
  StatusOr<std::string> Prepare();

  // Ends a lease. NotFound, naming the id, when it is unknown or expired (ModelExpress's target
  // then distrusts the bytes it read). InvalidArgument for an empty id.
  Status Release(absl::string_view lease_id);

  // No new leases from now on (the source is stopping); outstanding ones may still be released.
  void Close();

  // Leases outstanding now (expired ones dropped first).
  int outstanding();

  // Waits until every outstanding lease was released or expired, or `deadline` (real time)
  // passed; returns how many are left. For a stopping source: its targets finish their NIXL
  // reads before the memory is deregistered.
  int AwaitReleased(absl::Time deadline);

 private:
  explicit TensorReadLeases(LeaseOptions options);
  void DropExpiredLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const LeaseOptions options_;
  const std::function<absl::Time()> now_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, absl::Time> expiry_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ferry::worker

#endif  // FERRY_WORKER_TENSOR_READ_LEASES_H_
