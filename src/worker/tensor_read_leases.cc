#include "worker/tensor_read_leases.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace ferry::worker {

StatusOr<std::unique_ptr<TensorReadLeases>> TensorReadLeases::Create(LeaseOptions options) {
  if (options.max_leases < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor read LeaseOptions.max_leases=", options.max_leases,
                     " must be at least 1 (default ", kMaxTensorReadLeases, ")"));
  }
  if (options.ttl <= absl::ZeroDuration() || options.ttl == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor read LeaseOptions.ttl=", absl::FormatDuration(options.ttl),
        " must be positive and finite (default ", absl::FormatDuration(kTensorReadLeaseTtl), ")"));
  }
  return std::unique_ptr<TensorReadLeases>(new TensorReadLeases(std::move(options)));
}

TensorReadLeases::TensorReadLeases(LeaseOptions options)
    : options_(std::move(options)),
      now_(options_.clock_for_test ? options_.clock_for_test : [] { return absl::Now(); }) {}

void TensorReadLeases::DropExpiredLocked(absl::Time now) {
  absl::erase_if(expiry_, [now](const auto& lease) { return lease.second <= now; });
}

StatusOr<std::string> TensorReadLeases::Prepare() {
  const absl::Time now = now_();
  absl::MutexLock lock(&mu_);
  if (closed_) {
    return absl::UnavailableError(
        "tensor source is stopping and takes no new read leases; read another source");
  }
  DropExpiredLocked(now);
  if (static_cast<int>(expiry_.size()) >= options_.max_leases) {
    return absl::ResourceExhaustedError(
        absl::StrCat("all ", options_.max_leases,
                     " tensor read leases of this source are outstanding (each "
                     "expires ",
                     absl::FormatDuration(options_.ttl),
                     " after it was taken); read another source or retry shortly"));
  }
  std::string id = NewLeaseId();
  expiry_[id] = now + options_.ttl;
  return id;
}

Status TensorReadLeases::Release(absl::string_view lease_id) {
  if (lease_id.empty()) {
    return absl::InvalidArgumentError(
        "ReleaseTensorRead without a lease_id; pass the one PrepareTensorRead returned");
  }
  const absl::Time now = now_();
  absl::MutexLock lock(&mu_);
  DropExpiredLocked(now);
  auto it = expiry_.find(lease_id);
  if (it == expiry_.end()) {
    return absl::NotFoundError(absl::StrCat(
        "tensor read lease not found or expired: ", lease_id, " (leases expire ",
        absl::FormatDuration(options_.ttl),
        " after PrepareTensorRead); the bytes read under it are not guaranteed: read again"));
  }
  expiry_.erase(it);
  return absl::OkStatus();
}

void TensorReadLeases::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

int TensorReadLeases::outstanding() {
  const absl::Time now = now_();
  absl::MutexLock lock(&mu_);
  DropExpiredLocked(now);
  return static_cast<int>(expiry_.size());
}

int TensorReadLeases::AwaitReleased(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto released = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return expiry_.empty(); };
  for (;;) {
    DropExpiredLocked(now_());
    const absl::Time now = absl::Now();
    if (expiry_.empty() || now >= deadline) return static_cast<int>(expiry_.size());
    // Woken by a release; at least once a second, for leases that expire meanwhile.
    mu_.AwaitWithDeadline(absl::Condition(&released), std::min(deadline, now + absl::Seconds(1)));
  }
}

}  // namespace ferry::worker
