// Every shipped binary starts on a machine without a CUDA driver: none links libcuda or the
// CUDA runtime (the driver is opened at run time, src/cuda/driver.cc), and the host-only paths
// run. This machine has no driver, so starting them here is the test.
#include <dirent.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/child_process.h"
#include "cuda/driver.h"
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

// --device on a machine without a driver: a clear error before anything else happens, and
// nothing written.
TEST(NoDriverTest, DeviceFlagsFailCleanlyNamingTheDriver) {
  if (cuda::Driver::Default().ok()) GTEST_SKIP() << "a CUDA driver is usable on this machine";
  // Why CUDA cannot be used: this build has none (FERRY_CUDA=OFF), or this machine no driver.
  const std::string why = cuda::BuiltWithCuda()
                              ? "the CUDA driver (libcuda.so.1) could not be loaded"
                              : "this ferry was built without CUDA";
  const std::string out = ::testing::TempDir() + "/no_driver_out.safetensors";
  auto pull = RunCommand({BinaryPath("ferry"), "pull", "--model", "m", "-o", out, "--device",
                          "cuda:0", "--server", "127.0.0.1:1"},
                         absl::Seconds(30));
  ASSERT_TRUE(pull.ok()) << pull.status();
  EXPECT_EQ(pull->exit_code, 1);
  EXPECT_THAT(pull->err, HasSubstr("--device cuda:0: " + why));
  EXPECT_FALSE(std::filesystem::exists(out));
  auto publish =
      RunCommand({BinaryPath("ferry"), "publish", "/dev/null", "--model", "m", "--device", "cuda"},
                 absl::Seconds(30));
  ASSERT_TRUE(publish.ok()) << publish.status();
  EXPECT_EQ(publish->exit_code, 1);
  EXPECT_THAT(publish->err, HasSubstr("--device cuda: " + why));
  auto demo = RunCommand({BinaryPath("ferry"), "demo", "--size", "1MiB", "--device", "cuda:0"},
                         absl::Seconds(60));
  ASSERT_TRUE(demo.ok()) << demo.status();
  EXPECT_EQ(demo->exit_code, 1);
  EXPECT_THAT(demo->err, HasSubstr("--device cuda:0: " + why));
  auto bad = RunCommand({BinaryPath("ferry"), "pull", "--model", "m", "--device", "gpu0"},
                        absl::Seconds(30));
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_EQ(bad->exit_code, 1);
  EXPECT_THAT(bad->err, HasSubstr("--device gpu0: use cpu, cuda (the first GPU) or cuda:N"));
  auto nowhere = RunCommand({BinaryPath("ferry"), "pull", "--model", "m"}, absl::Seconds(30));
  ASSERT_TRUE(nowhere.ok()) << nowhere.status();
  EXPECT_THAT(nowhere->err, HasSubstr("ferry pull needs -o OUT.safetensors, --device cuda:N"));
}

}  // namespace
}  // namespace ferry::internal
