#include "transfer/monitored_read.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace ferry {
namespace {

// Splits ops into batches of about `batch_bytes` (0: one batch).
std::vector<std::vector<ReadOp>> Batches(std::vector<ReadOp> ops, uint64_t batch_bytes) {
  std::vector<std::vector<ReadOp>> out;
  if (batch_bytes == 0) {
    out.push_back(std::move(ops));
    return out;
  }
  out.emplace_back();
  uint64_t in_batch = 0;
  for (ReadOp op : ops) {
    while (op.length > 0) {
      const uint64_t take = std::min(op.length, batch_bytes - in_batch);
      out.back().push_back(ReadOp{op.remote_region, op.remote_offset, op.local, take});
      op.remote_offset += take;
      op.local = static_cast<uint8_t*>(op.local) + take;
      op.length -= take;
      in_batch += take;
      if (in_batch == batch_bytes) {
        out.emplace_back();
        in_batch = 0;
      }
    }
  }
  if (out.back().empty()) out.pop_back();
  return out;
}

}  // namespace

std::vector<ReadOp> CoalesceReadOps(std::vector<ReadOp> ops) {
  std::vector<ReadOp> out;
  out.reserve(ops.size());
  for (const ReadOp& op : ops) {
    if (op.length == 0) continue;
    if (!out.empty()) {
      ReadOp& last = out.back();
      if (last.remote_region == op.remote_region &&
          last.remote_offset + last.length == op.remote_offset &&
          static_cast<uint8_t*>(last.local) + last.length == op.local) {
        last.length += op.length;
        continue;
      }
    }
    out.push_back(op);
  }
  return out;
}

Status MonitoredRead(Peer& peer, std::vector<ReadOp> ops, uint64_t total,
                     const MonitoredReadOptions& options) {
  absl::Mutex progress_mu;
  std::atomic<uint64_t> done_before{0};
  std::atomic<ReadBatch*> current{nullptr};
  std::atomic<bool> stalled{false};
  absl::Notification finished;
  // Reports progress and abandons a transfer that stopped moving.
  std::thread monitor([&] {
    uint64_t last = UINT64_MAX;
    const ReadBatch* last_batch = nullptr;
    absl::Time last_change = absl::Now();
    do {
      uint64_t now = 0;
      {
        // `current` is cleared under this lock before its batch is destroyed.
        absl::MutexLock lock(&progress_mu);
        ReadBatch* batch = current.load();
        now = done_before.load() + (batch ? batch->bytes_done() : 0);
        if (batch != last_batch || now != last) {
          last_batch = batch;
          last = now;
          last_change = absl::Now();
        } else if (batch != nullptr && options.stall_timeout > absl::ZeroDuration() &&
                   absl::Now() - last_change >= options.stall_timeout) {
          stalled = true;
          batch->Cancel();
        }
      }
      if (options.on_progress) options.on_progress(now, total);
    } while (!finished.WaitForNotificationWithTimeout(absl::Milliseconds(100)));
  });
  Status status;
  std::vector<std::vector<ReadOp>> batches = Batches(std::move(ops), options.batch_bytes);
  for (size_t i = 0; i < batches.size() && status.ok(); ++i) {
    if (i > 0 && options.batch_pause > absl::ZeroDuration()) absl::SleepFor(options.batch_pause);
    uint64_t bytes = 0;
    for (const ReadOp& op : batches[i]) bytes += op.length;
    StatusOr<std::unique_ptr<ReadBatch>> batch = peer.Submit(std::move(batches[i]));
    if (!batch.ok()) {
      status = batch.status();
      break;
    }
    current.store(batch->get());
    const absl::Duration left = options.timeout - (absl::Now() - options.start);
    status = (*batch)->Wait(std::max(left, absl::ZeroDuration()));
    // A failed batch counts what it delivered, not what it was asked for, so that a stall's
    // message says how far the transfer got.
    const uint64_t delivered = status.ok() ? bytes : std::min(bytes, (*batch)->bytes_done());
    // Hold the progress thread off the batch while it is destroyed.
    {
      absl::MutexLock lock(&progress_mu);
      current.store(nullptr);
    }
    done_before += delivered;
  }
  finished.Notify();
  monitor.join();
  if (stalled && !status.ok()) {
    return absl::DeadlineExceededError(absl::StrCat(
        "the transfer stalled: no bytes arrived for ", absl::FormatDuration(options.stall_timeout),
        " (", done_before.load(), " of ", total, " bytes read); ", status.message()));
  }
  if (status.ok() && options.on_progress) options.on_progress(total, total);
  return status;
}

}  // namespace ferry
