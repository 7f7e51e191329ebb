#include "common/wire_status.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::internal {
namespace {

using ::testing::Optional;

TEST(WireStatusCodeTest, ParsesOnlyTheDecimalNumberOfANonOkCode) {
  EXPECT_THAT(ParseStatusCodeMetadata("3"), Optional(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseStatusCodeMetadata("1"), Optional(absl::StatusCode::kCancelled));
  EXPECT_THAT(ParseStatusCodeMetadata("16"), Optional(absl::StatusCode::kUnauthenticated));
  EXPECT_EQ(StatusCodeMetadataValue(absl::StatusCode::kResourceExhausted), "8");
  for (const char* bad : {"", "0", "17", "99", "-3", "+3", " 3", "3 ", "03", "3.0", "0x3", "abc",
                          "INVALID_ARGUMENT", "100000000000000000003"}) {
    EXPECT_EQ(ParseStatusCodeMetadata(bad), std::nullopt) << "'" << bad << "'";
  }
  EXPECT_EQ(ParseStatusCodeMetadata(absl::string_view("3\0", 2)), std::nullopt);
}

TEST(WireStatusCodeTest, EveryCodeRoundTrips) {
  for (int n = 1; n <= 16; ++n) {
    const auto code = static_cast<absl::StatusCode>(n);
    EXPECT_THAT(ParseStatusCodeMetadata(StatusCodeMetadataValue(code)), Optional(code)) << code;
  }
}

}  // namespace
}  // namespace ferry::internal
