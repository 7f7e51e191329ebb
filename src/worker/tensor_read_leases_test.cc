// TensorReadLeases on a fake clock: bounds, expiry, release, close.
#include "worker/tensor_read_leases.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/container/flat_hash_set.h"

namespace ferry::worker {
namespace {

using ::testing::HasSubstr;

struct FakeClock {
  absl::Time now = absl::FromUnixSeconds(1'000'000);
  LeaseOptions Options(int max_leases, absl::Duration ttl) {
    LeaseOptions o;
    o.max_leases = max_leases;
    o.ttl = ttl;
    o.clock_for_test = [this] { return now; };
    return o;
  }
};

TEST(TensorReadLeasesTest, DefaultsAreModelExpressLifetimeAndABound) {
  const LeaseOptions o = TensorReadLeaseOptions();
  EXPECT_EQ(o.ttl, absl::Seconds(270));
  EXPECT_EQ(o.max_leases, 256);
}

TEST(TensorReadLeasesTest, RefusesUnboundedOptions) {
  FakeClock clock;
  auto none = TensorReadLeases::Create(clock.Options(0, absl::Seconds(1)));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(none.status().message(), HasSubstr("max_leases=0 must be at least 1"));
  auto forever = TensorReadLeases::Create(clock.Options(1, absl::InfiniteDuration()));
  EXPECT_EQ(forever.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(forever.status().message(), HasSubstr("ttl=inf must be positive and finite"));
}

TEST(TensorReadLeasesTest, BoundedCountThenReleaseFreesASlot) {
  FakeClock clock;
  auto leases = TensorReadLeases::Create(clock.Options(2, absl::Seconds(10)));
  ASSERT_TRUE(leases.ok()) << leases.status();
  auto a = (*leases)->Prepare();
  auto b = (*leases)->Prepare();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->size(), 32u);
  EXPECT_NE(*a, *b);
  auto c = (*leases)->Prepare();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(c.status().message(), HasSubstr("all 2 tensor read leases of this source are "
                                              "outstanding"));
  EXPECT_TRUE((*leases)->Release(*a).ok());
  EXPECT_EQ((*leases)->outstanding(), 1);
  EXPECT_TRUE((*leases)->Prepare().ok());
}

TEST(TensorReadLeasesTest, ExpiredLeasesAreGoneAndFreeTheirSlots) {
  FakeClock clock;
  auto leases = TensorReadLeases::Create(clock.Options(1, absl::Seconds(10)));
  ASSERT_TRUE(leases.ok());
  auto a = (*leases)->Prepare();
  ASSERT_TRUE(a.ok());
  clock.now += absl::Seconds(9);
  EXPECT_EQ((*leases)->outstanding(), 1);
  EXPECT_EQ((*leases)->Prepare().status().code(), absl::StatusCode::kResourceExhausted);
  clock.now += absl::Seconds(1);  // exactly ttl after it was taken: expired
  EXPECT_EQ((*leases)->outstanding(), 0);
  Status late = (*leases)->Release(*a);
  EXPECT_EQ(late.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(late.message(), HasSubstr("tensor read lease not found or expired: " + *a));
  EXPECT_TRUE((*leases)->Prepare().ok());  // the slot is free again
}

TEST(TensorReadLeasesTest, UnknownEmptyAndTwiceReleasedLeases) {
  FakeClock clock;
  auto leases = TensorReadLeases::Create(clock.Options(4, absl::Seconds(10)));
  ASSERT_TRUE(leases.ok());
  EXPECT_EQ((*leases)->Release("feedface").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*leases)->Release("").code(), absl::StatusCode::kInvalidArgument);
  auto a = (*leases)->Prepare();
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE((*leases)->Release(*a).ok());
  EXPECT_EQ((*leases)->Release(*a).code(), absl::StatusCode::kNotFound);
}

TEST(TensorReadLeasesTest, ClosedTakesNoNewLeasesButReleasesHeldOnes) {
  FakeClock clock;
  auto leases = TensorReadLeases::Create(clock.Options(4, absl::Seconds(10)));
  ASSERT_TRUE(leases.ok());
  auto a = (*leases)->Prepare();
  ASSERT_TRUE(a.ok());
  (*leases)->Close();
  auto b = (*leases)->Prepare();
  EXPECT_EQ(b.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(b.status().message(), HasSubstr("stopping"));
  EXPECT_TRUE((*leases)->Release(*a).ok());
}

TEST(TensorReadLeasesTest, IdsAreDistinct) {
  FakeClock clock;
  auto leases = TensorReadLeases::Create(clock.Options(1000, absl::Seconds(10)));
  ASSERT_TRUE(leases.ok());
  absl::flat_hash_set<std::string> ids;
  for (int i = 0; i < 1000; ++i) {
    auto id = (*leases)->Prepare();
    ASSERT_TRUE(id.ok());
    EXPECT_TRUE(ids.insert(*id).second);
  }
}

}  // namespace
}  // namespace ferry::worker
