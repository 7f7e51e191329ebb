#include "flows/landing_verifier.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "weights/tensor_checksum.h"

namespace ferry::weights {

namespace {
uintptr_t Address(const void* p) { return reinterpret_cast<uintptr_t>(p); }
}  // namespace

LandingVerifier::LandingVerifier(std::vector<Tensor> tensors, int threads,
                                 std::function<void(size_t)> on_mismatch,
                                 std::function<void(size_t)> on_verified,
                                 ChecksumAlgorithm algorithm, ChecksumFunction checksum)
    : tensors_(std::move(tensors)),
      remaining_(tensors_.size()),
      sums_(tensors_.size(), 0),
      generation_(tensors_.size(), 0),
      on_mismatch_(std::move(on_mismatch)),
      on_verified_(std::move(on_verified)),
      algorithm_(algorithm),
      checksum_(std::move(checksum)) {
  by_start_.resize(tensors_.size());
  std::iota(by_start_.begin(), by_start_.end(), 0);
  std::sort(by_start_.begin(), by_start_.end(), [&](size_t a, size_t b) {
    return Address(tensors_[a].data) < Address(tensors_[b].data);
  });
  max_end_.resize(by_start_.size());
  uintptr_t end = 0;
  for (size_t k = 0; k < by_start_.size(); ++k) {
    const Tensor& t = tensors_[by_start_[k]];
    end = std::max(end, Address(t.data) + t.size);
    max_end_[k] = end;
  }
  {
    absl::MutexLock lock(&mu_);
    state_.assign(tensors_.size(), State::kPending);
    for (size_t i = 0; i < tensors_.size(); ++i) {
      remaining_[i].store(static_cast<int64_t>(tensors_[i].size));
      if (tensors_[i].size == 0) queue_.push_back(i);
    }
  }
  const int n = std::clamp(threads, 1, 16);
  for (int i = 0; i < n; ++i) threads_.emplace_back([this] { Work(); });
}

LandingVerifier::~LandingVerifier() {
  Abandon();
  for (std::thread& t : threads_) t.join();
}

void LandingVerifier::Landed(const void* data, uint64_t size) {
  if (size == 0 || by_start_.empty()) return;
  const uintptr_t begin = Address(data);
  const uintptr_t end = begin + size;
  // The first tensor starting at or after `end`; every candidate lies before it. Walk back
  // while some tensor before could still reach into [begin, end).
  size_t k =
      std::upper_bound(by_start_.begin(), by_start_.end(), end - 1,
                       [&](uintptr_t a, size_t i) { return a < Address(tensors_[i].data); }) -
      by_start_.begin();
  std::vector<size_t> complete;
  while (k > 0 && max_end_[k - 1] > begin) {
    --k;
    const size_t i = by_start_[k];
    const uintptr_t t_begin = Address(tensors_[i].data);
    const uintptr_t t_end = t_begin + tensors_[i].size;
    const uintptr_t lo = std::max(begin, t_begin);
    const uintptr_t hi = std::min(end, t_end);
    if (hi <= lo) continue;
    const int64_t overlap = static_cast<int64_t>(hi - lo);
    const int64_t before = remaining_[i].fetch_sub(overlap);
    if (before > 0 && before - overlap <= 0) complete.push_back(i);
  }
  if (complete.empty()) return;
  absl::MutexLock lock(&mu_);
  for (size_t i : complete) queue_.push_back(i);
}

void LandingVerifier::Work() {
  for (;;) {
    size_t i;
    uint64_t generation;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](LandingVerifier* v)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(v->mu_) { return v->stop_ || !v->queue_.empty(); },
          this));
      if (stop_) return;
      i = queue_.front();
      queue_.pop_front();
      generation = generation_[i];
      ++running_;
    }
    StatusOr<uint64_t> computed =
        checksum_
            ? checksum_(tensors_[i].data, tensors_[i].size)
            : StatusOr<uint64_t>(TensorChecksum(tensors_[i].data, tensors_[i].size, algorithm_));
    const uint64_t sum = computed.ok() ? *computed : 0;
    const bool good = computed.ok() && sum == tensors_[i].expected;
    if (!good && on_mismatch_) on_mismatch_(i);
    {
      absl::MutexLock lock(&mu_);
      --running_;
      if (generation != generation_[i] || state_[i] != State::kPending) continue;  // re-armed
      if (!computed.ok()) {
        errors_[i] = computed.status();
      } else {
        errors_.erase(i);
      }
      sums_[i] = sum;
      state_[i] = good ? State::kGood : State::kBad;
      ++checked_;
      if (good) ++good_;
    }
    if (good && on_verified_) on_verified_(i);
  }
}

