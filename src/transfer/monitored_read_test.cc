// MonitoredRead through a fault-injecting Peer (the real interface): a batch that delivers part
// of its bytes and then stops.
#include "transfer/monitored_read.h"

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry {
namespace {

using ::testing::HasSubstr;

// Reports `delivered` bytes done, then never finishes until cancelled.
class StallingBatch final : public ReadBatch {
 public:
  StallingBatch(uint64_t total, uint64_t delivered) : total_(total), delivered_(delivered) {}
  Status Wait(absl::Duration timeout) override {
    if (!cancelled_.WaitForNotificationWithTimeout(timeout)) {
      return absl::DeadlineExceededError("batch deadline");
    }
    return absl::CancelledError("batch cancelled");
  }
  void Cancel() override {
    if (!cancelled_.HasBeenNotified()) cancelled_.Notify();
  }
  uint64_t bytes_done() const override { return delivered_; }
  uint64_t bytes_total() const override { return total_; }

 private:
  const uint64_t total_;
  const uint64_t delivered_;
  absl::Notification cancelled_;
};

class StallingPeer final : public Peer {
 public:
  explicit StallingPeer(uint64_t delivered) : delivered_(delivered) {}
  TransportKind transport() const override { return TransportKind::kTcp; }
  const std::string& description() const override { return description_; }
  StatusOr<std::unique_ptr<ReadBatch>> Submit(std::vector<ReadOp> ops) override {
    uint64_t total = 0;
    for (const ReadOp& op : ops) total += op.length;
    return std::unique_ptr<ReadBatch>(new StallingBatch(total, delivered_));
  }
  void Disconnect() override {}

 private:
  const uint64_t delivered_;
  const std::string description_ = "stalling peer";
};

// The stall message says how far the transfer got; it used to count the stalled batch as read
// and say "1048576 of 1048576 bytes read".
TEST(MonitoredReadTest, AStalledBatchIsReportedWithTheBytesItDelivered) {
  StallingPeer peer(/*delivered=*/4096);
  std::vector<char> dst(1 << 20);
  MonitoredReadOptions options;
  options.stall_timeout = absl::Milliseconds(300);
  options.timeout = absl::Seconds(60);
  const Status s = MonitoredRead(peer, {ReadOp{0, 0, dst.data(), dst.size()}}, dst.size(), options);
  ASSERT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_THAT(s.message(), HasSubstr("(4096 of 1048576 bytes read)"));
  EXPECT_THAT(s.message(), HasSubstr("the transfer stalled"));
}

}  // namespace
}  // namespace ferry
