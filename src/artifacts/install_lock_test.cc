#include "artifacts/install_lock.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/testing/test_certs.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::artifacts {
namespace {

namespace fs = std::filesystem;
using ::ferry::testing::TempDir;
using ::testing::HasSubstr;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A child process that holds the install lock for `target` until told to release it.
class Holder {
 public:
  Holder(const std::string& state_dir, const std::string& target) {
    int ready[2], release[2];
    EXPECT_EQ(::pipe(ready), 0);
    EXPECT_EQ(::pipe(release), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      // Child: lock, report, block until the parent writes or closes `release`, exit.
      ::close(ready[0]);
      ::close(release[1]);
      auto lock = InstallLock::Acquire(state_dir, target, absl::Seconds(30));
      char c = lock.ok() ? 'L' : 'E';
      (void)!::write(ready[1], &c, 1);
      (void)!::read(release[0], &c, 1);
      ::_exit(lock.ok() ? 0 : 1);
    }
    ::close(ready[1]);
    ::close(release[0]);
    release_fd_ = release[1];
    char c = 0;
    EXPECT_EQ(::read(ready[0], &c, 1), 1);
    EXPECT_EQ(c, 'L') << "the holder could not take the lock";
    ::close(ready[0]);
  }
  ~Holder() {
    Release();
    if (pid_ > 0) Wait();
  }

  pid_t pid() const { return pid_; }
  void Release() {
    if (release_fd_ >= 0) ::close(release_fd_);
    release_fd_ = -1;
  }
  // Returns the raw wait status.
  int Wait() {
    int status = 0;
    EXPECT_EQ(::waitpid(pid_, &status, 0), pid_);
    pid_ = -1;
    return status;
  }

 private:
  pid_t pid_ = -1;
  int release_fd_ = -1;
};

TEST(InstallLockTest, SecondProcessWaitsAndAcquiresAfterRelease) {
  TempDir tmp;
  const std::string state = tmp.path() + "/state";
  const std::string target = tmp.path() + "/cache";
  Holder holder(state, target);
  int waits = 0;
  int seen_pid = -1;
  auto lock = InstallLock::Acquire(state, target, absl::Seconds(60), [&](int pid) {
    ++waits;
    seen_pid = pid;
    holder.Release();  // the holder finishes only once we are waiting
  });
  ASSERT_TRUE(lock.ok()) << lock.status();
  EXPECT_EQ(waits, 1);
  EXPECT_EQ(seen_pid, holder.pid());
  int status = holder.Wait();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ((*lock)->canonical_target(), fs::canonical(tmp.path()).string() + "/cache");
  EXPECT_EQ(ReadAll((*lock)->lock_path()), absl::StrCat(::getpid(), "\n"));
  EXPECT_EQ(fs::path((*lock)->lock_path()).parent_path(), fs::path(state));
}

TEST(InstallLockTest, TimeoutNamesTheHolder) {
  TempDir tmp;
  const std::string state = tmp.path() + "/state";
  const std::string target = tmp.path() + "/cache";
  Holder holder(state, target);
  int seen_pid = -1;
  auto lock = InstallLock::Acquire(state, target, absl::Milliseconds(300),
                                   [&](int pid) { seen_pid = pid; });
  ASSERT_FALSE(lock.ok());
  EXPECT_EQ(lock.status().code(), absl::StatusCode::kDeadlineExceeded);
  const std::string msg(lock.status().message());
  EXPECT_THAT(msg, HasSubstr(absl::StrCat("held by pid ", holder.pid())));
  EXPECT_THAT(msg, HasSubstr("waiting for install lock " + state + "/"));
  EXPECT_THAT(msg, HasSubstr(".lock on " + fs::canonical(tmp.path()).string() + "/cache"));
  EXPECT_EQ(seen_pid, holder.pid());

  // A different target is a different lock.
  auto other = InstallLock::Acquire(state, tmp.path() + "/other", absl::ZeroDuration());
  EXPECT_TRUE(other.ok()) << other.status();
}

TEST(InstallLockTest, ReleasedWhenTheHolderIsKilled) {
  TempDir tmp;
  const std::string state = tmp.path() + "/state";
  const std::string target = tmp.path() + "/cache";
  Holder holder(state, target);
  ASSERT_EQ(::kill(holder.pid(), SIGKILL), 0);
  int status = holder.Wait();
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  int waits = 0;
  auto lock = InstallLock::Acquire(state, target, absl::Seconds(10), [&](int) { ++waits; });
  ASSERT_TRUE(lock.ok()) << lock.status();
  EXPECT_EQ(waits, 0);
}

TEST(InstallLockTest, ExcludesWithinOneProcessAndAcrossSpellingsOfTheTarget) {
  TempDir tmp;
  const std::string state = tmp.path() + "/state";
  fs::create_directories(tmp.path() + "/real");
  fs::create_directory_symlink(tmp.path() + "/real", tmp.path() + "/alias");
  auto first = InstallLock::Acquire(state, tmp.path() + "/real/cache", absl::Seconds(1));
  ASSERT_TRUE(first.ok()) << first.status();
  // The same directory through a symlinked parent and a trailing slash.
  auto second = InstallLock::Acquire(state, tmp.path() + "/alias/cache/", absl::ZeroDuration());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr(absl::StrCat("held by pid ", ::getpid())));
  EXPECT_THAT(std::string(second.status().message()), HasSubstr((*first)->lock_path()));
  first->reset();
  second = InstallLock::Acquire(state, tmp.path() + "/alias/cache/", absl::ZeroDuration());
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ((*second)->canonical_target(), fs::canonical(tmp.path()).string() + "/real/cache");
}

