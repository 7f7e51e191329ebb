#include "common/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
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
#include "common/fd.h"
#include "common/ready_file.h"

extern char** environ;

namespace ferry::internal {
namespace {

// Polls for the child's exit until `deadline`; true and `*wait_status` once it exited (or is
// no longer our child: then `*wait_status` is 0).
bool WaitUntil(pid_t pid, absl::Time deadline, int* wait_status) {
  while (true) {
    const pid_t r = waitpid(pid, wait_status, WNOHANG);
    if (r == pid) return true;
    if (r < 0 && errno != EINTR) {
      *wait_status = 0;
      return true;
    }
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

void KillAndReap(pid_t pid) {
  kill(pid, SIGKILL);
  int wait_status = 0;
  while (waitpid(pid, &wait_status, 0) < 0 && errno == EINTR) {
  }
}

// The environment of a child: this process's without `remove` and the names `set` assigns,
// then `set`.
std::vector<std::string> ChildEnvironment(const std::vector<std::string>& remove,
                                          const std::vector<std::string>& set) {
  auto named = [](std::string_view entry, std::string_view name) {
    return entry.size() > name.size() && entry.starts_with(name) && entry[name.size()] == '=';
  };
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry(*e);
    bool drop = false;
    for (const std::string& name : remove) drop |= named(entry, name);
    for (const std::string& assignment : set) {
      drop |= named(entry, std::string_view(assignment).substr(0, assignment.find('=')));
    }
    if (!drop) env.emplace_back(entry);
  }
  env.insert(env.end(), set.begin(), set.end());
  return env;
}

// fork + exec of `args` with `env` and the given stdio descriptors (which may be 0, 1 or 2
// themselves). Every other descriptor is closed in the child.
StatusOr<pid_t> Spawn(const std::vector<std::string>& args, const std::vector<std::string>& env,
                      int stdin_fd, int stdout_fd, int stderr_fd, int death_signal) {
  // Built before fork: the child may only make async-signal-safe calls.
  std::vector<std::string> args_copy = args;
  std::vector<char*> argv;
  for (std::string& a : args_copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_copy = env;
  std::vector<char*> envp;
  for (std::string& e : env_copy) envp.push_back(e.data());
  envp.push_back(nullptr);

  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot start ", args[0], ": fork: ", ErrnoText(errno)));
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, death_signal);
    if (getppid() != parent) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (stdin_fd != STDIN_FILENO) dup2(stdin_fd, STDIN_FILENO);
    if (stdout_fd != STDOUT_FILENO) dup2(stdout_fd, STDOUT_FILENO);
    if (stderr_fd != STDERR_FILENO) dup2(stderr_fd, STDERR_FILENO);
    // No descriptor of ours (sockets, pipes, memfds) leaks into the child, CLOEXEC or not.
    syscall(SYS_close_range, 3u, ~0u, 0u);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  return pid;
}

StatusOr<Fd> OpenOutput(const std::string& path, bool append) {
  Fd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC), 0644));
  if (!fd.valid()) {
    return absl::UnavailableError(absl::StrCat("cannot create ", path, ": ", ErrnoText(errno)));
  }
  return fd;
}

}  // namespace

std::string DescribeWaitStatus(int wait_status) {
  if (WIFEXITED(wait_status)) return absl::StrCat("exit status ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    return absl::StrCat("signal ", WTERMSIG(wait_status), " (", strsignal(WTERMSIG(wait_status)),
                        ")");
  }
  return absl::StrCat("wait status ", wait_status);
}

int ExitCodeOf(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return -1;
}

StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(ChildOptions options) {
  if (options.argv.empty() || options.argv[0].empty()) {
    return absl::InvalidArgumentError("ChildOptions.argv is required");
  }
  Fd log_fd, out_fd;
  if (!options.log_file.empty()) {
    FERRY_ASSIGN_OR_RETURN(log_fd, OpenOutput(options.log_file, options.append_log));
  }
  if (!options.stdout_file.empty()) {
    FERRY_ASSIGN_OR_RETURN(out_fd, OpenOutput(options.stdout_file, /*append=*/false));
  }
  Fd null_fd(open("/dev/null", O_RDONLY | O_CLOEXEC));
  const int err = log_fd.valid() ? log_fd.get() : STDERR_FILENO;
  const int out = out_fd.valid() ? out_fd.get() : err;
  FERRY_ASSIGN_OR_RETURN(
      const pid_t pid,
      Spawn(options.argv, ChildEnvironment(options.env_remove, options.env_set),
            null_fd.valid() ? null_fd.get() : STDIN_FILENO, out, err, options.death_signal));
  return std::unique_ptr<ChildProcess>(new ChildProcess(std::move(options), pid));
}

