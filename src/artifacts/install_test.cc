#include "artifacts/install.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/testing/test_certs.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::artifacts {
namespace {

namespace fs = std::filesystem;
using ::ferry::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

Manifest ManifestOf(const std::vector<std::pair<std::string, uint64_t>>& files) {
  Manifest m;
  for (size_t i = 0; i < files.size(); ++i) {
    m.files.push_back(ManifestFile{static_cast<uint32_t>(i), files[i].first, files[i].second, ""});
  }
  return m;
}

void ExpectPlanError(const Manifest& m, std::string_view root, const InstallLimits& limits,
                     const std::string& message) {
  auto plan = PlanInstallPaths(m, root, limits);
  ASSERT_FALSE(plan.ok()) << "planned " << plan->size() << " paths; expected: " << message;
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(plan.status().message()), HasSubstr(message));
}

TEST(PlanInstallPathsTest, MapsATreeUnderTheRoot) {
  auto plan = PlanInstallPaths(ManifestOf({{"/home/a/.triton/cache/ab/k.so", 10},
                                           {"/home/a/.triton/cache/ab/k.json", 2},
                                           {"/home/a/.triton/cache/top", 0},
                                           {"/home/a/.triton/cache/abc/d", 1}}),
                               "/home/a/.triton/cache");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(*plan, ElementsAre("ab/k.so", "ab/k.json", "top", "abc/d"));

  auto from_slash = PlanInstallPaths(ManifestOf({{"/x/y", 1}}), "/");
  ASSERT_TRUE(from_slash.ok()) << from_slash.status();
  EXPECT_THAT(*from_slash, ElementsAre("x/y"));
}

TEST(PlanInstallPathsTest, RejectsPathsOutsideTheRoot) {
  ExpectPlanError(
      ManifestOf({{"/cache/a", 1}, {"/cache/b", 1}, {"/cache/c", 1}, {"/etc/passwd", 1}}), "/cache",
      {},
      "artifact file 3 '/etc/passwd' is outside the source root '/cache'; refusing to "
      "install it");
  // The prefix check is by component: "/cache2" is not under "/cache".
  ExpectPlanError(ManifestOf({{"/cache2/x", 1}}), "/cache", {},
                  "artifact file 0 '/cache2/x' is outside the source root '/cache'");
  ExpectPlanError(ManifestOf({{"relative/x", 1}}), "/cache", {},
                  "artifact file 0 'relative/x' is outside the source root");
}

TEST(PlanInstallPathsTest, RejectsDotDotDotAndEmptyComponents) {
  ExpectPlanError(ManifestOf({{"/cache/a/../../etc/passwd", 1}}), "/cache", {},
                  "artifact file 0 '/cache/a/../../etc/passwd' has a '..' path component");
  ExpectPlanError(ManifestOf({{"/cache/ok", 1}, {"/cache/./a", 1}}), "/cache", {},
                  "artifact file 1 '/cache/./a' has a '.' path component");
  ExpectPlanError(ManifestOf({{"/cache/a//b", 1}}), "/cache", {},
                  "artifact file 0 '/cache/a//b' has an empty path component");
  ExpectPlanError(ManifestOf({{"/cache/a/", 1}}), "/cache", {},
                  "artifact file 0 '/cache/a/' has an empty path component");
}

TEST(PlanInstallPathsTest, RejectsNulBytes) {
  ExpectPlanError(ManifestOf({{std::string("/cache/a\0b", 10), 1}}), "/cache", {},
                  "artifact file 0 '/cache/a\\x00b' contains a NUL byte");
}

TEST(PlanInstallPathsTest, RejectsTheRootItselfAsAFile) {
  ExpectPlanError(ManifestOf({{"/cache", 1}}), "/cache", {},
                  "artifact file 0 '/cache' is the source root itself, not a file under it");
  ExpectPlanError(ManifestOf({{"/cache/", 1}}), "/cache", {},
                  "artifact file 0 '/cache/' is the source root itself");
}

