// A ferry-server child process on loopback ports, for the `ferry demo` command, the integration
// tests and the benchmarks: one class on the one launcher (common/child_process.h).
//
//   ServerProcessOptions options;
//   options.extra_args = {"--heartbeat-timeout", "2s"};
//   auto server = ServerProcess::Create(options);
//   ... talk to (*server)->address() ...
//   Status s = (*server)->Stop();  // SIGTERM; OK only for exit status 0
#ifndef FERRY_COMMON_SERVER_PROCESS_H_
#define FERRY_COMMON_SERVER_PROCESS_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/child_process.h"
#include "ferry/status.h"

namespace ferry::internal {

// The binary `name` next to the running executable (build/bin/ferry -> build/bin/ferry-server),
// else in ../bin beside its folder (build/tests/x -> build/bin/ferry-server). FailedPrecondition,
// saying how to build it, when neither is executable.
StatusOr<std::string> SiblingBinary(const std::string& name);

struct ServerProcessOptions {
  // Path of ferry-server; empty: SiblingBinary("ferry-server").
  std::string binary;
  // Passed after the flags ServerProcess sets: --listen 127.0.0.1:0 and --ready-file F always
  // (do not repeat them: ferry-server rejects a repeated flag), and --admin-listen 127.0.0.1:0,
  // --store memory and --log-level info unless extra_args names that flag.
  std::vector<std::string> extra_args;
  // The server's output goes to this process's stderr instead of a log file in the temporary
  // folder (benchmarks keep their stdout for result lines; LogTail then shows nothing).
  bool log_to_stderr = false;
  absl::Duration ready_timeout = absl::Seconds(20);
  absl::Duration stop_timeout = absl::Seconds(10);
  // Asked by the destructor; when it answers true, the log's tail goes to stderr (tests pass
  // "the current test has failed"). Unset: never.
  std::function<bool()> print_log_tail_on_exit_if;
};

// Owns the child and a temporary folder holding its ready file and log. Thread-compatible.
class ServerProcess {
 public:
  // Starts the server and waits until its ready file names its ports. On failure the child is
  // gone and the error carries the tail of its log.
  static StatusOr<std::unique_ptr<ServerProcess>> Create(ServerProcessOptions options = {});

  // Stops a running server (SIGTERM, then SIGKILL after stop_timeout) and removes the folder.
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // SIGTERM, then waits up to stop_timeout. OK only if the server exits with status 0;
  // otherwise the error carries the status and the log's tail (a server that does not exit in
  // time is killed: DeadlineExceeded). FailedPrecondition if it is not running.
  Status Stop();

  // SIGKILL (a crash: no draining) and reap; Restart() starts it again. No-op if not running.
  void Kill();

  // Stops the server if running (its exit code is not checked) and starts it again on the same
  // gRPC port, so that clients keep their address. The admin port may change. With a memory
  // store the new server holds no records.
  Status Restart();

  bool running() const { return child_ != nullptr && child_->running(); }
  std::string address() const;  // "127.0.0.1:<grpc_port>"
  int grpc_port() const { return grpc_port_; }
  int admin_port() const { return admin_port_; }
  pid_t pid() const { return running() ? child_->pid() : -1; }
  const std::string& log_path() const { return log_path_; }  // empty with log_to_stderr
  // The last `lines` lines of the server's log, indented.
  std::string LogTail(int lines = 40) const;

 private:
  ServerProcess(ServerProcessOptions options, std::string dir);
  // Starts the server with --listen 127.0.0.1:<grpc_port> and waits for the ready file.
  Status Launch(int grpc_port);

  const ServerProcessOptions options_;
  const std::string dir_;  // temporary folder; removed by the destructor
  const std::string ready_path_;
  const std::string log_path_;
  std::unique_ptr<ChildProcess> child_;
  int grpc_port_ = 0;
  int admin_port_ = 0;
};

}  // namespace ferry::internal

#endif  // FERRY_COMMON_SERVER_PROCESS_H_
