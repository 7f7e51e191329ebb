// RedisServer: a real redis-server child process on a free loopback port, for tests (unit tests
// of the Redis store and multi-process integration tests alike).
//
// By default it runs with persistence off (--save "" --appendonly no), so a Kill() or Stop()
// loses every key; pass extra_args such as {"--appendonly", "yes", "--appendfsync", "always"} to
// test recovery from a crash. Its working directory is a fresh temporary directory, removed on
// destruction.
//
// The child is killed when the thread that started it exits (PR_SET_PDEATHSIG), so a crashed
// test leaves no redis-server behind: start it from the test's main thread.
//
// Thread-compatible: one thread at a time; the accessors are safe to call concurrently with
// each other.
#ifndef FERRY_STORE_TESTING_REDIS_SERVER_H_
#define FERRY_STORE_TESTING_REDIS_SERVER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/child_process.h"
#include "ferry/status.h"

namespace ferry::testing {

struct RedisServerOptions {
  // The redis-server to run; empty: /usr/bin/redis-server if present, else the first on PATH.
  std::string binary;
  // Appended to the defaults (--port N --bind 127.0.0.1 --save "" --appendonly no
  // --daemonize no --dir TMP); a later setting wins.
  std::vector<std::string> extra_args;
  // Non-empty: the server requires this password (--requirepass); url() and Call() use it.
  std::string password;
  // How long Start() and Restart() wait for the server to answer PING.
  absl::Duration start_timeout = absl::Seconds(10);
};

class RedisServer {
 public:
  // Picks a free loopback port, starts redis-server on it and waits until it answers PING.
  // FailedPrecondition when no redis-server is installed (run scripts/install-deps.sh);
  // Unavailable when it does not come up (the message carries its log).
  static StatusOr<std::unique_ptr<RedisServer>> Start(RedisServerOptions options = {});

  ~RedisServer();  // Kill()s the server and removes its directory
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  // SIGTERM (a clean shutdown), then waits for the process to exit. No-op when not running.
  Status Stop();
  // SIGKILL (a crash: nothing is flushed), then waits. No-op when not running.
  Status Kill();
  // Stop()s the server if it is running, then starts it again on the same port and waits until
  // it answers PING. Without persistence the new server is empty.
  Status Restart();
  // SIGSTOP / SIGCONT: a hung Redis that keeps its connections open but never answers.
  Status Pause();
  Status Resume();

  // Runs one command on a fresh connection and returns the reply as text (a string, status or
  // integer reply; "" for nil; elements joined by '\n' for an array). An error reply is Internal.
  StatusOr<std::string> Call(const std::vector<std::string>& argv) const;

  bool running() const { return child_ != nullptr && child_->running(); }
  int port() const { return port_; }
  pid_t pid() const { return running() ? child_->pid() : -1; }
  // redis://127.0.0.1:PORT/DB, or redis://:PASSWORD@127.0.0.1:PORT/DB with a password.
  std::string url(int db = 0) const;
  const std::string& log_path() const { return log_path_; }

 private:
  RedisServer(RedisServerOptions options, std::string binary, std::string dir)
      : options_(std::move(options)), binary_(std::move(binary)), dir_(std::move(dir)) {}
  // Starts redis-server on port_ and waits for PING.
  Status Launch();
  // Sends `signo` and reaps the process; a graceful stop that takes over 10 s is killed.
  Status Signal(int signo, bool graceful);
  std::string LogTail() const;

  const RedisServerOptions options_;
  const std::string binary_;
  const std::string dir_;
  std::string log_path_;
  int port_ = 0;
  std::unique_ptr<internal::ChildProcess> child_;  // common's launcher
};

}  // namespace ferry::testing

#endif  // FERRY_STORE_TESTING_REDIS_SERVER_H_