TEST(PlanInstallPathsTest, RejectsDuplicatesAndFileDirectoryConflicts) {
  ExpectPlanError(ManifestOf({{"/cache/a", 1}, {"/cache/b", 1}, {"/cache/a", 1}}), "/cache", {},
                  "artifact file 2 '/cache/a' maps to the same path 'a' as file 0");
  ExpectPlanError(ManifestOf({{"/cache/a", 1}, {"/cache/a/b", 1}}), "/cache", {},
                  "artifact file 0 '/cache/a' is also a directory of file 1 '/cache/a/b'");
  ExpectPlanError(ManifestOf({{"/cache/x/a/b/c", 1}, {"/cache/x/a", 1}}), "/cache", {},
                  "artifact file 1 '/cache/x/a' is also a directory of file 0 '/cache/x/a/b/c'");
  // A shared name prefix is no conflict.
  EXPECT_TRUE(PlanInstallPaths(ManifestOf({{"/cache/a", 1}, {"/cache/ab/c", 1}}), "/cache").ok());
}

TEST(PlanInstallPathsTest, EnforcesPathLimits) {
  InstallLimits limits;
  limits.max_path_bytes = 10;
  EXPECT_TRUE(PlanInstallPaths(ManifestOf({{"/cache/aaaaa/bbbb", 1}}), "/cache", limits).ok());
  ExpectPlanError(ManifestOf({{"/cache/aaaaa/bbbbb", 1}}), "/cache", limits,
                  "artifact file 0 '/cache/aaaaa/bbbbb' has a relative path of 11 bytes, longer "
                  "than the limit of 10");

  limits = {};
  limits.max_component_bytes = 4;
  ExpectPlanError(ManifestOf({{"/cache/abcd/abcde", 1}}), "/cache", limits,
                  "artifact file 0 '/cache/abcd/abcde' has a path component of 5 bytes, longer "
                  "than the limit of 4");

  limits = {};
  limits.max_depth = 2;
  EXPECT_TRUE(PlanInstallPaths(ManifestOf({{"/cache/a/b", 1}}), "/cache", limits).ok());
  ExpectPlanError(
      ManifestOf({{"/cache/a/b/c", 1}}), "/cache", limits,
      "artifact file 0 '/cache/a/b/c' is 3 components deep, deeper than the limit of 2");
}

TEST(PlanInstallPathsTest, EnforcesCountAndSizeLimits) {
  InstallLimits limits;
  limits.max_files = 2;
  ExpectPlanError(ManifestOf({{"/cache/a", 1}, {"/cache/b", 1}, {"/cache/c", 1}}), "/cache", limits,
                  "artifact has 3 files, more than the limit of 2; refusing to install it");

  limits = {};
  limits.max_file_bytes = 100;
  EXPECT_TRUE(PlanInstallPaths(ManifestOf({{"/cache/a", 100}}), "/cache", limits).ok());
  ExpectPlanError(ManifestOf({{"/cache/a", 1}, {"/cache/b", 101}}), "/cache", limits,
                  "artifact file 1 '/cache/b' is 101 bytes, larger than the per-file limit of 100");

  limits = {};
  limits.max_total_bytes = 100;
  EXPECT_TRUE(
      PlanInstallPaths(ManifestOf({{"/cache/a", 40}, {"/cache/b", 60}}), "/cache", limits).ok());
  ExpectPlanError(ManifestOf({{"/cache/a", 60}, {"/cache/b", 41}}), "/cache", limits,
                  "artifact file 1 '/cache/b' brings the artifact past the total size limit of "
                  "100 bytes");
  // Sizes that would overflow a u64 sum are caught by the limits, not wrapped.
  limits = {};
  limits.max_file_bytes = UINT64_MAX;
  limits.max_total_bytes = UINT64_MAX;
  ExpectPlanError(ManifestOf({{"/cache/a", UINT64_MAX}, {"/cache/b", 1}}), "/cache", limits,
                  "artifact file 1 '/cache/b' brings the artifact past the total size limit");
}

TEST(PlanInstallPathsTest, RejectsABadSourceRoot) {
  for (const char* root : {"", "cache", "/cache/", "/cache/../x", "/cache//x", "/./cache"}) {
    ExpectPlanError(ManifestOf({{"/cache/a", 1}}), root, {}, "is not an absolute normalized path");
  }
}