Status LandingVerifier::Finish() {
  const absl::Time start = absl::Now();
  size_t bad = SIZE_MAX;
  uint64_t sum = 0;
  {
    absl::MutexLock lock(&mu_);
    // Tensors that never completed cannot be waited for: count them first.
    size_t incomplete = 0;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      incomplete += remaining_[i].load() > 0 && state_[i] == State::kPending ? 1 : 0;
    }
    if (incomplete > 0) {
      stop_ = true;
      return absl::InternalError(absl::StrCat(
          incomplete, " tensor(s) did not land completely although the read finished"));
    }
    auto settled = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return checked_ == tensors_.size() || (checked_ > good_ && queue_.empty() && running_ == 0) ||
             stop_;
    };
    mu_.Await(absl::Condition(&settled));
    for (size_t i = 0; i < tensors_.size() && bad == SIZE_MAX; ++i) {
      if (state_[i] == State::kBad) bad = i;
    }
    if (bad != SIZE_MAX) sum = sums_[bad];
    stop_ = true;
    if (bad != SIZE_MAX && errors_.count(bad) != 0) {
      const Status& e = errors_.at(bad);
      tail_ = absl::Now() - start;
      return Status(e.code(),
                    absl::StrCat("verifying tensor ", tensors_[bad].name, " (",
                                 ChecksumAlgorithmName(algorithm_), ") failed: ", e.message()));
    }
  }
  tail_ = absl::Now() - start;
  return MismatchStatus(bad, sum);
}

Status LandingVerifier::Mismatch() {
  size_t bad = SIZE_MAX;
  uint64_t sum = 0;
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < tensors_.size() && bad == SIZE_MAX; ++i) {
      if (state_[i] == State::kBad) bad = i;
    }
    if (bad != SIZE_MAX) sum = sums_[bad];
  }
  return MismatchStatus(bad, sum);
}

void LandingVerifier::WaitIdle() {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return (queue_.empty() && running_ == 0) || stop_;
  };
  mu_.Await(absl::Condition(&idle));
}

void LandingVerifier::Rearm(size_t i) {
  absl::MutexLock lock(&mu_);
  if (state_[i] != State::kPending) {
    --checked_;
    if (state_[i] == State::kGood) --good_;
    state_[i] = State::kPending;
  }
  ++generation_[i];
  std::erase(queue_, i);
  remaining_[i].store(static_cast<int64_t>(tensors_[i].size));
  if (tensors_[i].size == 0) queue_.push_back(i);
}

void LandingVerifier::MarkVerified(size_t i, uint64_t sum) {
  absl::MutexLock lock(&mu_);
  ++generation_[i];
  std::erase(queue_, i);
  remaining_[i].store(0);
  if (state_[i] == State::kGood) return;
  if (state_[i] == State::kPending) ++checked_;
  state_[i] = State::kGood;
  ++good_;
  sums_[i] = sum;
}

bool LandingVerifier::Verified(size_t i) {
  absl::MutexLock lock(&mu_);
  return state_[i] == State::kGood;
}

size_t LandingVerifier::verified_count() {
  absl::MutexLock lock(&mu_);
  return good_;
}

Status LandingVerifier::MismatchStatus(size_t bad, uint64_t sum) const {
  if (bad == SIZE_MAX) return absl::OkStatus();
  const Tensor& t = tensors_[bad];
  return absl::DataLossError(absl::StrCat(
      "tensor ", t.name, " (", t.size,
      " bytes) failed verification: ", ChecksumAlgorithmName(algorithm_), " ",
      absl::Hex(sum, absl::kZeroPad16), " but the source announced ",
      absl::Hex(t.expected, absl::kZeroPad16), "; the source's memory or the transfer is corrupt"));
}

void LandingVerifier::Abandon() {
  absl::MutexLock lock(&mu_);
  stop_ = true;
}

}  // namespace ferry::weights
