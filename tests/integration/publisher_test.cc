// Publisher against a real ferry-server child process: publish + READY, heartbeats, re-publish
// after the server forgot the record, STALE on Stop.
#include "ferry/publisher.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "ferry/metadata_client.h"
#include "server_client_test.h"
#include "server_process.h"

namespace ferry {
namespace {

namespace p2p = ::model_express::p2p;
using ::ferry::testing::ServerProcess;
using ::testing::HasSubstr;

constexpr absl::Duration kInterval = absl::Milliseconds(200);

// Polls `done` every 20 ms until it holds or `timeout` passes; returns whether it held.
bool WaitFor(const std::function<bool()>& done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

class PublisherTest : public ::ferry::testing::ServerClientTest {
 protected:
  PublisherOptions Options() {
    PublisherOptions o;
    o.client = client_.get();
    o.identity.set_model_name("test/publisher");
    o.identity.set_dtype("bfloat16");
    o.worker.set_worker_rank(3);
    o.worker.set_worker_grpc_endpoint("10.0.0.1:6555");
    o.worker.set_accelerator("cuda");
    // Ignored: the server owns status and updated_at.
    o.worker.set_status(p2p::SOURCE_STATUS_STALE);
    o.worker.set_updated_at(12345);
    o.heartbeat_interval = kInterval;
    return o;
  }

  std::unique_ptr<Publisher> StartedPublisher() {
    auto p = Publisher::Create(Options());
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return nullptr;
    Status s = (*p)->Start();
    EXPECT_TRUE(s.ok()) << s;
    return std::move(p).value();
  }

  StatusOr<GetMetadataResponse> Get(const Publisher& p) {
    return client_->GetMetadata(p.mx_source_id(), p.worker_id());
  }

  bool ListedAsReady(const Publisher& p) {
    ListSourcesRequest r;
    r.set_status_filter(p2p::SOURCE_STATUS_READY);
    auto refs = client_->ListSources(r);
    if (!refs.ok()) return false;
    for (const SourceInstanceRef& ref : *refs) {
      if (ref.mx_source_id() == p.mx_source_id() && ref.worker_id() == p.worker_id()) {
        return true;
      }
    }
    return false;
  }
};

TEST_F(PublisherTest, StartPublishesAndMarksReady) {
  auto p = StartedPublisher();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->mx_source_id(), *ComputeMxSourceId(Options().identity));
  EXPECT_THAT(p->worker_id(), ::testing::MatchesRegex("[0-9a-f]{16}"));

  auto got = Get(*p);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->worker().status(), p2p::SOURCE_STATUS_READY);
  EXPECT_EQ(got->worker().worker_rank(), 3u);
  EXPECT_EQ(got->worker().worker_grpc_endpoint(), "10.0.0.1:6555");
  EXPECT_GT(got->worker().updated_at(), 12345);
  EXPECT_EQ(got->identity().model_name(), "test/publisher");
  EXPECT_TRUE(ListedAsReady(*p));
}

// A target serving while it pulls: INITIALIZING (heartbeats keep it so, and READY listings, as
// ModelExpress clients use them, never show it) until MarkReady.
TEST_F(PublisherTest, StartInitializingStaysOutOfReadyListingsUntilMarkReady) {
  PublisherOptions o = Options();
  o.start_initializing = true;
  auto created = Publisher::Create(o);
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<Publisher> p = std::move(created).value();
  EXPECT_EQ(p->MarkReady().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(p->Start().ok());
  ASSERT_TRUE(WaitFor([&] { return p->heartbeat_count() >= 2; }, 10 * kInterval));
  auto got = Get(*p);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->worker().status(), p2p::SOURCE_STATUS_INITIALIZING);
  EXPECT_FALSE(ListedAsReady(*p));

  ASSERT_TRUE(p->MarkReady().ok());
  const int beats = p->heartbeat_count();
  ASSERT_TRUE(WaitFor([&] { return p->heartbeat_count() >= beats + 2; }, 10 * kInterval));
  got = Get(*p);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->worker().status(), p2p::SOURCE_STATUS_READY);  // heartbeats keep READY now
  EXPECT_TRUE(ListedAsReady(*p));
  EXPECT_TRUE(p->MarkReady().ok());  // again: nothing to do
}

TEST_F(PublisherTest, HeartbeatsRefreshUpdatedAt) {
  auto p = StartedPublisher();
  ASSERT_NE(p, nullptr);
  auto first = Get(*p);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(WaitFor([&] { return p->heartbeat_count() >= 2; }, 10 * kInterval));
  auto later = Get(*p);
  ASSERT_TRUE(later.ok()) << later.status();
  EXPECT_GT(later->worker().updated_at(), first->worker().updated_at());
  EXPECT_EQ(later->worker().status(), p2p::SOURCE_STATUS_READY);
  EXPECT_EQ(p->failed_heartbeat_count(), 0);
  EXPECT_EQ(p->republish_count(), 0);
}

