#include "cli/embedded_server.h"

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
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"

namespace ferry::cli {

namespace fs = std::filesystem;

namespace {

constexpr int kLogTailLines = 30;

std::string ErrnoText() { return std::strerror(errno); }

// "exit status 3" / "signal 9 (Killed)".
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

// Polls for the child's exit until `deadline`; true and `*wait_status` once it exited.
bool WaitUntil(pid_t pid, absl::Time deadline, int* wait_status) {
  while (true) {
    pid_t r = waitpid(pid, wait_status, WNOHANG);
    if (r == pid) return true;
    if (r < 0 && errno != EINTR) return true;  // not our child any more
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
}

}  // namespace

StatusOr<std::string> ServerBinaryNextToSelf() {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot find the ferry executable (/proc/self/exe: ", ec.message(),
                     "); pass --server ADDR to use a running server"));
  }
  const fs::path server = self.parent_path() / "ferry-server";
  if (access(server.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no ferry-server next to ", self.string(), " (", server.string(), ": ", ErrnoText(),
        "); build it (ninja ferry-server) or pass --server ADDR to use a "
        "running server"));
  }
  return server.string();
}

StatusOr<std::unique_ptr<EmbeddedServer>> EmbeddedServer::Create(
    const EmbeddedServerOptions& options) {
  if (options.server_binary.empty()) {
    return absl::InvalidArgumentError("EmbeddedServerOptions.server_binary is required");
  }
  std::string dir_template = (fs::temp_directory_path() / "ferry-demo-XXXXXX").string();
  if (mkdtemp(dir_template.data()) == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot create a temporary folder ", dir_template, ": ", ErrnoText()));
  }
  std::unique_ptr<EmbeddedServer> server(new EmbeddedServer(options, dir_template));
  const std::string ready_file = server->dir_ + "/ready.json";
  const std::string log_file = server->dir_ + "/ferry-server.log";

  std::vector<std::string> args = {options.server_binary,
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--admin-listen",
                                   "127.0.0.1:0",
                                   "--ready-file",
                                   ready_file,
                                   "--store",
                                   "memory",
                                   "--log-level",
                                   "info"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  const int log_fd = open(log_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::UnavailableError(absl::StrCat("cannot create ", log_file, ": ", ErrnoText()));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec. Die with the parent, so that a killed
    // `ferry demo` leaves no server behind.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    const int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(log_fd);
  if (pid < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot start ", options.server_binary, ": fork: ", ErrnoText()));
  }
  server->pid_ = pid;

  const absl::Time deadline = absl::Now() + options.ready_timeout;
  while (true) {
    int wait_status = 0;
    if (waitpid(pid, &wait_status, WNOHANG) == pid) {
      server->pid_ = -1;
      return absl::UnavailableError(absl::StrCat(
          options.server_binary, " exited before it was ready (", DescribeWaitStatus(wait_status),
          "); its log ends with:\n", server->LogTail()));
    }
    std::ifstream in(ready_file);
    if (in) {
      std::stringstream text;
      text << in.rdbuf();
      nlohmann::json ready = nlohmann::json::parse(text.str(), nullptr, false);
      if (ready.is_object() && ready.contains("grpc_port") &&
          ready["grpc_port"].is_number_integer()) {
        server->grpc_port_ = ready["grpc_port"].get<int>();
        if (ready.contains("admin_port") && ready["admin_port"].is_number_integer()) {
          server->admin_port_ = ready["admin_port"].get<int>();
        }
        return server;
      }
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(options.server_binary, " did not write ",
                                                      ready_file, " within ",
                                                      absl::FormatDuration(options.ready_timeout),
                                                      "; its log ends with:\n", server->LogTail()));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

EmbeddedServer::EmbeddedServer(EmbeddedServerOptions options, std::string dir)
    : options_(std::move(options)), dir_(std::move(dir)) {}

EmbeddedServer::~EmbeddedServer() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    int wait_status = 0;
    while (waitpid(pid_, &wait_status, 0) < 0 && errno == EINTR) {
    }
  }
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

Status EmbeddedServer::Stop() {
  if (pid_ <= 0) {
    return absl::FailedPreconditionError("the embedded server is not running");
  }
  if (kill(pid_, SIGTERM) != 0) {
    return absl::UnavailableError(absl::StrCat("kill(", pid_, ", SIGTERM): ", ErrnoText()));
  }
  int wait_status = 0;
  if (!WaitUntil(pid_, absl::Now() + options_.stop_timeout, &wait_status)) {
    return absl::DeadlineExceededError(
        absl::StrCat("ferry-server (pid ", pid_, ") did not exit within ",
                     absl::FormatDuration(options_.stop_timeout),
                     " after SIGTERM; killing it. Its log ends with:\n", LogTail()));
  }
  pid_ = -1;
  if (!WIFEXITED(wait_status) || WEXITSTATUS(wait_status) != 0) {
    return absl::InternalError(absl::StrCat("ferry-server ended with ",
                                            DescribeWaitStatus(wait_status),
                                            " after SIGTERM; its log ends with:\n", LogTail()));
  }
  return absl::OkStatus();
}

std::string EmbeddedServer::address() const { return absl::StrCat("127.0.0.1:", grpc_port_); }

std::string EmbeddedServer::LogTail() const {
  std::ifstream in(dir_ + "/ferry-server.log");
  std::stringstream text;
  text << in.rdbuf();
  std::vector<std::string> lines = absl::StrSplit(text.str(), '\n');
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.empty()) return "  (empty log)";
  const size_t first = lines.size() > kLogTailLines ? lines.size() - kLogTailLines : 0;
  std::string out;
  for (size_t i = first; i < lines.size(); ++i) {
    absl::StrAppend(&out, "  ", lines[i], i + 1 < lines.size() ? "\n" : "");
  }
  return out;
}

}  // namespace ferry::cli
