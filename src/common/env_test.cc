#include "common/env.h"

#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::internal {
namespace {

using ::testing::HasSubstr;

TEST(EnvTest, TableNamesUseThePrefixAndAreUnique) {
  std::set<std::string> names;
  for (const EnvVar& v : EnvTable()) {
    EXPECT_EQ(v.name.substr(0, 6), "FERRY_") << v.name;
    EXPECT_TRUE(names.insert(std::string(v.name)).second) << v.name;
    EXPECT_FALSE(v.help.empty()) << v.name;
  }
  EXPECT_THAT(EnvHelp(), HasSubstr("MX_HEARTBEAT_TIMEOUT_SECS"));
}

TEST(EnvTest, ParsesDurations) {
  EXPECT_EQ(*ParsePositiveDuration("30", "x"), absl::Seconds(30));
  EXPECT_EQ(*ParsePositiveDuration("250ms", "x"), absl::Milliseconds(250));
  EXPECT_EQ(*ParsePositiveDuration("5m", "x"), absl::Minutes(5));
  auto zero = ParsePositiveDuration("0", "--reaper-scan-interval");
  ASSERT_FALSE(zero.ok());
  EXPECT_THAT(std::string(zero.status().message()), HasSubstr("--reaper-scan-interval='0'"));
  auto junk = ParsePositiveDuration("soon", "MX_GC_TIMEOUT_SECS");
  ASSERT_FALSE(junk.ok());
  EXPECT_THAT(std::string(junk.status().message()), HasSubstr("MX_GC_TIMEOUT_SECS='soon'"));
  EXPECT_FALSE(ParsePositiveDuration("-5s", "x").ok());
  EXPECT_FALSE(ParsePositiveDuration("inf", "x").ok());
}

// docs/operations.md ("Environment variables") lists exactly the variables of the table, each
// with its ModelExpress fallback: the docs cannot drift from env.cc.
TEST(EnvTest, OperationsGuideListsExactlyTheTable) {
  std::ifstream in(std::string(FERRY_DOCS_DIR) + "/operations.md");
  ASSERT_TRUE(in.good());
  std::stringstream text;
  text << in.rdbuf();
  const std::string doc = text.str();
  const size_t begin = doc.find("## Environment variables");
  ASSERT_NE(begin, std::string::npos);
  const size_t end = doc.find("\n## ", begin + 1);
  const std::string section = doc.substr(begin, end - begin);
  std::set<std::string> documented;
  for (size_t at = section.find("\n| `"); at != std::string::npos;
       at = section.find("\n| `", at + 1)) {
    const size_t name_end = section.find('`', at + 4);
    documented.insert(section.substr(at + 4, name_end - at - 4));
  }
  std::set<std::string> table;
  for (const EnvVar& v : EnvTable()) {
    const std::string name(v.name);
    const std::string fallback(v.fallback);
    table.insert(name);
    const std::string row =
        "| `" + name + "` | " + (fallback.empty() ? "" : "`" + fallback + "`") + " |";
    EXPECT_NE(section.find(row), std::string::npos) << "docs/operations.md lacks the row " << row;
  }
  EXPECT_EQ(documented, table);
}

TEST(EnvTest, ParsesPositiveCounts) {
  EXPECT_EQ(*ParsePositiveCount("4096", "x"), 4096u);
  EXPECT_EQ(*ParsePositiveCount(" 1 ", "x"), 1u);
  auto zero = ParsePositiveCount("0", "FERRY_MAX_WORKERS_PER_PRINCIPAL");
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(zero.status().message()),
              HasSubstr("FERRY_MAX_WORKERS_PER_PRINCIPAL='0' is not a positive whole number"));
  EXPECT_FALSE(ParsePositiveCount("-3", "x").ok());
  EXPECT_FALSE(ParsePositiveCount("4k", "x").ok());
}

}  // namespace
}  // namespace ferry::internal
