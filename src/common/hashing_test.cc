#include "common/hashing.h"

#include <string>

#include "common/bearer_token.h"
#include "gtest/gtest.h"

namespace ferry::internal {
namespace {

// FIPS 180-2 test vectors.
TEST(HashingTest, Sha256MatchesTheStandardVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const Sha256Digest d = Sha256("abc");
  EXPECT_EQ(d[0], 0xba);
  EXPECT_EQ(d[31], 0xad);
}

TEST(BearerTokenTest, ParsesTheHeaderInAnyCase) {
  EXPECT_EQ(BearerTokenOf("Bearer abc"), "abc");
  EXPECT_EQ(BearerTokenOf("bearer abc"), "abc");
  EXPECT_EQ(BearerTokenOf("BEARER a b"), "a b");
  for (const char* bad : {"", "Bearer", "Bearer ", "Basic abc", "Bearerabc", "abc"}) {
    EXPECT_EQ(BearerTokenOf(bad), std::nullopt) << bad;
  }
}

TEST(BearerTokenTest, DigestsMatchOnlyTheSameToken) {
  const TokenDigest want("s3cret-token");
  EXPECT_TRUE(want.Matches(TokenDigest("s3cret-token")));
  EXPECT_FALSE(want.Matches(TokenDigest("s3cret-tokeN")));
  EXPECT_FALSE(want.Matches(TokenDigest("s3cret-token ")));
  EXPECT_FALSE(want.Matches(TokenDigest("")));
  EXPECT_TRUE(TokenDigest("").Matches(TokenDigest("")));
}

}  // namespace
}  // namespace ferry::internal
