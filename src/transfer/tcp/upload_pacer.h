// Paces what one TCP server sends to all its peers together to a byte rate. Senders reserve
// their bytes in the order they ask (so connections with steady demand share the rate evenly)
// and wait until their reservation's time comes; no credit builds up while idle, so the rate
// holds over any interval longer than one slice.
//
// Thread-safe.
#ifndef FERRY_TRANSFER_TCP_UPLOAD_PACER_H_
#define FERRY_TRANSFER_TCP_UPLOAD_PACER_H_

#include <algorithm>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ferry::internal::tcp {

class UploadPacer {
 public:
  // Bytes sent between two reservations: small enough that peers interleave finely.
  static constexpr uint64_t kSliceBytes = 256 << 10;

  // REQUIRES: bytes_per_second > 0.
  explicit UploadPacer(uint64_t bytes_per_second) : rate_(bytes_per_second) {}

  // Reserves `bytes` and returns when they may be sent.
  absl::Time Reserve(uint64_t bytes) {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    const absl::Time at = std::max(next_, now);
    next_ = at + absl::Seconds(static_cast<double>(bytes) / static_cast<double>(rate_));
    return at;
  }

 private:
  const uint64_t rate_;
  absl::Mutex mu_;
  absl::Time next_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace ferry::internal::tcp

#endif  // FERRY_TRANSFER_TCP_UPLOAD_PACER_H_
