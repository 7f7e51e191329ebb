#include "server_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace ferry::testing {

namespace fs = std::filesystem;

namespace {

std::string ErrnoText() { return std::strerror(errno); }

// Exit code, or 128 + signal, as a shell reports it.
int ExitCodeOf(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return -1;
}

// Polls for the child's exit until `deadline`. True (with `*wait_status`) once it exited.
bool WaitUntil(pid_t pid, absl::Time deadline, int* wait_status) {
  while (true) {
    const pid_t r = waitpid(pid, wait_status, WNOHANG);
    if (r == pid) return true;
    if (r < 0 && errno != EINTR) {
      *wait_status = 0;
      return true;  // already reaped elsewhere
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

// fork + exec with the given stdio. Everything the child touches is prepared before fork, so
// the child runs only async-signal-safe calls (the test process has gRPC threads). The child
// gets SIGKILL if the forking thread dies, so a crashed test leaves no server behind.
StatusOr<pid_t> Spawn(const std::vector<std::string>& args, const std::vector<std::string>* env,
                      int stdin_fd, int stdout_fd, int stderr_fd) {
  std::vector<std::string> args_copy = args;
  std::vector<char*> argv;
  for (std::string& a : args_copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_copy;
  std::vector<char*> envp;
  if (env != nullptr) {
    env_copy = *env;
    for (std::string& e : env_copy) envp.push_back(e.data());
    envp.push_back(nullptr);
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    return absl::UnavailableError(absl::StrCat("fork for ", args[0], ": ", ErrnoText()));
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    dup2(stdin_fd, STDIN_FILENO);
    dup2(stdout_fd, STDOUT_FILENO);
    dup2(stderr_fd, STDERR_FILENO);
    if (env != nullptr) {
      execve(argv[0], argv.data(), envp.data());
    } else {
      execv(argv[0], argv.data());
    }
    _exit(127);
  }
  return pid;
}

bool HasFlag(const std::vector<std::string>& args, absl::string_view flag) {
  for (const std::string& a : args) {
    if (a == flag || absl::StartsWith(a, absl::StrCat(flag, "="))) return true;
  }
  return false;
}

}  // namespace

std::string BinDir() {
  // Test infrastructure, not ferry configuration: ctest passes the build's bin folder here.
  if (const char* dir = std::getenv("FERRY_BIN_DIR"); dir != nullptr && *dir) {
    return dir;
  }
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return (self.parent_path().parent_path() / "bin").string();
}

std::string BinaryPath(const std::string& name) { return (fs::path(BinDir()) / name).string(); }

int UnusedLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

// ---------------------------------------------------------------------------------------------
// ServerProcess

StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Create(ServerProcessOptions options) {
  if (options.binary.empty()) options.binary = BinaryPath("ferry-server");
  if (access(options.binary.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(options.binary, " is not an executable (",
                                                      ErrnoText(),
                                                      "); build it first: ninja ferry-server"));
  }
  std::string dir = (fs::temp_directory_path() / "ferry-test-XXXXXX").string();
  if (mkdtemp(dir.data()) == nullptr) {
    return absl::UnavailableError(absl::StrCat("mkdtemp ", dir, ": ", ErrnoText()));
  }
  std::unique_ptr<ServerProcess> server(new ServerProcess(std::move(options), std::move(dir)));
  FERRY_RETURN_IF_ERROR(server->Launch(0));
  return server;
}

ServerProcess::ServerProcess(ServerProcessOptions options, std::string dir)
    : options_(std::move(options)),
      dir_(std::move(dir)),
      ready_path_(dir_ + "/ready.json"),
      log_path_(dir_ + "/ferry-server.log") {}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    int wait_status = 0;
    if (!WaitUntil(pid_, absl::Now() + options_.stop_timeout, &wait_status)) {
      KillAndReap(pid_);
    }
    pid_ = -1;
  }
  if (::testing::Test::HasFailure()) {
    std::cerr << "ferry-server log (" << log_path_ << ") ends with:\n" << LogTail() << "\n";
  }
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

Status ServerProcess::Launch(int grpc_port) {
  std::vector<std::string> args = {options_.binary, "--listen",
                                   absl::StrCat("127.0.0.1:", grpc_port), "--ready-file",
                                   ready_path_};
  const std::pair<const char*, const char*> defaults[] = {
      {"--admin-listen", "127.0.0.1:0"}, {"--store", "memory"}, {"--log-level", "info"}};
  for (const auto& [flag, value] : defaults) {
    if (!HasFlag(options_.extra_args, flag)) {
      args.push_back(flag);
      args.push_back(value);
    }
  }
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());

  fs::remove(ready_path_);
  const int log_fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::UnavailableError(absl::StrCat("open ", log_path_, ": ", ErrnoText()));
  }
  {
    std::string banner = "=== ferry-server";
    for (size_t i = 1; i < args.size(); ++i) absl::StrAppend(&banner, " ", args[i]);
    banner += "\n";
    (void)!write(log_fd, banner.data(), banner.size());
  }
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  StatusOr<pid_t> pid = Spawn(args, nullptr, null_fd, log_fd, log_fd);
  close(log_fd);
  close(null_fd);
  FERRY_RETURN_IF_ERROR(pid.status());
  pid_ = *pid;

  const absl::Time deadline = absl::Now() + options_.ready_timeout;
  while (true) {
    int wait_status = 0;
    if (waitpid(pid_, &wait_status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::UnavailableError(
          absl::StrCat("ferry-server exited with code ", ExitCodeOf(wait_status),
                       " before it was ready; its log ends with:\n", LogTail()));
    }
    std::ifstream in(ready_path_);
    if (in) {
      std::stringstream text;
      text << in.rdbuf();
      const nlohmann::json ready = nlohmann::json::parse(text.str(), nullptr, false);
      if (ready.is_object() && ready.contains("grpc_port") &&
          ready["grpc_port"].is_number_integer()) {
        grpc_port_ = ready["grpc_port"].get<int>();
        admin_port_ = ready.value("admin_port", 0);
        return absl::OkStatus();
      }
    }
    if (absl::Now() >= deadline) {
      KillAndReap(pid_);
      pid_ = -1;
      return absl::DeadlineExceededError(absl::StrCat(
          "ferry-server did not write ", ready_path_, " within ",
          absl::FormatDuration(options_.ready_timeout), "; its log ends with:\n", LogTail()));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

StatusOr<int> ServerProcess::Stop(int signal) {
  if (pid_ <= 0) {
    return absl::FailedPreconditionError("ferry-server is not running");
  }
  if (kill(pid_, signal) != 0) {
    return absl::UnavailableError(absl::StrCat("kill(", pid_, ", ", signal, "): ", ErrnoText()));
  }
  int wait_status = 0;
  if (!WaitUntil(pid_, absl::Now() + options_.stop_timeout, &wait_status)) {
    KillAndReap(pid_);
    pid_ = -1;
    return absl::DeadlineExceededError(absl::StrCat(
        "ferry-server did not exit within ", absl::FormatDuration(options_.stop_timeout),
        " of signal ", signal, "; killed it. Its log ends with:\n", LogTail()));
  }
  pid_ = -1;
  return ExitCodeOf(wait_status);
}

void ServerProcess::Kill() {
  if (pid_ <= 0) return;
  KillAndReap(pid_);
  pid_ = -1;
}

Status ServerProcess::Restart() {
  if (pid_ > 0) FERRY_RETURN_IF_ERROR(Stop(SIGTERM).status());
  return Launch(grpc_port_);
}

std::string ServerProcess::grpc_address() const { return absl::StrCat("127.0.0.1:", grpc_port_); }

std::string ServerProcess::LogTail(int lines) const {
  std::ifstream in(log_path_);
  std::stringstream text;
  text << in.rdbuf();
  std::vector<std::string> all = absl::StrSplit(text.str(), '\n');
  while (!all.empty() && all.back().empty()) all.pop_back();
  if (all.empty()) return "  (empty log)";
  const size_t first =
      all.size() > static_cast<size_t>(lines) ? all.size() - static_cast<size_t>(lines) : 0;
  std::string out;
  for (size_t i = first; i < all.size(); ++i) {
    absl::StrAppend(&out, "  ", all[i], i + 1 < all.size() ? "\n" : "");
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// RunCommand

StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv, absl::Duration timeout,
                                   const std::vector<std::string>& extra_env) {
  if (argv.empty()) return absl::InvalidArgumentError("RunCommand: empty argv");
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const absl::string_view entry(*e);
    const absl::string_view name = entry.substr(0, entry.find('='));
    const bool replaced = std::any_of(
        extra_env.begin(), extra_env.end(),
        [&](const std::string& x) { return absl::StartsWith(x, absl::StrCat(name, "=")); });
    if (!replaced) env.emplace_back(entry);
  }
  env.insert(env.end(), extra_env.begin(), extra_env.end());

  int out_pipe[2];
  int err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    return absl::UnavailableError(absl::StrCat("pipe2: ", ErrnoText()));
  }
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    close(out_pipe[0]);
    close(out_pipe[1]);
    return absl::UnavailableError(absl::StrCat("pipe2: ", ErrnoText()));
  }
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  StatusOr<pid_t> pid = Spawn(argv, &env, null_fd, out_pipe[1], err_pipe[1]);
  close(null_fd);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (!pid.ok()) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return pid.status();
  }

  CommandResult result;
  const absl::Time deadline = absl::Now() + timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
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
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (pollfd& p : fds) {
    if (p.fd >= 0) close(p.fd);
  }
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

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteFile(const std::string& path, const std::string& data) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

}  // namespace ferry::testing
