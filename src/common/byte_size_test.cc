#include "common/byte_size.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::internal {
namespace {

using ::testing::HasSubstr;

TEST(ByteSizeTest, AcceptsTheGrammar) {
  const std::pair<const char*, uint64_t> cases[] = {
      {"1", 1},
      {"1073741824", 1073741824},
      {"4096B", 4096},
      {"4096 b", 4096},
      {"4KiB", 4096},
      {"512k", 512 << 10},
      {"512K", 512 << 10},
      {"64MiB", 64ull << 20},
      {"64mib", 64ull << 20},
      {"64m", 64ull << 20},
      {"100MiB", 100ull << 20},
      {"1G", 1ull << 30},
      {"1GiB", 1ull << 30},
      {" 1.5GiB ", 3ull << 29},
      {"0.5KiB", 512},
      {"2.25k", 2304},
      {"1.0", 1},
      {"007", 7},
      {"2TiB", 2ull << 40},
      {"0.25MiB", 262144},
      {"0.0009765625MiB", 1024},  // exact however many digits the fraction has
      {"18446744073709551615", UINT64_MAX},
      {"1.5T", 3ull << 39},
  };
  for (const auto& [text, bytes] : cases) {
    SCOPED_TRACE(text);
    StatusOr<uint64_t> r = ParseByteSize(text, "--size");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(*r, bytes);
  }
}

TEST(ByteSizeTest, RefusesNamingTheInputAndWhatIsAccepted) {
  const std::pair<const char*, const char*> cases[] = {
      {"", "it is empty"},
      {"   ", "it is empty"},
      {"lots", "it does not start with a number"},
      {"nan", "it does not start with a number"},
      {"-1", "negative"},
      {"-1MiB", "negative"},
      {"0", "zero; a size must be positive"},
      {"0KiB", "zero; a size must be positive"},
      {"0.0", "zero; a size must be positive"},
      {"0.1KiB", "not a whole number of bytes"},
      {"1.5", "not a whole number of bytes"},
      {"1.000000000000000001G", "not a whole number of bytes"},
      {"1e30", "unknown unit 'e30'"},
      {"1 MiB extra", "unknown unit 'mib extra'"},
      {"1PiB", "unknown unit 'pib'"},
      {"1GB", "decimal unit 'gb': ferry's units are powers of 1024; write KiB, MiB, GiB or TiB"},
      {"1kb", "decimal unit 'kb'"},
      {"1.", "expected a number such as 64 or 1.5"},
      {".5G", "expected a number such as 64 or 1.5"},
      {"1.2.3", "expected a number such as 64 or 1.5"},
      {"18446744073709551616", "2^64 bytes or more"},
      {"16777216T", "2^64 bytes or more"},
      {"99999999999999999999T", "2^64 bytes or more"},
      {"123456789012345678901", "too many digits"},
  };
  for (const auto& [text, why] : cases) {
    SCOPED_TRACE(text);
    StatusOr<uint64_t> r = ParseByteSize(text, "FERRY_MAX_MESSAGE_SIZE");
    ASSERT_FALSE(r.ok()) << *r;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    const std::string message(r.status().message());
    EXPECT_THAT(message, HasSubstr(std::string("FERRY_MAX_MESSAGE_SIZE='") + text +
                                   "' is not a byte size (" + why));
    EXPECT_THAT(message, HasSubstr("; use a whole number of bytes or a number with a binary unit "
                                   "B, KiB, MiB, GiB, TiB (or K, M, G, T; any case), e.g. "
                                   "1073741824, 64MiB, 1.5GiB"));
  }
}

}  // namespace
}  // namespace ferry::internal