// --- StagedInstall -------------------------------------------------------------------------

using Tree = std::map<std::string, std::string>;  // relative path -> "F:data", "D", "L:target"

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every entry under `dir` (not following symlinks) with its contents.
Tree Snapshot(const std::string& dir) {
  Tree tree;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator();
       ++it) {
    const std::string rel = it->path().lexically_relative(dir).string();
    if (it->is_symlink()) {
      tree[rel] = "L:" + fs::read_symlink(it->path()).string();
    } else if (it->is_directory()) {
      tree[rel] = "D";
    } else if (it->is_regular_file()) {
      tree[rel] = "F:" + ReadAll(it->path().string());
    } else {
      tree[rel] = "other";
    }
  }
  return tree;
}

std::vector<std::string> ListNames(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

void WriteFile(const std::string& path, const std::string& data) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

mode_t ModeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

ino_t InodeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_ino;
}

// Files of an artifact: relative path -> contents.
using Files = std::map<std::string, std::string>;

// Stages `files` into a new StagedInstall for `target` (two writes per file, to exercise
// offsets). Does not commit.
StatusOr<std::unique_ptr<StagedInstall>> Stage(const std::string& target, const Files& files) {
  FERRY_ASSIGN_OR_RETURN(auto install, StagedInstall::Create(target));
  std::vector<std::string> paths;
  std::vector<uint64_t> sizes;
  for (const auto& [path, data] : files) {
    paths.push_back(path);
    sizes.push_back(data.size());
  }
  FERRY_RETURN_IF_ERROR(install->CreateFiles(paths, sizes));
  uint32_t i = 0;
  for (const auto& [path, data] : files) {
    const size_t half = data.size() / 2;
    FERRY_RETURN_IF_ERROR(install->Write(i, half, data.data() + half, data.size() - half));
    FERRY_RETURN_IF_ERROR(install->Write(i, 0, data.data(), half));
    ++i;
  }
  return install;
}

Status Install(const std::string& target, const Files& files) {
  FERRY_ASSIGN_OR_RETURN(auto install, Stage(target, files));
  return install->Commit();
}

TEST(StagedInstallTest, InstallsIntoAMissingDirectory) {
  TempDir tmp;
  const std::string target = tmp.path() + "/home/.triton/cache";
  auto install = Stage(
      target,
      {{"ab/k.so", std::string(5000, 'x')}, {"ab/k.json", "{}"}, {"empty", ""}, {"d/e/f", "xyz"}});
  ASSERT_TRUE(install.ok()) << install.status();
  EXPECT_EQ((*install)->target_dir(), fs::canonical(tmp.path()).string() + "/home/.triton/cache");
  EXPECT_THAT((*install)->staging_dir(),
              StartsWith(fs::canonical(tmp.path()).string() + "/home/.triton/.cache.ferry-stage."));
  EXPECT_FALSE(fs::exists(target));
  ASSERT_TRUE((*install)->Commit().ok());

  EXPECT_EQ(Snapshot(target), (Tree{{"ab", "D"},
                                    {"ab/k.json", "F:{}"},
                                    {"ab/k.so", "F:" + std::string(5000, 'x')},
                                    {"d", "D"},
                                    {"d/e", "D"},
                                    {"d/e/f", "F:xyz"},
                                    {"empty", "F:"}}));
  EXPECT_EQ(ModeOf(target + "/ab/k.so"), 0644);
  EXPECT_EQ(ModeOf(target + "/d/e"), 0755);
  EXPECT_EQ(ModeOf(target), 0755);
  EXPECT_THAT(ListNames(tmp.path() + "/home/.triton"), ElementsAre("cache"));
  // Committing twice is a caller bug.
  EXPECT_EQ((*install)->Commit().code(), absl::StatusCode::kFailedPrecondition);
  install->reset();
  EXPECT_EQ(Snapshot(target).size(), 7u) << "the destructor must not touch a committed install";
}