TEST(InstallLockTest, RejectsBadArguments) {
  TempDir tmp;
  auto lock = InstallLock::Acquire("", tmp.path() + "/cache", absl::Seconds(1));
  EXPECT_EQ(lock.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(lock.status().message()), HasSubstr("state directory is empty"));
  lock = InstallLock::Acquire(tmp.path() + "/state", "/", absl::Seconds(1));
  EXPECT_EQ(lock.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(InstallLockTest, MarkersRoundTrip) {
  TempDir tmp;
  const std::string state = tmp.path() + "/state";
  const std::string target = tmp.path() + "/cache";
  auto lock = InstallLock::Acquire(state, target, absl::Seconds(10));
  ASSERT_TRUE(lock.ok()) << lock.status();
  InstallLock& l = **lock;
  EXPECT_FALSE(l.ReadDone("src-1").has_value());
  EXPECT_FALSE(l.ReadFailed("src-1").has_value());

  const absl::Time failed_at = absl::FromUnixNanos(1700000000123456789);
  ASSERT_TRUE(l.WriteFailed("src-1", {"peer 10.0.0.5 refused: \"bad\"\n", failed_at}).ok());
  auto failed = l.ReadFailed("src-1");
  ASSERT_TRUE(failed.has_value());
  EXPECT_EQ(failed->reason, "peer 10.0.0.5 refused: \"bad\"\n");
  EXPECT_EQ(failed->failed_at, failed_at);
  EXPECT_FALSE(l.ReadFailed("src-2").has_value()) << "markers are per key";

  const absl::Time installed_at = absl::FromUnixNanos(1700000100000000001);
  ASSERT_TRUE(l.WriteDone("src-1", {std::string(64, 'a'), "node-3:5555", installed_at}).ok());
  EXPECT_FALSE(l.ReadFailed("src-1").has_value()) << "WriteDone removes the failure marker";
  lock->reset();

  // Markers outlive the lock and are seen by the next holder (another spelling of the target).
  lock = InstallLock::Acquire(state, target + "/", absl::Seconds(10));
  ASSERT_TRUE(lock.ok()) << lock.status();
  auto done = (*lock)->ReadDone("src-1");
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->artifact_id, std::string(64, 'a'));
  EXPECT_EQ(done->source, "node-3:5555");
  EXPECT_EQ(done->installed_at, installed_at);
  // No temp files are left beside the markers.
  for (const auto& e : fs::directory_iterator(state)) {
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
  }

  ASSERT_TRUE((*lock)->WriteFailed("src-1", {"again", installed_at}).ok());
  ASSERT_TRUE((*lock)->ClearMarkers("src-1").ok());
  EXPECT_FALSE((*lock)->ReadDone("src-1").has_value());
  EXPECT_FALSE((*lock)->ReadFailed("src-1").has_value());
  EXPECT_TRUE((*lock)->ClearMarkers("src-1").ok()) << "clearing absent markers is fine";
}

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

std::string OnlyFileEndingWith(const std::string& dir, const std::string& suffix) {
  std::string found;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().string();
    if (name.size() >= suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      EXPECT_TRUE(found.empty()) << "two files end with " << suffix;
      found = name;
    }
  }
  return found;
}

// Whether a process running as uid/gid 65534 (nobody) can open `path` for reading.
bool NobodyCanOpen(const std::string& path) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(2);
    const int fd = ::open(path.c_str(), O_RDONLY);
    ::_exit(fd >= 0 ? 1 : 0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 2) << "cannot become nobody";
  return WIFEXITED(status) && WEXITSTATUS(status) == 1;
}

