#include "server/reaper.h"

#include <atomic>

#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "store/fault_store.h"
#include "store/memory_store.h"

namespace ferry::server {
namespace {

namespace p2p = ::model_express::p2p;
using ::ferry::testing::StatusIs;
using ::testing::HasSubstr;

class ReaperTest : public ::testing::Test {
 protected:
  static constexpr int64_t kNow = 1'700'000'000'000;
  static constexpr int64_t kTimeout = 90'000;
  static constexpr int64_t kGc = 3'600'000;

  void SetUp() override {
    auto r = Reaper::Create(&faults_, &metrics_,
                            {absl::Seconds(30), absl::Milliseconds(kTimeout),
                             absl::Milliseconds(kGc), [this] { return now_.load(); }});
    ASSERT_TRUE(r.ok()) << r.status();
    reaper_ = std::move(*r);
  }
  void Put(const std::string& worker, p2p::SourceStatus status, int64_t updated_at) {
    store::PublishRecord rec;
    rec.mx_source_id = "src";
    rec.identity.set_model_name("m");
    rec.worker_id = worker;
    rec.worker.set_status(status);
    rec.worker.set_updated_at(updated_at);
    rec.owner = "owner-of-" + worker;  // the reaper acts on every principal's records
    rec.override_owner = true;
    ASSERT_TRUE(memory_->Publish(rec).ok());
  }
  std::optional<p2p::WorkerMetadata> Find(const std::string& worker) {
    auto got = memory_->GetWorker("src", worker);
    if (!got.ok()) return std::nullopt;
    return got->worker;
  }

  std::unique_ptr<store::MemoryStore> memory_ = store::MemoryStore::Create();
  store::FaultStore faults_{memory_.get()};
  Metrics metrics_{"test", "memory"};
  std::atomic<int64_t> now_{kNow};
  std::unique_ptr<Reaper> reaper_;
};

TEST_F(ReaperTest, RejectsNonPositiveDurations) {
  auto r = Reaper::Create(
      &faults_, &metrics_,
      {absl::ZeroDuration(), absl::Seconds(1), absl::Seconds(1), [] { return int64_t{0}; }});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("scan_interval"));
}

TEST_F(ReaperTest, ExpiresEveryActiveStatusStrictlyAfterTimeout) {
  Put("ready-old", p2p::SOURCE_STATUS_READY, kNow - kTimeout - 1);
  Put("init-old", p2p::SOURCE_STATUS_INITIALIZING, kNow - kTimeout - 1);
  Put("unknown-old", p2p::SOURCE_STATUS_UNKNOWN, kNow - kTimeout - 1);
  Put("ready-edge", p2p::SOURCE_STATUS_READY, kNow - kTimeout);
  Put("ready-new", p2p::SOURCE_STATUS_READY, kNow - 10'000);
  auto pass = reaper_->RunOnce();
  ASSERT_TRUE(pass.ok());
  EXPECT_EQ(pass->scanned, 5);
  EXPECT_EQ(pass->marked_stale, 3);
  for (const char* w : {"ready-old", "init-old", "unknown-old"}) {
    ASSERT_TRUE(Find(w).has_value()) << w;
    EXPECT_EQ(Find(w)->status(), p2p::SOURCE_STATUS_STALE) << w;
    EXPECT_EQ(Find(w)->updated_at(), kNow) << w;  // the GC clock starts now
  }
  EXPECT_EQ(Find("ready-edge")->status(), p2p::SOURCE_STATUS_READY);
  EXPECT_EQ(Find("ready-new")->status(), p2p::SOURCE_STATUS_READY);
  EXPECT_THAT(metrics_.Render(), HasSubstr("ferry_reaper_marked_stale_total 3"));
  EXPECT_THAT(metrics_.Render(), HasSubstr("ferry_records{status=\"stale\"} 3"));
}

TEST_F(ReaperTest, DeletesStaleAfterGcTimeout) {
  Put("stale-old", p2p::SOURCE_STATUS_STALE, kNow - kGc - 1);
  Put("stale-edge", p2p::SOURCE_STATUS_STALE, kNow - kGc);
  auto pass = reaper_->RunOnce();
  ASSERT_TRUE(pass.ok());
  EXPECT_EQ(pass->deleted, 1);
  EXPECT_FALSE(Find("stale-old").has_value());
  EXPECT_TRUE(Find("stale-edge").has_value());
}

TEST_F(ReaperTest, HeartbeatLandingMidScanWins) {
  Put("w", p2p::SOURCE_STATUS_READY, kNow - kTimeout - 5'000);
  // Between the reaper's read and its write, the source's heartbeat arrives.
  faults_.SetAfterListHook([this] {
    ASSERT_TRUE(memory_
                    ->UpdateStatus({"src", "w", 0u, p2p::SOURCE_STATUS_READY, kNow, std::nullopt,
                                    "owner-of-w"})
                    .ok());
  });
  auto pass = reaper_->RunOnce();
  ASSERT_TRUE(pass.ok());
  EXPECT_EQ(pass->marked_stale, 0);
  EXPECT_EQ(pass->conflicts, 1);
  EXPECT_EQ(Find("w")->status(), p2p::SOURCE_STATUS_READY);
  EXPECT_EQ(Find("w")->updated_at(), kNow);
}

TEST_F(ReaperTest, RepublishLandingBeforeGcDeleteWins) {
  Put("w", p2p::SOURCE_STATUS_STALE, kNow - kGc - 5'000);
  faults_.SetAfterListHook([this] { Put("w", p2p::SOURCE_STATUS_READY, kNow); });
  auto pass = reaper_->RunOnce();
  ASSERT_TRUE(pass.ok());
  EXPECT_EQ(pass->deleted, 0);
  EXPECT_EQ(Find("w")->status(), p2p::SOURCE_STATUS_READY);
}

TEST_F(ReaperTest, ListFailureFailsThePassAndIsCounted) {
  faults_.SetFailure(store::FaultStore::Op::kList, absl::UnavailableError("down"));
  auto pass = reaper_->RunOnce();
  EXPECT_THAT(pass, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(metrics_.Render(), HasSubstr("ferry_reaper_scan_errors_total 1"));
}

TEST(ReaperThreadTest, SubSecondDurationsExpireAndCollectOnItsOwn) {
  auto memory = store::MemoryStore::Create();
  Metrics metrics("test", "memory");
  auto now = [] { return absl::ToUnixMillis(absl::Now()); };
  auto reaper = Reaper::Create(
      memory.get(), &metrics,
      {absl::Milliseconds(20), absl::Milliseconds(150), absl::Milliseconds(150), now});
  ASSERT_TRUE(reaper.ok());
  store::PublishRecord rec;
  rec.mx_source_id = "s";
  rec.worker_id = "w";
  rec.worker.set_status(p2p::SOURCE_STATUS_READY);
  rec.worker.set_updated_at(now());
  ASSERT_TRUE(memory->Publish(rec).ok());
  (*reaper)->Start();
  bool saw_stale = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    auto got = memory->GetWorker("s", "w");
    if (got.ok() && got->worker.status() == p2p::SOURCE_STATUS_STALE) saw_stale = true;
    if (!got.ok()) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  (*reaper)->Stop();
  (*reaper)->Stop();  // idempotent
  EXPECT_TRUE(saw_stale);
  EXPECT_THAT(memory->GetWorker("s", "w"), StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace ferry::server