TEST(StagedInstallTest, MergesIntoAnExistingDirectoryKeepingLocalEntries) {
  TempDir tmp;
  const std::string target = tmp.path() + "/cache";
  WriteFile(target + "/local.txt", "mine");
  WriteFile(target + "/c.txt", "old");
  WriteFile(target + "/sub/keep", "k");
  WriteFile(target + "/sub/replace", "old");
  WriteFile(target + "/was_file", "a file the artifact turns into a directory");
  fs::create_symlink("local.txt", target + "/link");
  ASSERT_EQ(::mkfifo((target + "/fifo").c_str(), 0600), 0);
  ASSERT_EQ(::chmod(target.c_str(), 0750), 0);
  const ino_t local_inode = InodeOf(target + "/local.txt");

  ASSERT_TRUE(
      Install(
          target,
          {{"c.txt", "new"}, {"sub/replace", "new"}, {"sub/deeper/x", "x"}, {"was_file/y", "y"}})
          .ok());
  EXPECT_EQ(Snapshot(target), (Tree{{"c.txt", "F:new"},
                                    {"link", "L:local.txt"},
                                    {"local.txt", "F:mine"},
                                    {"sub", "D"},
                                    {"sub/deeper", "D"},
                                    {"sub/deeper/x", "F:x"},
                                    {"sub/keep", "F:k"},
                                    {"sub/replace", "F:new"},
                                    {"was_file", "D"},
                                    {"was_file/y", "F:y"}}));
  EXPECT_EQ(InodeOf(target + "/local.txt"), local_inode) << "local files are hard-linked";
  EXPECT_EQ(ModeOf(target), 0750) << "the live directory's mode is kept";
  EXPECT_THAT(ListNames(tmp.path()), ElementsAre("cache"));
}

TEST(StagedInstallTest, RefusesASymlinkOrFileAsTarget) {
  TempDir tmp;
  fs::create_directories(tmp.path() + "/real");
  fs::create_directory_symlink(tmp.path() + "/real", tmp.path() + "/link");
  auto install = StagedInstall::Create(tmp.path() + "/link");
  ASSERT_FALSE(install.ok());
  EXPECT_EQ(install.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(install.status().message()),
              HasSubstr("/link' is a symlink; refusing to install through it"));
  install = StagedInstall::Create(tmp.path() + "/link/");  // a trailing slash changes nothing
  EXPECT_EQ(install.status().code(), absl::StatusCode::kInvalidArgument);

  WriteFile(tmp.path() + "/file", "x");
  install = StagedInstall::Create(tmp.path() + "/file");
  EXPECT_EQ(install.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(install.status().message()),
              HasSubstr("/file' exists and is not a directory"));

  install = StagedInstall::Create(tmp.path() + "/..");
  EXPECT_EQ(install.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ListNames(tmp.path()), ElementsAre("file", "link", "real"));
  EXPECT_TRUE(fs::is_empty(tmp.path() + "/real"));
}

TEST(StagedInstallTest, CreateFilesNeverFollowsASymlinkInTheStage) {
  TempDir tmp;
  const std::string outside = tmp.path() + "/outside";
  fs::create_directories(outside);
  auto install = StagedInstall::Create(tmp.path() + "/cache");
  ASSERT_TRUE(install.ok()) << install.status();
  // A directory component planted as a symlink.
  fs::create_directory_symlink(outside, (*install)->staging_dir() + "/a");
  Status s = (*install)->CreateFiles({"a/x"}, {1});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("staged entry 'a/x': 'a' already exists in staging directory"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("refusing to follow it"));
  EXPECT_TRUE(fs::is_empty(outside));

  // The file itself planted as a (dangling) symlink.
  auto second = StagedInstall::Create(tmp.path() + "/cache");
  ASSERT_TRUE(second.ok()) << second.status();
  fs::create_symlink(outside + "/f", (*second)->staging_dir() + "/f");
  s = (*second)->CreateFiles({"ok", "f"}, {1, 1});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("staged file 1 'f' already exists"));
  EXPECT_TRUE(fs::is_empty(outside));
}