// The state directory used to be created 0755 with 0644 lock files: any local user could open a
// lock file and hold a shared flock on it, stalling root's pulls for good.
TEST(InstallLockSecurityTest, TheStateDirectoryAndLockAreThisUsersOnly) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  TempDir tmp;
  ASSERT_EQ(::chmod(tmp.path().c_str(), 0755), 0);  // like /tmp: others may traverse
  const std::string state = tmp.path() + "/state";
  auto lock = InstallLock::Acquire(state, tmp.path() + "/cache", absl::Seconds(10));
  ASSERT_TRUE(lock.ok()) << lock.status();
  EXPECT_EQ(ModeOf(state), 0700u);
  EXPECT_EQ(ModeOf((*lock)->lock_path()), 0600u);
  EXPECT_FALSE(NobodyCanOpen((*lock)->lock_path()));
  ASSERT_TRUE((*lock)->WriteDone("src-1", {std::string(64, 'a'), "n", absl::Now()}).ok());
  EXPECT_EQ(ModeOf(OnlyFileEndingWith(state, ".src-1.done")), 0600u);
}

TEST(InstallLockSecurityTest, AStateDirectoryFromAnOlderVersionIsTightened) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  TempDir tmp;
  ASSERT_EQ(::chmod(tmp.path().c_str(), 0755), 0);
  const std::string state = tmp.path() + "/state";
  std::string lock_path;
  {
    auto lock = InstallLock::Acquire(state, tmp.path() + "/cache", absl::Seconds(10));
    ASSERT_TRUE(lock.ok()) << lock.status();
    lock_path = (*lock)->lock_path();
  }
  ASSERT_EQ(::chmod(state.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(lock_path.c_str(), 0644), 0);
  ASSERT_TRUE(NobodyCanOpen(lock_path));  // the attack the old modes allowed
  auto lock = InstallLock::Acquire(state, tmp.path() + "/cache", absl::Seconds(10));
  ASSERT_TRUE(lock.ok()) << lock.status();
  EXPECT_EQ(ModeOf(state), 0700u);
  EXPECT_EQ(ModeOf(lock_path), 0600u);
  EXPECT_FALSE(NobodyCanOpen(lock_path));
}

TEST(InstallLockSecurityTest, AStateDirectoryOwnedBySomeoneElseIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  TempDir tmp;
  const std::string state = tmp.path() + "/state";
  ASSERT_EQ(::mkdir(state.c_str(), 0700), 0);
  ASSERT_EQ(::chown(state.c_str(), 65534, 65534), 0);
  auto lock = InstallLock::Acquire(state, tmp.path() + "/cache", absl::Seconds(1));
  ASSERT_EQ(lock.status().code(), absl::StatusCode::kPermissionDenied) << lock.status();
  EXPECT_THAT(std::string(lock.status().message()),
              HasSubstr("'" + state + "' is owned by uid 65534, not by this user"));
  EXPECT_THAT(std::string(lock.status().message()), HasSubstr("FERRY_ARTIFACT_STATE_DIR"));

  const std::string link = tmp.path() + "/link";
  ASSERT_EQ(::symlink(tmp.path().c_str(), link.c_str()), 0);
  lock = InstallLock::Acquire(link, tmp.path() + "/cache", absl::Seconds(1));
  ASSERT_EQ(lock.status().code(), absl::StatusCode::kPermissionDenied) << lock.status();
  EXPECT_THAT(std::string(lock.status().message()), HasSubstr("is not a directory"));
}

// A planted .done marker skipped the install and reported success; a planted .failed stopped
// every pull for its TTL. Markers another user owns, or that others can write, are ignored.
TEST(InstallLockSecurityTest, MarkersNotWrittenByThisUserAreIgnored) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  TempDir tmp;
  const std::string state = tmp.path() + "/state";
  auto lock = InstallLock::Acquire(state, tmp.path() + "/cache", absl::Seconds(10));
  ASSERT_TRUE(lock.ok()) << lock.status();
  ASSERT_TRUE((*lock)->WriteDone("src-1", {std::string(64, 'a'), "n", absl::Now()}).ok());
  ASSERT_TRUE((*lock)->WriteFailed("src-2", {"planted", absl::Now()}).ok());
  const std::string done = OnlyFileEndingWith(state, ".src-1.done");
  const std::string failed = OnlyFileEndingWith(state, ".src-2.failed");
  ASSERT_TRUE((*lock)->ReadDone("src-1").has_value());
  ASSERT_TRUE((*lock)->ReadFailed("src-2").has_value());

  ASSERT_EQ(::chown(done.c_str(), 65534, 65534), 0);
  ASSERT_EQ(::chown(failed.c_str(), 65534, 65534), 0);
  EXPECT_FALSE((*lock)->ReadDone("src-1").has_value());
  EXPECT_FALSE((*lock)->ReadFailed("src-2").has_value());

  ASSERT_EQ(::chown(done.c_str(), 0, 0), 0);
  ASSERT_EQ(::chmod(done.c_str(), 0666), 0);
  EXPECT_FALSE((*lock)->ReadDone("src-1").has_value());
  ASSERT_EQ(::chmod(done.c_str(), 0600), 0);
  EXPECT_TRUE((*lock)->ReadDone("src-1").has_value());
}

