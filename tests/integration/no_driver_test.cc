// Every shipped binary starts on a machine without a CUDA driver: none links libcuda or the
// CUDA runtime (the driver is opened at run time, src/cuda/driver.cc), and the host-only paths
// run. This machine has no driver, so starting them here is the test.
#include <dirent.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/child_process.h"
#include "server_process.h"

namespace ferry::internal {
namespace {

using ::ferry::testing::BinaryPath;
using ::testing::HasSubstr;
using ::testing::Not;

std::vector<std::string> ShippedBinaries() {
  return {BinaryPath("ferry"), BinaryPath("ferry-server")};
}

TEST(NoDriverTest, NoBinaryLinksTheDriverOrTheRuntime) {
  for (const std::string& bin : ShippedBinaries()) {
    auto r = RunCommand({"/usr/bin/readelf", "-d", bin}, absl::Seconds(30));
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->exit_code, 0) << r->err;
    EXPECT_THAT(r->out, HasSubstr("(NEEDED)")) << bin;
    EXPECT_THAT(r->out, Not(HasSubstr("libcuda"))) << bin;
    EXPECT_THAT(r->out, Not(HasSubstr("libcudart"))) << bin;
    EXPECT_THAT(r->out, Not(HasSubstr("libnvidia"))) << bin;
  }
}

TEST(NoDriverTest, BinariesStartAndTheHostPathsRun) {
  auto help = RunCommand({BinaryPath("ferry"), "--help"}, absl::Seconds(30));
  ASSERT_TRUE(help.ok()) << help.status();
  EXPECT_EQ(help->exit_code, 0) << help->err;
  auto server = RunCommand({BinaryPath("ferry-server"), "--help"}, absl::Seconds(30));
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(server->exit_code, 0) << server->err;
}

}  // namespace
}  // namespace ferry::internal
