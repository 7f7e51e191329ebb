#include "common/ready_file.h"

#include <filesystem>
#include <fstream>

#include "common/testing/test_certs.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::internal {
namespace {

using ::ferry::testing::TempDir;
using ::testing::HasSubstr;

TEST(ReadyFileTest, WrittenObjectIsReadBackWhole) {
  TempDir dir;
  const std::string path = dir.path() + "/ready.json";
  EXPECT_EQ(ReadReadyFile(path, "grpc_port"), std::nullopt);  // not written yet
  ASSERT_TRUE(WriteReadyFile(path, {{"grpc_port", 8001}, {"admin_port", 9401}}).ok());
  std::optional<nlohmann::json> ready = ReadReadyFile(path, "grpc_port");
  ASSERT_TRUE(ready.has_value());
  EXPECT_EQ((*ready)["grpc_port"], 8001);
  EXPECT_EQ((*ready)["admin_port"], 9401);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  // A field that is missing or not an integer: not ready.
  EXPECT_EQ(ReadReadyFile(path, "worker_port"), std::nullopt);
  ASSERT_TRUE(WriteReadyFile(path, {{"worker_port", "41234"}}).ok());
  EXPECT_EQ(ReadReadyFile(path, "worker_port"), std::nullopt);
  std::ofstream(path) << "{\"worker_port\": 4";  // half a file, as a foreign writer may leave
  EXPECT_EQ(ReadReadyFile(path, "worker_port"), std::nullopt);
}

TEST(ReadyFileTest, MissingDirectoryNamesThePath) {
  TempDir dir;
  const std::string path = dir.path() + "/no/such/dir/ready.json";
  Status s = WriteReadyFile(path, {{"grpc_port", 1}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("cannot write the ready file " + path +
                        ".tmp: No such file or directory; check that its directory exists"));
}

}  // namespace
}  // namespace ferry::internal
