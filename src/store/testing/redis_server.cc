#include "store/testing/redis_server.h"

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "store/redis_client.h"

namespace ferry::testing {
namespace {

using store::internal::RedisConnection;
using store::internal::RedisConnectOptions;

std::string FindBinary(const std::string& wanted) {
  if (!wanted.empty()) return wanted;
  if (access("/usr/bin/redis-server", X_OK) == 0) return "/usr/bin/redis-server";
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path == nullptr ? "" : path, ':')) {
    if (dir.empty()) continue;
    const std::string candidate = absl::StrCat(dir, "/redis-server");
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// A port that was free a moment ago. Another process may take it before redis-server binds it;
// Start() then tries another.
StatusOr<int> FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int err = errno;
    close(fd);
    return absl::InternalError(absl::StrCat("bind 127.0.0.1:0: ", std::strerror(err)));
  }
  close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

RedisConnectOptions LoopbackOptions(int port, const std::string& password) {
  RedisConnectOptions o;
  o.endpoint.host = "127.0.0.1";
  o.endpoint.port = port;
  o.endpoint.password = password;
  o.flag = "the test's redis-server";
  o.connect_timeout = absl::Milliseconds(500);
  o.command_timeout = absl::Seconds(5);
  return o;
}

std::string ReplyToText(const redisReply* r) {
  switch (r->type) {
    case REDIS_REPLY_INTEGER:
      return absl::StrCat(r->integer);
    case REDIS_REPLY_NIL:
      return "";
    case REDIS_REPLY_ARRAY: {
      std::vector<std::string> parts;
      for (size_t i = 0; i < r->elements; ++i) parts.push_back(ReplyToText(r->element[i]));
      return absl::StrJoin(parts, "\n");
    }
    default:
      return std::string(r->str, r->len);
  }
}

}  // namespace

