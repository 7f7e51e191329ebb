#include "common/testing/status_matchers.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

absl::StatusOr<int> NotFound() { return absl::NotFoundError("no record for worker w"); }

TEST(StatusIsTest, MatchesCodeAndMessageOfStatusAndStatusOr) {
  const absl::Status status = absl::NotFoundError("no record for worker w");
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kNotFound, "no record for worker w"));
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kNotFound, HasSubstr("worker w")));
  EXPECT_THAT(NotFound(), StatusIs(absl::StatusCode::kNotFound, HasSubstr("worker w")));
  const absl::StatusOr<int> held = NotFound();
  EXPECT_THAT(held, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(held, StatusIs(::testing::AnyOf(absl::StatusCode::kNotFound,
                                              absl::StatusCode::kUnavailable)));

  EXPECT_THAT(status, Not(StatusIs(absl::StatusCode::kUnavailable)));
  EXPECT_THAT(status, Not(StatusIs(absl::StatusCode::kNotFound, "no record")));
  EXPECT_THAT(held, Not(StatusIs(absl::StatusCode::kNotFound, HasSubstr("worker x"))));
  EXPECT_THAT(absl::OkStatus(), StatusIs(absl::StatusCode::kOk));
  EXPECT_THAT(absl::StatusOr<int>(7), StatusIs(absl::StatusCode::kOk, ""));
}

TEST(IsOkTest, MatchesOkStatusAndStatusOrWithAValue) {
  EXPECT_THAT(absl::OkStatus(), IsOk());
  EXPECT_THAT(absl::StatusOr<std::string>("x"), IsOk());
  EXPECT_THAT(absl::InternalError("x"), Not(IsOk()));
  EXPECT_THAT(NotFound(), Not(IsOk()));
}

TEST(StatusMatchersTest, FailuresDescribeTheExpectationAndPrintTheStatus) {
  ::testing::Matcher<const absl::StatusOr<int>&> m =
      StatusIs(absl::StatusCode::kUnavailable, HasSubstr("down"));
  EXPECT_EQ(::testing::DescribeMatcher<const absl::StatusOr<int>&>(m),
            "has a status code that is equal to UNAVAILABLE, and a message that has substring "
            "\"down\"");
  ::testing::StringMatchResultListener listener;
  EXPECT_FALSE(m.MatchAndExplain(NotFound(), &listener));
  EXPECT_THAT(listener.str(), AllOf(HasSubstr("whose status is NOT_FOUND: no record for worker w"),
                                    HasSubstr("the code NOT_FOUND does not match")));

  ::testing::Matcher<const absl::Status&> ok = IsOk();
  ::testing::StringMatchResultListener why;
  EXPECT_FALSE(ok.MatchAndExplain(absl::DataLossError("corrupt"), &why));
  EXPECT_EQ(why.str(), "whose status is DATA_LOSS: corrupt");

  // A StatusOr prints as its status or its value, not as bytes.
  EXPECT_EQ(::testing::PrintToString(NotFound()), "NOT_FOUND: no record for worker w");
  EXPECT_EQ(::testing::PrintToString(absl::StatusOr<int>(42)), "42");
}

}  // namespace
}  // namespace ferry::testing