TEST(StagedInstallTest, CreateFilesRejectsBadInput) {
  TempDir tmp;
  auto install = StagedInstall::Create(tmp.path() + "/cache");
  ASSERT_TRUE(install.ok()) << install.status();
  Status s = (*install)->CreateFiles({"a", "b"}, {1});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("2 paths but 1 sizes"));

  auto other = StagedInstall::Create(tmp.path() + "/cache2");
  ASSERT_TRUE(other.ok()) << other.status();
  s = (*other)->CreateFiles({"ok", "../escape"}, {1, 1});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("staged file 1 '../escape' is not a clean relative path"));
  EXPECT_FALSE(fs::exists(tmp.path() + "/escape"));
  EXPECT_EQ((*other)->CreateFiles({"x"}, {1}).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(StagedInstallTest, WriteChecksIndexAndRange) {
  TempDir tmp;
  auto install = StagedInstall::Create(tmp.path() + "/cache");
  ASSERT_TRUE(install.ok()) << install.status();
  EXPECT_EQ((*install)->Write(0, 0, "a", 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*install)->Commit().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE((*install)->CreateFiles({"f"}, {4}).ok());

  Status s = (*install)->Write(0, 2, "abc", 3);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("Write of 3 bytes at offset 2 to staged file 0 'f' goes past its size of "
                        "4 bytes"));
  s = (*install)->Write(0, UINT64_MAX, "a", 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = (*install)->Write(1, 0, "a", 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("only 1 files were created"));

  ASSERT_TRUE((*install)->Write(0, 1, "bcd", 3).ok());
  ASSERT_TRUE((*install)->Write(0, 0, "a", 1).ok());
  ASSERT_TRUE((*install)->Commit().ok());
  EXPECT_EQ(ReadAll(tmp.path() + "/cache/f"), "abcd");
  EXPECT_EQ((*install)->Write(0, 0, "a", 1).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(StagedInstallTest, ManyFilesBeyondTheOpenDescriptorBound) {
  TempDir tmp;
  Files files;
  for (int i = 0; i < 600; ++i) {
    files[absl::StrCat("d", i % 7, "/f", i)] = absl::StrCat("contents of ", i);
  }
  ASSERT_TRUE(Install(tmp.path() + "/cache", files).ok());
  Tree tree = Snapshot(tmp.path() + "/cache");
  EXPECT_EQ(tree.size(), 607u);
  for (const auto& [path, data] : files) EXPECT_EQ(tree[path], "F:" + data) << path;
}

TEST(StagedInstallTest, AbandonedInstallLeavesTheTargetUntouched) {
  TempDir tmp;
  const std::string target = tmp.path() + "/cache";
  WriteFile(target + "/a", "live");
  const Tree before = Snapshot(target);
  {
    auto install = Stage(target, {{"a", "new"}, {"b/c", "new"}});
    ASSERT_TRUE(install.ok()) << install.status();
    EXPECT_TRUE(fs::exists((*install)->staging_dir() + "/b/c"));
  }
  EXPECT_EQ(Snapshot(target), before);
  EXPECT_THAT(ListNames(tmp.path()), ElementsAre("cache"));
}

// Runs Stage + Commit for `target` in a child process that SIGKILLs itself at `point`, and
// checks that it died that way.
void InstallAndDieAt(const std::string& target, const Files& files, const std::string& point) {
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto install = Stage(target, files);
    if (!install.ok()) ::_exit(2);
    (*install)->hook_for_test = [point](std::string_view at) {
      if (at == point) ::raise(SIGKILL);
    };
    (void)(*install)->Commit();
    ::_exit(3);  // not reached: the hook kills us
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited with " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
}

std::vector<std::string> Leftovers(const std::string& parent) {
  std::vector<std::string> out;
  for (const std::string& n : ListNames(parent)) {
    if (n != "cache") out.push_back(n);
  }
  return out;
}

TEST(StagedInstallTest, KilledBeforeExchangeLeavesTheTargetUntouched) {
  TempDir tmp;
  const std::string target = tmp.path() + "/cache";
  WriteFile(target + "/a", "live a");
  WriteFile(target + "/dir/b", "live b");
  fs::create_symlink("a", target + "/link");
  const Tree before = Snapshot(target);

  InstallAndDieAt(target, {{"a", "new a"}, {"dir/c", "new c"}}, "before-exchange");
  EXPECT_EQ(Snapshot(target), before);
  std::vector<std::string> leftovers = Leftovers(tmp.path());
  ASSERT_EQ(leftovers.size(), 1u);
  EXPECT_THAT(leftovers[0], StartsWith(".cache.ferry-stage."));

  // The next install removes the leftover stage and succeeds.
  auto install = Stage(target, {{"a", "new a"}, {"dir/c", "new c"}});
  ASSERT_TRUE(install.ok()) << install.status();
  EXPECT_EQ(Leftovers(tmp.path()),
            std::vector<std::string>{fs::path((*install)->staging_dir()).filename().string()});
  EXPECT_NE(fs::path((*install)->staging_dir()).filename().string(), leftovers[0]);
  ASSERT_TRUE((*install)->Commit().ok());
  EXPECT_EQ(Snapshot(target), (Tree{{"a", "F:new a"},
                                    {"dir", "D"},
                                    {"dir/b", "F:live b"},
                                    {"dir/c", "F:new c"},
                                    {"link", "L:a"}}));
  EXPECT_TRUE(Leftovers(tmp.path()).empty());
}

TEST(StagedInstallTest, KilledAfterExchangeLeavesTheTargetComplete) {
  TempDir tmp;
  const std::string target = tmp.path() + "/cache";
  WriteFile(target + "/a", "live a");
  WriteFile(target + "/keep", "local");

  InstallAndDieAt(target, {{"a", "new a"}, {"x/y", "new y"}}, "after-exchange");
  const Tree complete = {{"a", "F:new a"}, {"keep", "F:local"}, {"x", "D"}, {"x/y", "F:new y"}};
  EXPECT_EQ(Snapshot(target), complete);
  // The old tree is left at the stage's name...
  std::vector<std::string> leftovers = Leftovers(tmp.path());
  ASSERT_EQ(leftovers.size(), 1u);
  EXPECT_THAT(leftovers[0], StartsWith(".cache.ferry-stage."));
  EXPECT_EQ(Snapshot(tmp.path() + "/" + leftovers[0]),
            (Tree{{"a", "F:live a"}, {"keep", "F:local"}}));

  // ... and removed by the next Create, which leaves the live tree alone.
  auto install = StagedInstall::Create(target);
  ASSERT_TRUE(install.ok()) << install.status();
  EXPECT_EQ(Leftovers(tmp.path()),
            std::vector<std::string>{fs::path((*install)->staging_dir()).filename().string()});
  install->reset();
  EXPECT_TRUE(Leftovers(tmp.path()).empty());
  EXPECT_EQ(Snapshot(target), complete);
}

TEST(StagedInstallTest, CreateRemovesOnlyItsOwnLeftovers) {
  TempDir tmp;
  const std::string target = tmp.path() + "/cache";
  WriteFile(tmp.path() + "/.cache.ferry-old.0123456789abcdef/f", "old");
  WriteFile(tmp.path() + "/.cache.ferry-stage.0123456789abcdef/f", "stage");
  // Not ours: another target's stage, a name that only looks similar, a user's file.
  WriteFile(tmp.path() + "/.cache.ferry-stage.x.ferry-stage.0123456789abcdef/f", "other");
  WriteFile(tmp.path() + "/.cache.ferry-stage.notes", "user");
  WriteFile(tmp.path() + "/.cache2.ferry-stage.0123456789abcdef/f", "other");
  auto install = StagedInstall::Create(target);
  ASSERT_TRUE(install.ok()) << install.status();
  install->reset();
  EXPECT_THAT(
      ListNames(tmp.path()),
      ElementsAre(".cache.ferry-stage.notes", ".cache.ferry-stage.x.ferry-stage.0123456789abcdef",
                  ".cache2.ferry-stage.0123456789abcdef"));
}

}  // namespace
}  // namespace ferry::artifacts