ChildProcess::ChildProcess(ChildOptions options, pid_t pid)
    : options_(std::move(options)),
      name_(std::filesystem::path(options_.argv[0]).filename().string()),
      pid_(pid) {}

ChildProcess::~ChildProcess() { Kill(); }

void ChildProcess::Kill() {
  if (pid_ <= 0) return;
  KillAndReap(pid_);
  pid_ = -1;
}

Status ChildProcess::SendSignal(int signal) {
  if (pid_ <= 0) return absl::FailedPreconditionError(absl::StrCat(name_, " is not running"));
  if (kill(pid_, signal) != 0) {
    return absl::UnavailableError(
        absl::StrCat("kill(", pid_, ", ", signal, ") of ", name_, ": ", ErrnoText(errno)));
  }
  return absl::OkStatus();
}

bool ChildProcess::Exited() {
  if (pid_ <= 0) return true;
  int wait_status = 0;
  if (waitpid(pid_, &wait_status, WNOHANG) != pid_) return false;
  pid_ = -1;
  return true;
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
    if (std::optional<nlohmann::json> ready = ReadReadyFile(path, key)) return *std::move(ready);
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

StatusOr<int> ChildProcess::Signal(int signal, absl::Duration timeout) {
  FERRY_RETURN_IF_ERROR(SendSignal(signal));
  int wait_status = 0;
  if (!WaitUntil(pid_, absl::Now() + timeout, &wait_status)) {
    std::string tail = LogTail();
    Kill();
    return absl::DeadlineExceededError(
        absl::StrCat(name_, " did not exit within ", absl::FormatDuration(timeout), " of signal ",
                     signal, "; killed it. Its log ends with:\n", tail));
  }
  pid_ = -1;
  return ExitCodeOf(wait_status);
}

Status ChildProcess::Terminate(absl::Duration timeout) {
  const pid_t pid = pid_;
  FERRY_ASSIGN_OR_RETURN(const int code, Signal(SIGTERM, timeout));
  if (code == 0) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(
      name_, " (pid ", pid, ") ended after SIGTERM with ",
      code > 128 ? absl::StrCat("signal ", code - 128) : absl::StrCat("exit status ", code),
      "; its log ends with:\n", LogTail()));
}

std::string ChildProcess::LogTail(int max_lines) const {
  if (options_.log_file.empty()) return "  (its output went to this process's stderr)";
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

StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv, absl::Duration timeout,
                                   const std::vector<std::string>& env_set) {
  if (argv.empty()) return absl::InvalidArgumentError("RunCommand: empty argv");
  int out_pipe[2];
  int err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    return absl::UnavailableError(absl::StrCat("pipe2: ", ErrnoText(errno)));
  }
  Fd out_read(out_pipe[0]), out_write(out_pipe[1]);
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    return absl::UnavailableError(absl::StrCat("pipe2: ", ErrnoText(errno)));
  }
  Fd err_read(err_pipe[0]), err_write(err_pipe[1]);
  Fd null_fd(open("/dev/null", O_RDONLY | O_CLOEXEC));
  StatusOr<pid_t> pid =
      Spawn(argv, ChildEnvironment({}, env_set), null_fd.valid() ? null_fd.get() : STDIN_FILENO,
            out_write.get(), err_write.get(), SIGKILL);
  out_write.Reset();
  err_write.Reset();
  if (!pid.ok()) return pid.status();

  CommandResult result;
  const absl::Time deadline = absl::Now() + timeout;
  pollfd fds[2] = {{out_read.get(), POLLIN, 0}, {err_read.get(), POLLIN, 0}};
  Fd* owners[2] = {&out_read, &err_read};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_fds = 2;
  bool timed_out = false;
  while (open_fds > 0) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      timed_out = true;
      break;
    }
    const int ready = poll(fds, 2, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (ready < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      const ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n > 0) {
        sinks[i]->append(buf, static_cast<size_t>(n));
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        owners[i]->Reset();
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  out_read.Reset();
  err_read.Reset();
  int wait_status = 0;
  if (timed_out || !WaitUntil(*pid, deadline + absl::Seconds(1), &wait_status)) {
    KillAndReap(*pid);
    return absl::DeadlineExceededError(
        absl::StrCat(argv[0], " did not finish within ", absl::FormatDuration(timeout),
                     "; stdout so far:\n", result.out, "\nstderr so far:\n", result.err));
  }
  result.exit_code = ExitCodeOf(wait_status);
  return result;
}

}  // namespace ferry::internal
