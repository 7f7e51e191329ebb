#include "ferry/publisher.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "common/testing/status_matchers.h"

namespace ferry {
namespace {

using ::ferry::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::StartsWith;

// Creating a client never connects, so these tests need no server.
std::unique_ptr<MetadataClient> UnconnectedClient() {
  MetadataClientOptions o;
  o.server_address = "127.0.0.1:1";
  auto c = MetadataClient::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return std::move(c).value();
}

PublisherOptions ValidOptions(MetadataClient* client) {
  PublisherOptions o;
  o.client = client;
  o.identity.set_model_name("test/model");
  o.heartbeat_interval = absl::Milliseconds(200);
  return o;
}

TEST(GenerateWorkerIdTest, SixteenLowercaseHexCharactersAndDistinct) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    std::string id = GenerateWorkerId();
    EXPECT_THAT(id, MatchesRegex("[0-9a-f]{16}"));
    seen.insert(id);
  }
  EXPECT_EQ(seen.size(), 1000u);
}

TEST(PublisherCreateTest, RequiresClient) {
  PublisherOptions o = ValidOptions(nullptr);
  EXPECT_THAT(Publisher::Create(o), StatusIs(absl::StatusCode::kInvalidArgument,
                                             StartsWith("PublisherOptions.client is required")));
}

TEST(PublisherCreateTest, RequiresModelName) {
  auto client = UnconnectedClient();
  PublisherOptions o = ValidOptions(client.get());
  o.identity.clear_model_name();
  EXPECT_THAT(Publisher::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("PublisherOptions.identity.model_name is required")));
}

TEST(PublisherCreateTest, RejectsNonPositiveInterval) {
  auto client = UnconnectedClient();
  for (absl::Duration d : {absl::ZeroDuration(), -absl::Seconds(1), absl::InfiniteDuration()}) {
    PublisherOptions o = ValidOptions(client.get());
    o.heartbeat_interval = d;
    EXPECT_THAT(Publisher::Create(o), StatusIs(absl::StatusCode::kInvalidArgument,
                                               StartsWith("PublisherOptions.heartbeat_interval=")));
  }
}

TEST(PublisherCreateTest, RejectsHugeWorkerId) {
  auto client = UnconnectedClient();
  PublisherOptions o = ValidOptions(client.get());
  o.worker_id = std::string(kMaxIdentityStringBytes + 1, 'w');
  EXPECT_THAT(Publisher::Create(o), StatusIs(absl::StatusCode::kInvalidArgument,
                                             StartsWith("PublisherOptions.worker_id")));
}

TEST(PublisherCreateTest, KeepsGivenWorkerIdOrMintsOne) {
  auto client = UnconnectedClient();
  PublisherOptions o = ValidOptions(client.get());
  o.worker_id = "abcd1234";
  auto p = Publisher::Create(o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->worker_id(), "abcd1234");
  EXPECT_EQ((*p)->heartbeat_interval(), absl::Milliseconds(200));

  o.worker_id.clear();
  p = Publisher::Create(o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_THAT((*p)->worker_id(), MatchesRegex("[0-9a-f]{16}"));
}

TEST(PublisherLifecycleTest, StopWithoutStartIsANoOpAndFinal) {
  auto client = UnconnectedClient();
  auto p = Publisher::Create(ValidOptions(client.get()));
  ASSERT_TRUE(p.ok()) << p.status();
  (*p)->Stop();
  (*p)->Stop();
  EXPECT_THAT((*p)->Start(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("already stopped")));
  EXPECT_EQ((*p)->heartbeat_count(), 0);
}

}  // namespace
}  // namespace ferry
