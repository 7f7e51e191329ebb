#include "server/reaper.h"

#include <algorithm>
#include <array>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace ferry::server {
namespace {
namespace p2p = ::model_express::p2p;
}  // namespace

StatusOr<std::unique_ptr<Reaper>> Reaper::Create(store::MetadataStore* store, Metrics* metrics,
                                                 ReaperOptions options) {
  const std::pair<absl::Duration, const char*> durations[] = {
      {options.scan_interval, "scan_interval"},
      {options.heartbeat_timeout, "heartbeat_timeout"},
      {options.gc_timeout, "gc_timeout"},
  };
  for (const auto& [d, name] : durations) {
    if (d <= absl::ZeroDuration() || d == absl::InfiniteDuration()) {
      return absl::InvalidArgumentError(absl::StrCat("reaper ", name, "=", absl::FormatDuration(d),
                                                     " must be a positive, finite duration"));
    }
  }
  if (!options.now_ms) return absl::InvalidArgumentError("reaper now_ms clock is not set");
  return std::unique_ptr<Reaper>(new Reaper(store, metrics, std::move(options)));
}

Reaper::Reaper(store::MetadataStore* store, Metrics* metrics, ReaperOptions options)
    : store_(store), metrics_(metrics), options_(std::move(options)) {}

Reaper::~Reaper() { Stop(); }

void Reaper::Start() {
  absl::MutexLock lock(&mu_);
  if (thread_.joinable() || stopping_) return;
  thread_ = std::thread([this] { Loop(); });
}

void Reaper::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void Reaper::Loop() {
  while (true) {
    auto pass = RunOnce();
    if (!pass.ok()) spdlog::warn("reaper scan failed: {}", pass.status().message());
    absl::MutexLock lock(&mu_);
    auto stopping = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping), options_.scan_interval)) return;
  }
}

StatusOr<ReaperPass> Reaper::RunOnce() {
  metrics_->CountReaper(ReaperEvent::kScan);
  const int64_t now = options_.now_ms();
  auto workers = store_->ListWorkers({});
  if (!workers.ok()) {
    metrics_->CountReaper(ReaperEvent::kScanError);
    return workers.status();
  }
  const int64_t timeout_ms = absl::ToInt64Milliseconds(options_.heartbeat_timeout);
  const int64_t gc_ms = absl::ToInt64Milliseconds(options_.gc_timeout);
  ReaperPass pass;
  std::array<int64_t, 4> by_status{};
  for (const store::WorkerSummary& w : *workers) {
    ++pass.scanned;
    if (w.status >= 0 && w.status < 4) ++by_status[w.status];
    const int64_t age = std::max<int64_t>(0, now - w.updated_at);
    Status s;
    bool marking = false;
    if (w.status != p2p::SOURCE_STATUS_STALE && age > timeout_ms) {
      marking = true;
      s = store_->UpdateStatus({w.mx_source_id, w.worker_id, std::nullopt, p2p::SOURCE_STATUS_STALE,
                                now, w.version,
                                /*caller=*/"", /*override_owner=*/true});
    } else if (w.status == p2p::SOURCE_STATUS_STALE && age > gc_ms) {
      s = store_->RemoveWorker(w.mx_source_id, w.worker_id, w.version);
    } else {
      continue;
    }
    if (s.ok()) {
      if (marking) {
        ++pass.marked_stale;
        --by_status[w.status];
        ++by_status[p2p::SOURCE_STATUS_STALE];
        spdlog::info("reaper: marked source {} worker {} STALE (no update for {} ms)",
                     w.mx_source_id, w.worker_id, age);
      } else {
        ++pass.deleted;
        --by_status[p2p::SOURCE_STATUS_STALE];
        spdlog::info("reaper: deleted source {} worker {} (STALE for {} ms)", w.mx_source_id,
                     w.worker_id, age);
      }
    } else if (s.code() == absl::StatusCode::kAborted || s.code() == absl::StatusCode::kNotFound) {
      ++pass.conflicts;  // a heartbeat, re-publish or another replica got there first
    } else {
      metrics_->CountReaper(ReaperEvent::kWorkerError);
      spdlog::warn("reaper: source {} worker {}: {}", w.mx_source_id, w.worker_id, s.message());
    }
  }
  metrics_->CountReaper(ReaperEvent::kMarkedStale, pass.marked_stale);
  metrics_->CountReaper(ReaperEvent::kDeleted, pass.deleted);
  metrics_->CountReaper(ReaperEvent::kConflict, pass.conflicts);
  metrics_->SetRecordsByStatus(by_status);
  return pass;
}

}  // namespace ferry::server