// A memory-store server forgets everything when it restarts. The next heartbeat gets NotFound
// and publishes again within the same tick: READY again about one interval after the server is
// back (plus gRPC's 100 ms reconnect backoff if a heartbeat hit the server while it was down).
TEST_F(PublisherTest, RepublishesAfterServerRestart) {
  auto p = StartedPublisher();
  ASSERT_NE(p, nullptr);
  ASSERT_TRUE(server_->Restart().ok());
  const absl::Time back = absl::Now();

  ASSERT_TRUE(WaitFor([&] { return ListedAsReady(*p); }, absl::Seconds(10)))
      << "failed heartbeats: " << p->failed_heartbeat_count();
  // Typically one interval; the bound leaves room for a loaded machine but stays below gRPC's
  // 5 s backup poll, which is what a client that does not watch its channel would wait for.
  const absl::Duration took = absl::Now() - back;
  EXPECT_LT(took, 10 * kInterval) << "re-published after " << took;
  EXPECT_GE(p->republish_count(), 1);
  auto got = Get(*p);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->worker().status(), p2p::SOURCE_STATUS_READY);
  EXPECT_EQ(got->worker().worker_grpc_endpoint(), "10.0.0.1:6555");
}

// While the server is down heartbeats fail (logged, counted) and the thread keeps ticking; when
// it comes back the record is published again.
TEST_F(PublisherTest, SurvivesAnOutage) {
  auto p = StartedPublisher();
  ASSERT_NE(p, nullptr);
  server_->Kill();
  ASSERT_TRUE(WaitFor([&] { return p->failed_heartbeat_count() >= 1; }, absl::Seconds(10)));
  ASSERT_TRUE(server_->Restart().ok());
  const absl::Time back = absl::Now();
  ASSERT_TRUE(WaitFor([&] { return ListedAsReady(*p); }, absl::Seconds(10)));
  EXPECT_LT(absl::Now() - back, 15 * kInterval);
  EXPECT_GE(p->republish_count(), 1);
}

TEST_F(PublisherTest, StopMarksStaleAndStaleWins) {
  auto p = StartedPublisher();
  ASSERT_NE(p, nullptr);
  ASSERT_TRUE(WaitFor([&] { return p->heartbeat_count() >= 1; }, 10 * kInterval));
  p->Stop();
  auto stopped = Get(*p);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ(stopped->worker().status(), p2p::SOURCE_STATUS_STALE);
  EXPECT_FALSE(ListedAsReady(*p));

  // No heartbeat follows STALE.
  const int beats = p->heartbeat_count();
  absl::SleepFor(3 * kInterval);
  auto later = Get(*p);
  ASSERT_TRUE(later.ok()) << later.status();
  EXPECT_EQ(later->worker().status(), p2p::SOURCE_STATUS_STALE);
  EXPECT_EQ(later->worker().updated_at(), stopped->worker().updated_at());
  EXPECT_EQ(p->heartbeat_count(), beats);
}

TEST_F(PublisherTest, StopIsIdempotentAndPromptAndFinal) {
  PublisherOptions o = Options();
  o.heartbeat_interval = absl::Seconds(30);  // Stop must not wait for the next tick
  auto p = Publisher::Create(o);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE((*p)->Start().ok());
  const absl::Time start = absl::Now();
  (*p)->Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  (*p)->Stop();
  Status again = (*p)->Start();
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  auto got = client_->GetMetadata((*p)->mx_source_id(), (*p)->worker_id());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->worker().status(), p2p::SOURCE_STATUS_STALE);
}

TEST_F(PublisherTest, DestructorStopsAndMarksStale) {
  std::string source_id;
  std::string worker_id;
  {
    auto p = StartedPublisher();
    ASSERT_NE(p, nullptr);
    source_id = p->mx_source_id();
    worker_id = p->worker_id();
  }
  auto got = client_->GetMetadata(source_id, worker_id);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->worker().status(), p2p::SOURCE_STATUS_STALE);
}

TEST_F(PublisherTest, StartTwiceIsFailedPrecondition) {
  auto p = StartedPublisher();
  ASSERT_NE(p, nullptr);
  Status s = p->Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("already started"));
}

TEST_F(PublisherTest, KeepsAGivenWorkerId) {
  PublisherOptions o = Options();
  o.worker_id = "abcd1234";
  auto p = Publisher::Create(o);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE((*p)->Start().ok());
  auto got = client_->GetMetadata((*p)->mx_source_id(), "abcd1234");
  ASSERT_TRUE(got.ok()) << got.status();
}

TEST(PublisherUnreachableTest, StartFailsWithUnavailableAndStartsNoThread) {
  const std::string address = absl::StrCat("127.0.0.1:", testing::UnusedLoopbackPort());
  MetadataClientOptions co;
  co.server_address = address;
  auto client = MetadataClient::Create(co);
  ASSERT_TRUE(client.ok()) << client.status();
  PublisherOptions o;
  o.client = client->get();
  o.identity.set_model_name("test/unreachable");
  o.heartbeat_interval = kInterval;
  auto p = Publisher::Create(o);
  ASSERT_TRUE(p.ok()) << p.status();
  Status s = (*p)->Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(s.message()), HasSubstr(absl::StrCat("PublishMetadata to ", address)));
  absl::SleepFor(2 * kInterval);
  EXPECT_EQ((*p)->heartbeat_count() + (*p)->failed_heartbeat_count(), 0);
  (*p)->Stop();
}

}  // namespace
}  // namespace ferry
