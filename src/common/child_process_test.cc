#include "common/child_process.h"

#include <fcntl.h>
#include <unistd.h>

#include <string>

#include "common/testing/test_certs.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::internal {
namespace {

using ::ferry::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(RunCommandTest, CapturesOutputExitCodeAndEnvironment) {
  StatusOr<CommandResult> r =
      RunCommand({"/bin/sh", "-c", "echo out $FERRY_CHILD_TEST; echo err >&2; exit 3"},
                 absl::Seconds(30), {"FERRY_CHILD_TEST=hello"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->out, "out hello\n");
  EXPECT_EQ(r->err, "err\n");
}

TEST(RunCommandTest, KillsACommandThatRunsTooLong) {
  StatusOr<CommandResult> r =
      RunCommand({"/bin/sh", "-c", "echo started; exec sleep 30"}, absl::Milliseconds(300));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("/bin/sh did not finish within 300ms; stdout so far:\nstarted"));
}

TEST(ChildProcessTest, ReadyFileThenSignal) {
  TempDir dir;
  const std::string ready = dir.path() + "/ready.json";
  auto child =
      ChildProcess::Start({.argv = {"/bin/sh", "-c",
                                    "echo starting; printf '{\"port\": 41234}' > " + ready +
                                        ".tmp; mv " + ready + ".tmp " + ready + "; exec sleep 30"},
                           .log_file = dir.path() + "/child.log"});
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_EQ((*child)->name(), "sh");
  StatusOr<nlohmann::json> json = (*child)->WaitForReadyFile(ready, "port", absl::Seconds(30));
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ((*json)["port"], 41234);
  EXPECT_TRUE((*child)->running());
  StatusOr<int> code = (*child)->Signal(SIGTERM, absl::Seconds(10));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 128 + SIGTERM);
  EXPECT_FALSE((*child)->running());
  EXPECT_EQ((*child)->LogTail(), "  starting");
}

TEST(ChildProcessTest, ExitBeforeReadyCarriesTheStatusAndTheLog) {
  TempDir dir;
  auto child = ChildProcess::Start({.argv = {"/bin/sh", "-c", "echo cannot bind; exit 7"},
                                    .log_file = dir.path() + "/child.log"});
  ASSERT_TRUE(child.ok()) << child.status();
  StatusOr<nlohmann::json> json =
      (*child)->WaitForReadyFile(dir.path() + "/never.json", "port", absl::Seconds(30));
  EXPECT_EQ(json.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(json.status().message()),
              HasSubstr("exited before it was ready with exit status 7; its log ends with:\n"
                        "  cannot bind"));
}

TEST(ChildProcessTest, MissingBinaryExits127) {
  TempDir dir;
  auto child = ChildProcess::Start(
      {.argv = {dir.path() + "/no-such-binary"}, .log_file = dir.path() + "/child.log"});
  ASSERT_TRUE(child.ok()) << child.status();
  Status s = (*child)->Wait(absl::Seconds(30));
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(s.message()), HasSubstr("no-such-binary (pid "));
  EXPECT_THAT(std::string(s.message()), HasSubstr("ended with exit status 127"));
}

TEST(ChildProcessTest, NoDescriptorLeaksIntoTheChild) {
  TempDir dir;
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);  // deliberately without O_CLOEXEC
  ASSERT_EQ(dup2(fds[1], 100), 100);
  auto child = ChildProcess::Start({.argv = {"/bin/sh", "-c", "ls /proc/self/fd"},
                                    .log_file = dir.path() + "/child.log",
                                    .env_remove = {"PATH"},
                                    .env_set = {"PATH=/usr/bin:/bin"}});
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_TRUE((*child)->Wait(absl::Seconds(30)).ok());
  close(fds[0]);
  close(fds[1]);
  close(100);
  const std::string listing = (*child)->LogTail(100);
  EXPECT_THAT(listing, HasSubstr("  2"));
  EXPECT_THAT(listing, Not(HasSubstr("100")));
}

TEST(ChildProcessTest, ErrorsNameWhatIsMissing) {
  EXPECT_EQ(ChildProcess::Start({}).status().code(), absl::StatusCode::kInvalidArgument);
  auto bad_log = ChildProcess::Start({.argv = {"/bin/true"}, .log_file = "/no/such/dir/log"});
  EXPECT_EQ(bad_log.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(bad_log.status().message()),
              HasSubstr("cannot create /no/such/dir/log: No such file or directory"));
}

TEST(DescribeWaitStatusTest, ExitAndSignal) {
  EXPECT_EQ(DescribeWaitStatus(3 << 8), "exit status 3");
  EXPECT_EQ(DescribeWaitStatus(SIGKILL), "signal 9 (Killed)");
  EXPECT_EQ(ExitCodeOf(3 << 8), 3);
  EXPECT_EQ(ExitCodeOf(SIGKILL), 128 + SIGKILL);
}

}  // namespace
}  // namespace ferry::internal
