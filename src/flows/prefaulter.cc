#include "flows/prefaulter.h"

#include <algorithm>
#include <utility>

namespace ferry::weights {

Prefaulter::Prefaulter(const Region* region, const std::vector<ReadOp>& ops,
                       std::atomic<bool>* cancel)
    : region_(region), cancel_(cancel) {
  if (region == nullptr) return;
  state_ = std::vector<std::atomic<uint8_t>>((region->size() + kStep - 1) / kStep);
  thread_ = std::thread([this, ops] {
    for (const ReadOp& op : ops) {
      uint64_t first = 0;
      uint64_t last = 0;
      if (!Steps(op.local, op.length, &first, &last)) continue;
      for (uint64_t k = first; k <= last; ++k) {
        if (cancel_->load(std::memory_order_relaxed)) return;
        if (Claim(k)) Run(k);
      }
    }
  });
}

Prefaulter::~Prefaulter() { Finish().IgnoreError(); }

bool Prefaulter::Steps(const void* local, uint64_t length, uint64_t* first, uint64_t* last) const {
  const auto* base = static_cast<const char*>(region_->data());
  const auto* p = static_cast<const char*>(local);
  if (length == 0 || p < base || p > base + region_->size() ||
      length > region_->size() - static_cast<uint64_t>(p - base)) {
    return false;
  }
  const uint64_t at = static_cast<uint64_t>(p - base);
  *first = at / kStep;
  *last = (at + length - 1) / kStep;
  return true;
}

void Prefaulter::Prepare(const void* local, uint64_t length) {
  uint64_t first = 0;
  uint64_t last = 0;
  if (!active() || !Steps(local, length, &first, &last)) return;
  for (uint64_t k = first; k <= last; ++k) {
    if (state_[k].load() == kDone) continue;  // the common case once the thread is ahead
    if (Claim(k)) {
      Run(k);
      continue;
    }
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](std::atomic<uint8_t>* s) { return s->load() == kDone; }, &state_[k]));
  }
}

Status Prefaulter::Finish() {
  if (thread_.joinable()) thread_.join();
  absl::MutexLock lock(&mu_);
  return status_;
}

bool Prefaulter::Claim(uint64_t step) {
  uint8_t todo = kTodo;
  return state_[step].compare_exchange_strong(todo, kBusy);
}

void Prefaulter::Run(uint64_t step) {
  const uint64_t offset = step * kStep;
  Status s = cancel_->load(std::memory_order_relaxed)
                 ? absl::OkStatus()
                 : region_->Prefault(offset, std::min(kStep, region_->size() - offset));
  absl::MutexLock lock(&mu_);  // waiters re-check their condition when it is released
  state_[step].store(kDone);
  if (!s.ok() && status_.ok()) {
    status_ = std::move(s);
    cancel_->store(true);
  }
}

}  // namespace ferry::weights