StatusOr<std::unique_ptr<RedisServer>> RedisServer::Start(RedisServerOptions options) {
  const std::string binary = FindBinary(options.binary);
  if (binary.empty()) {
    return absl::FailedPreconditionError(
        "redis-server not found in /usr/bin or on PATH; install it with scripts/install-deps.sh "
        "(Debian package redis-server)");
  }
  const char* tmp = std::getenv("TMPDIR");
  std::string dir_template =
      absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/ferry-redis-XXXXXX");
  if (mkdtemp(dir_template.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", dir_template, ": ", std::strerror(errno)));
  }
  std::unique_ptr<RedisServer> server(
      new RedisServer(std::move(options), binary, std::move(dir_template)));
  server->log_path_ = server->dir_ + "/redis.log";
  // Another process may take the port between FreeLoopbackPort() and redis-server's bind.
  for (int attempt = 0;; ++attempt) {
    FERRY_ASSIGN_OR_RETURN(server->port_, FreeLoopbackPort());
    Status launched = server->Launch();
    if (launched.ok()) return server;
    if (attempt == 4 || server->LogTail().find("Address already in use") == std::string::npos) {
      return launched;
    }
    std::error_code ignored;
    std::filesystem::remove(server->log_path_, ignored);
  }
}

RedisServer::~RedisServer() {
  (void)Kill();
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

std::string RedisServer::url(int db) const {
  return absl::StrCat("redis://", options_.password.empty() ? "" : ":", options_.password,
                      options_.password.empty() ? "" : "@", "127.0.0.1:", port_, "/", db);
}

std::string RedisServer::LogTail() const {
  std::ifstream in(log_path_);
  std::stringstream text;
  text << in.rdbuf();
  std::string log = text.str();
  if (log.size() > 2000) log = log.substr(log.size() - 2000);
  return log;
}

Status RedisServer::Launch() {
  std::vector<std::string> args = {binary_,
                                   "--port",
                                   absl::StrCat(port_),
                                   "--bind",
                                   "127.0.0.1",
                                   "--save",
                                   "",
                                   "--appendonly",
                                   "no",
                                   "--daemonize",
                                   "no",
                                   "--dir",
                                   dir_,
                                   "--logfile",
                                   ""};
  if (!options_.password.empty()) {
    args.insert(args.end(), {"--requirepass", options_.password});
  }
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  const int log_fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::InternalError(absl::StrCat("open ", log_path_, ": ", std::strerror(errno)));
  }
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    const int err = errno;
    close(log_fd);
    if (null_fd >= 0) close(null_fd);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(err)));
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls until execv.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    if (null_fd >= 0) dup2(null_fd, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    syscall(SYS_close_range, 3u, ~0u, 0u);  // no test sockets leak into Redis
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(log_fd);
  if (null_fd >= 0) close(null_fd);
  pid_ = pid;

  const absl::Time deadline = absl::Now() + options_.start_timeout;
  const RedisConnectOptions connect = LoopbackOptions(port_, options_.password);
  while (true) {
    int wstatus = 0;
    if (waitpid(pid_, &wstatus, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::UnavailableError(absl::StrCat("redis-server on port ", port_,
                                                 " exited at startup (wait status ", wstatus,
                                                 "); its log:\n", LogTail()));
    }
    auto conn = RedisConnection::Connect(connect);
    if (conn.ok()) {
      // Any answer but LOADING (still reading its append-only file) means it serves.
      auto reply = (*conn)->Command({"PING"});
      if (reply.ok() && ((*reply)->type != REDIS_REPLY_ERROR ||
                         ReplyToText(reply->get()).rfind("LOADING", 0) != 0)) {
        return absl::OkStatus();
      }
    }
    if (absl::Now() > deadline) {
      (void)Kill();
      return absl::UnavailableError(
          absl::StrCat("redis-server on port ", port_, " did not answer PING within ",
                       absl::FormatDuration(options_.start_timeout), "; its log:\n", LogTail()));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

Status RedisServer::Signal(int signo, bool graceful) {
  if (pid_ <= 0) return absl::OkStatus();
  if (kill(pid_, signo) != 0 && errno != ESRCH) {
    return absl::InternalError(absl::StrCat("kill ", pid_, ": ", std::strerror(errno)));
  }
  if (graceful) kill(pid_, SIGCONT);  // a paused server must run to shut down
  // A clean shutdown gets 10 s, then it is killed.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  int wstatus = 0;
  while (true) {
    const pid_t done = waitpid(pid_, &wstatus, graceful ? WNOHANG : 0);
    if (done == pid_ || (done < 0 && errno != EINTR)) break;
    if (graceful && absl::Now() > deadline) {
      kill(pid_, SIGKILL);
      graceful = false;
    }
    if (graceful) absl::SleepFor(absl::Milliseconds(10));
  }
  pid_ = -1;
  return absl::OkStatus();
}

Status RedisServer::Stop() { return Signal(SIGTERM, /*graceful=*/true); }

Status RedisServer::Kill() { return Signal(SIGKILL, /*graceful=*/false); }

Status RedisServer::Restart() {
  FERRY_RETURN_IF_ERROR(Stop());
  return Launch();
}

Status RedisServer::Pause() {
  if (pid_ <= 0) return absl::FailedPreconditionError("redis-server is not running");
  kill(pid_, SIGSTOP);
  // kill() only queues the signal: redis may still answer a command on another CPU until the
  // kernel has stopped it. Wait for /proc/<pid>/stat to say so ('T').
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    std::ifstream in(absl::StrCat("/proc/", pid_, "/stat"));
    std::string line;
    std::getline(in, line);
    const size_t paren = line.rfind(')');
    if (paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'T') {
      return absl::OkStatus();
    }
    absl::SleepFor(absl::Milliseconds(1));  // polling the kernel's view of the process
  }
  return absl::DeadlineExceededError(
      absl::StrCat("redis-server (pid ", pid_, ") did not stop within 10 s of SIGSTOP"));
}

Status RedisServer::Resume() {
  if (pid_ <= 0) return absl::FailedPreconditionError("redis-server is not running");
  kill(pid_, SIGCONT);
  return absl::OkStatus();
}

StatusOr<std::string> RedisServer::Call(const std::vector<std::string>& argv) const {
  const RedisConnectOptions connect = LoopbackOptions(port_, options_.password);
  FERRY_ASSIGN_OR_RETURN(auto conn, RedisConnection::Connect(connect));
  std::vector<std::string_view> views(argv.begin(), argv.end());
  FERRY_ASSIGN_OR_RETURN(auto reply, conn->Command(views));
  if (reply->type == REDIS_REPLY_ERROR) {
    return absl::InternalError(
        absl::StrCat(absl::StrJoin(argv, " "), ": ", ReplyToText(reply.get())));
  }
  return ReplyToText(reply.get());
}

}  // namespace ferry::testing
