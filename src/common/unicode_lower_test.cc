#include "common/unicode_lower.h"

#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::internal {
namespace {

using ::ferry::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(UnicodeLowerTest, AsciiIsLoweredByteByByte) {
  EXPECT_EQ(*UnicodeLower("Meta-Llama-3-70B_Instruct"), "meta-llama-3-70b_instruct");
  EXPECT_EQ(*UnicodeLower(""), "");
}

TEST(UnicodeLowerTest, FullUnicodeMappingsInTheRootLocale) {
  EXPECT_EQ(*UnicodeLower("\xC3\x80\xC3\x89\xC3\x8E"), "\xC3\xA0\xC3\xA9\xC3\xAE");  // ÀÉÎ
  // U+0130 (capital I with dot above) becomes two code points: i and U+0307.
  EXPECT_EQ(*UnicodeLower("\xC4\xB0"), "i\xCC\x87");
  // A final capital sigma becomes a final small sigma (U+03C2), the others U+03C3.
  EXPECT_EQ(*UnicodeLower("\xCE\xA3\xCE\x91\xCE\xA3"), "\xCF\x83\xCE\xB1\xCF\x82");
}

TEST(UnicodeLowerTest, InvalidUtf8BecomesTheReplacementCharacter) {
  EXPECT_EQ(*UnicodeLower("A\xFF"
                          "B"),
            "a\xEF\xBF\xBD"
            "b");
}

TEST(UnicodeLowerTest, WithoutIcuNonAsciiFailsNamingTheLibraryAndAsciiStillWorks) {
  const char* missing = "libicuuc-not-installed.so.0";
  EXPECT_THAT(UnicodeLowerWith("\xC3\x89t\xC3\xA9", missing),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr(missing), HasSubstr("ASCII"))));
  EXPECT_EQ(*UnicodeLowerWith("Qwen2", missing), "qwen2");
}

TEST(UnicodeLowerTest, ALibraryThatIsNotIcuIsRefused) {
  // libz is loaded by every ferry binary (through gRPC): present, and not ICU.
  EXPECT_THAT(UnicodeLowerWith("\xC3\x89", "libz.so.1"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("not ICU")));
}

TEST(UnicodeLowerTest, TheLibraryNameCarriesTheVersionBuiltAgainst) {
  EXPECT_THAT(IcuLibraryName(), ::testing::StartsWith("libicuuc.so."));
  EXPECT_EQ(*UnicodeLowerWith("\xC3\x89", IcuLibraryName()), "\xC3\xA9");
}

}  // namespace
}  // namespace ferry::internal
