#include "cli/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/ready_file.h"

namespace ferry::cli {

namespace {

std::string ErrnoText() { return std::strerror(errno); }

// Polls for the child's exit until `deadline`; true and `*wait_status` once it exited.
bool WaitUntil(pid_t pid, absl::Time deadline, int* wait_status) {
  while (true) {
    pid_t r = waitpid(pid, wait_status, WNOHANG);
    if (r == pid) return true;
    if (r < 0 && errno != EINTR) return true;  // not our child any more
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

}  // namespace

std::string DescribeWaitStatus(int wait_status) {
  if (WIFEXITED(wait_status)) {
    return absl::StrCat("exit status ", WEXITSTATUS(wait_status));
  }
  if (WIFSIGNALED(wait_status)) {
    return absl::StrCat("signal ", WTERMSIG(wait_status), " (", strsignal(WTERMSIG(wait_status)),
                        ")");
  }
  return absl::StrCat("wait status ", wait_status);
}

StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(ChildOptions options) {
  if (options.argv.empty() || options.log_file.empty()) {
    return absl::InvalidArgumentError("ChildOptions.argv and ChildOptions.log_file are required");
  }
  std::vector<char*> argv;
  for (std::string& a : options.argv) argv.push_back(a.data());
  argv.push_back(nullptr);
  // Built before fork: the child may only make async-signal-safe calls.
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry(*e);
    bool removed = false;
    for (const std::string& name : options.env_remove) {
      removed |= entry.size() > name.size() && entry.compare(0, name.size(), name) == 0 &&
                 entry[name.size()] == '=';
    }
    if (!removed) envp.push_back(*e);
  }
  envp.push_back(nullptr);

  const int log_fd = open(options.log_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot create ", options.log_file, ": ", ErrnoText()));
  }
  int out_fd = log_fd;
  if (!options.stdout_file.empty()) {
    out_fd = open(options.stdout_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out_fd < 0) {
      close(log_fd);
      return absl::UnavailableError(
          absl::StrCat("cannot create ", options.stdout_file, ": ", ErrnoText()));
    }
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec. Die with the parent, so that a killed
    // `ferry demo` leaves nothing behind.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    const int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    dup2(out_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  close(log_fd);
  if (out_fd != log_fd) close(out_fd);
  if (pid < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot start ", options.argv[0], ": fork: ", ErrnoText()));
  }
  return std::unique_ptr<ChildProcess>(new ChildProcess(std::move(options), pid));
}

ChildProcess::ChildProcess(ChildOptions options, pid_t pid)
    : options_(std::move(options)),
      name_(std::filesystem::path(options_.argv[0]).filename().string()),
      pid_(pid) {}

ChildProcess::~ChildProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    int wait_status = 0;
    while (waitpid(pid_, &wait_status, 0) < 0 && errno == EINTR) {
    }
  }
}

Status ChildProcess::ExitStatus(int wait_status, const std::string& what) const {
  if (WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(name_, " (pid ", pid_, ") ", what, " with ",
                                          DescribeWaitStatus(wait_status), "; its log ends with:\n",
                                          LogTail()));
}

StatusOr<nlohmann::json> ChildProcess::WaitForReadyFile(const std::string& path,
                                                        const std::string& key,
                                                        absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int wait_status = 0;
    if (pid_ > 0 && waitpid(pid_, &wait_status, WNOHANG) == pid_) {
      Status s = ExitStatus(wait_status, "exited before it was ready");
      pid_ = -1;
      return absl::UnavailableError(s.ok() ? absl::StrCat(name_, " exited before it was ready")
                                           : std::string(s.message()));
    }
    if (std::optional<nlohmann::json> ready = internal::ReadReadyFile(path, key)) {
      return *std::move(ready);
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(name_, " (pid ", pid_, ") did not write ", path, " within ",
                       absl::FormatDuration(timeout), "; its log ends with:\n", LogTail()));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

Status ChildProcess::Wait(absl::Duration timeout) {
  if (pid_ <= 0) return absl::FailedPreconditionError(absl::StrCat(name_, " is not running"));
  int wait_status = 0;
  if (!WaitUntil(pid_, absl::Now() + timeout, &wait_status)) {
    return absl::DeadlineExceededError(absl::StrCat(name_, " (pid ", pid_, ") did not exit within ",
                                                    absl::FormatDuration(timeout)));
  }
  Status s = ExitStatus(wait_status, "ended");
  pid_ = -1;
  return s;
}

Status ChildProcess::Terminate(absl::Duration timeout) {
  if (pid_ <= 0) return absl::FailedPreconditionError(absl::StrCat(name_, " is not running"));
  if (kill(pid_, SIGTERM) != 0) {
    return absl::UnavailableError(absl::StrCat("kill(", pid_, ", SIGTERM): ", ErrnoText()));
  }
  int wait_status = 0;
  if (!WaitUntil(pid_, absl::Now() + timeout, &wait_status)) {
    std::string tail = LogTail();
    kill(pid_, SIGKILL);
    WaitUntil(pid_, absl::InfiniteFuture(), &wait_status);
    pid_ = -1;
    return absl::DeadlineExceededError(
        absl::StrCat(name_, " did not exit within ", absl::FormatDuration(timeout),
                     " after SIGTERM; killed it. Its log ends with:\n", tail));
  }
  Status s = ExitStatus(wait_status, "ended after SIGTERM");
  pid_ = -1;
  return s;
}

std::string ChildProcess::LogTail(int max_lines) const {
  std::ifstream in(options_.log_file);
  std::stringstream text;
  text << in.rdbuf();
  std::vector<std::string> lines = absl::StrSplit(text.str(), '\n');
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.empty()) return "  (empty log)";
  const size_t n = static_cast<size_t>(max_lines);
  const size_t first = lines.size() > n ? lines.size() - n : 0;
  std::string out;
  for (size_t i = first; i < lines.size(); ++i) {
    absl::StrAppend(&out, "  ", lines[i], i + 1 < lines.size() ? "\n" : "");
  }
  return out;
}

}  // namespace ferry::cli
