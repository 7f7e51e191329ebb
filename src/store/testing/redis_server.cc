#include "store/testing/redis_server.h"

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
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
  internal::ChildOptions child;
  child.argv = std::move(args);
  child.log_file = log_path_;
  child.append_log = true;  // a restarted server's log follows the first one's
  child.death_signal = SIGKILL;
  FERRY_ASSIGN_OR_RETURN(child_, internal::ChildProcess::Start(std::move(child)));

  const absl::Time deadline = absl::Now() + options_.start_timeout;
  const RedisConnectOptions connect = LoopbackOptions(port_, options_.password);
  while (true) {
    if (child_->Exited()) {
      return absl::UnavailableError(absl::StrCat("redis-server on port ", port_,
                                                 " exited at startup; its log:\n", LogTail()));
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
  if (!running()) return absl::OkStatus();
  if (graceful) {
    (void)child_->SendSignal(SIGCONT);  // a paused server must run to shut down
    // A clean shutdown gets 10 s, then it is killed (the error only says so).
    (void)child_->Signal(signo, absl::Seconds(10));
  } else {
    child_->Kill();
  }
  return absl::OkStatus();
}

Status RedisServer::Stop() { return Signal(SIGTERM, /*graceful=*/true); }

Status RedisServer::Kill() { return Signal(SIGKILL, /*graceful=*/false); }

Status RedisServer::Restart() {
  FERRY_RETURN_IF_ERROR(Stop());
  return Launch();
}

Status RedisServer::Pause() {
  if (!running()) return absl::FailedPreconditionError("redis-server is not running");
  FERRY_RETURN_IF_ERROR(child_->SendSignal(SIGSTOP));
  // kill() only queues the signal: redis may still answer a command on another CPU until the
  // kernel has stopped it. Wait for /proc/<pid>/stat to say so ('T').
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    std::ifstream in(absl::StrCat("/proc/", pid(), "/stat"));
    std::string line;
    std::getline(in, line);
    const size_t paren = line.rfind(')');
    if (paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'T') {
      return absl::OkStatus();
    }
    absl::SleepFor(absl::Milliseconds(1));  // polling the kernel's view of the process
  }
  return absl::DeadlineExceededError(
      absl::StrCat("redis-server (pid ", pid(), ") did not stop within 10 s of SIGSTOP"));
}

Status RedisServer::Resume() {
  if (!running()) return absl::FailedPreconditionError("redis-server is not running");
  return child_->SendSignal(SIGCONT);
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