TEST(InstallLockTest, CorruptMarkersAreIgnored) {
  TempDir tmp;
  const std::string state = tmp.path() + "/state";
  auto lock = InstallLock::Acquire(state, tmp.path() + "/cache", absl::Seconds(10));
  ASSERT_TRUE(lock.ok()) << lock.status();
  InstallLock& l = **lock;
  ASSERT_TRUE(l.WriteDone("k", {"id", "src", absl::Now()}).ok());
  ASSERT_TRUE(l.WriteFailed("k", {"why", absl::Now()}).ok());
  const std::string lock_path = l.lock_path();
  const std::string base = lock_path.substr(0, lock_path.size() - std::string(".lock").size());
  const std::string done_path = base + ".k.done";
  const std::string failed_path = base + ".k.failed";
  ASSERT_TRUE(fs::exists(failed_path));
  ASSERT_TRUE(l.ReadFailed("k").has_value());

  for (const std::string& text :
       {std::string("{not json"), std::string(""), std::string("[1,2]"),
        std::string(R"({"artifact_id":"id","source":"src"})"),
        std::string(R"({"artifact_id":"id","source":7,"installed_at":"2024-01-01T00:00:00Z"})"),
        std::string(R"({"artifact_id":"id","source":"s","installed_at":"yesterday"})")}) {
    std::ofstream(done_path, std::ios::trunc) << text;
    EXPECT_FALSE(l.ReadDone("k").has_value()) << text;
  }
  std::ofstream(done_path, std::ios::trunc)
      << R"({"artifact_id":"id","source":"s","installed_at":"2024-01-01T00:00:00Z"})";
  auto done = l.ReadDone("k");
  ASSERT_TRUE(done.has_value()) << "the control case must parse";
  EXPECT_EQ(done->installed_at, absl::FromUnixSeconds(1704067200));

  std::ofstream(failed_path, std::ios::trunc) << R"({"reason":"x"})";
  EXPECT_FALSE(l.ReadFailed("k").has_value());
  std::ofstream(failed_path, std::ios::trunc) << std::string(100000, ' ');
  EXPECT_FALSE(l.ReadFailed("k").has_value());
}

TEST(InstallLockTest, BadMarkerKeysAreRejected) {
  TempDir tmp;
  auto lock = InstallLock::Acquire(tmp.path() + "/state", tmp.path() + "/cache", absl::Seconds(10));
  ASSERT_TRUE(lock.ok()) << lock.status();
  for (const std::string& key :
       {std::string(""), std::string("../x"), std::string("a/b"), std::string("a.b"),
        std::string(65, 'k'), std::string("a\0b", 3)}) {
    Status s = (*lock)->WriteDone(key, {"id", "src", absl::Now()});
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << key;
    EXPECT_THAT(std::string(s.message()), HasSubstr("must be 1 to 64 characters of [0-9a-zA-Z_-]"));
    EXPECT_EQ((*lock)->WriteFailed(key, {"why", absl::Now()}).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ((*lock)->ClearMarkers(key).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_FALSE((*lock)->ReadDone(key).has_value());
  }
  EXPECT_TRUE(InstallLock::ValidateMarkerKey(std::string(64, 'k')).ok());
  EXPECT_TRUE(InstallLock::ValidateMarkerKey("Abc_09-z").ok());
  EXPECT_FALSE(fs::exists(tmp.path() + "/x.done"));
}

TEST(FailureMarkerActiveTest, ActiveUntilTheTtlElapses) {
  const absl::Time t = absl::FromUnixSeconds(1700000000);
  const InstallLock::FailedMarker m{"boom", t};
  EXPECT_TRUE(FailureMarkerActive(m, absl::Seconds(60), t));
  EXPECT_TRUE(FailureMarkerActive(m, absl::Seconds(60), t + absl::Seconds(59)));
  EXPECT_FALSE(FailureMarkerActive(m, absl::Seconds(60), t + absl::Seconds(60)));
  EXPECT_FALSE(FailureMarkerActive(m, absl::Seconds(60), t + absl::Hours(1)));
  EXPECT_FALSE(FailureMarkerActive(m, absl::ZeroDuration(), t));
}

}  // namespace
}  // namespace ferry::artifacts
