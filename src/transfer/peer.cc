#include "transfer/peer.h"

#include <atomic>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace ferry::internal {

namespace {

// What a batch's thread and its ReadBatch share. Outlives both (the Peer waits on it too).
struct BatchState {
  std::vector<ReadOp> ops;
  uint64_t bytes_total = 0;
  std::atomic<bool> cancelled{false};
  std::atomic<uint64_t> bytes_done{0};

  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  Status status ABSL_GUARDED_BY(mu);

  void Finish(Status s) {
    absl::MutexLock lock(&mu);
    status = std::move(s);
    done = true;
  }
  // True when the batch finished within `timeout`.
  bool AwaitDone(absl::Duration timeout) {
    absl::MutexLock lock(&mu);
    return mu.AwaitWithTimeout(absl::Condition(&done), timeout);
  }
};

// Thread-compatible.
class ReadBatchImpl : public ReadBatch {
 public:
  ReadBatchImpl(std::shared_ptr<BatchState> state, std::shared_ptr<PeerConnection> connection)
      : state_(std::move(state)) {
    thread_ = std::thread([state = state_, connection = std::move(connection)] {
      ReadControl ctl;
      ctl.cancelled = &state->cancelled;
      ctl.bytes_done = &state->bytes_done;
      state->Finish(connection->Read(state->ops, ctl));
    });
  }
  ~ReadBatchImpl() override {
    Cancel();
    if (thread_.joinable()) thread_.join();
  }

  Status Wait(absl::Duration timeout) override {
    if (finished_) return final_;
    bool timed_out = false;
    if (!state_->AwaitDone(timeout)) {
      timed_out = true;
      state_->cancelled.store(true);
      state_->AwaitDone(absl::InfiniteDuration());
    }
    thread_.join();
    Status s;
    {
      absl::MutexLock lock(&state_->mu);
      s = state_->status;
    }
    if (timed_out && !user_cancelled_ && s.code() == absl::StatusCode::kCancelled) {
      s = absl::DeadlineExceededError(
          absl::StrCat("deadline of ", absl::FormatDuration(timeout), " passed: ", s.message()));
    }
    final_ = std::move(s);
    finished_ = true;
    return final_;
  }
  void Cancel() override {
    user_cancelled_ = true;
    state_->cancelled.store(true);
  }
  uint64_t bytes_done() const override { return state_->bytes_done.load(); }
  uint64_t bytes_total() const override { return state_->bytes_total; }

 private:
  std::shared_ptr<BatchState> state_;
  std::thread thread_;
  std::atomic<bool> user_cancelled_{false};  // Cancel() may run on another thread
  bool finished_ = false;
  Status final_;
};

// Thread-safe: Submit serializes batches on submit_mu_.
class PeerImpl : public Peer {
 public:
  PeerImpl(std::shared_ptr<PeerConnection> connection, TransportKind kind, std::string description,
           std::map<uint32_t, uint64_t> region_sizes)
      : connection_(std::move(connection)),
        kind_(kind),
        description_(std::move(description)),
        region_sizes_(std::move(region_sizes)) {}
  ~PeerImpl() override { Disconnect(); }

  TransportKind transport() const override { return kind_; }
  const std::string& description() const override { return description_; }

  StatusOr<std::unique_ptr<ReadBatch>> Submit(std::vector<ReadOp> ops) override {
    FERRY_RETURN_IF_ERROR(ValidateOps(ops, region_sizes_, description_));
    absl::MutexLock lock(&submit_mu_);
    if (last_ != nullptr) last_->AwaitDone(absl::InfiniteDuration());
    if (disconnected_.load()) {
      return absl::FailedPreconditionError(
          absl::StrCat("peer ", description_, " is disconnected; Connect again"));
    }
    auto state = std::make_shared<BatchState>();
    for (const ReadOp& op : ops) state->bytes_total += op.length;
    state->ops = std::move(ops);
    last_ = state;
    return std::unique_ptr<ReadBatch>(new ReadBatchImpl(std::move(state), connection_));
  }

  void Disconnect() override {
    disconnected_.store(true);
    connection_->Close();
  }

 private:
  const std::shared_ptr<PeerConnection> connection_;
  const TransportKind kind_;
  const std::string description_;
  const std::map<uint32_t, uint64_t> region_sizes_;
  std::atomic<bool> disconnected_{false};
  absl::Mutex submit_mu_;
  std::shared_ptr<BatchState> last_ ABSL_GUARDED_BY(submit_mu_);
};

}  // namespace

Status ValidateOps(const std::vector<ReadOp>& ops, const std::map<uint32_t, uint64_t>& sizes,
                   const std::string& description) {
  for (size_t i = 0; i < ops.size(); ++i) {
    const ReadOp& op = ops[i];
    auto range = [&] {
      const bool overflows = op.length > UINT64_MAX - op.remote_offset;
      return overflows ? absl::StrCat("region ", op.remote_region, " [", op.remote_offset, ", +",
                                      op.length, ")")
                       : absl::StrCat("region ", op.remote_region, " [", op.remote_offset, ", ",
                                      op.remote_offset + op.length, ")");
    };
    auto it = sizes.find(op.remote_region);
    if (it == sizes.end()) {
      return absl::InvalidArgumentError(absl::StrCat("op ", i, " (", range(),
                                                     ") names a region that ", description,
                                                     " does not export; check the blob"));
    }
    if (op.remote_offset > it->second || op.length > it->second - op.remote_offset) {
      return absl::InvalidArgumentError(
          absl::StrCat("op ", i, " (", range(), ") is out of range: region ", op.remote_region,
                       " of ", description, " has ", it->second, " bytes"));
    }
    if (op.local == nullptr && op.length > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("op ", i, " (", range(), ") has a null local pointer"));
    }
  }
  return absl::OkStatus();
}

std::unique_ptr<Peer> MakePeer(std::shared_ptr<PeerConnection> connection, TransportKind kind,
                               std::string description, std::map<uint32_t, uint64_t> region_sizes) {
  return std::make_unique<PeerImpl>(std::move(connection), kind, std::move(description),
                                    std::move(region_sizes));
}

}  // namespace ferry::internal
