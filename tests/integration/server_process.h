// Test support: real ferry binaries as child processes.
//
//   auto server = ServerProcess::Create({.extra_args = {"--heartbeat-timeout", "2s"}});
//   ASSERT_TRUE(server.ok()) << server.status();
//   ... talk to (*server)->grpc_address() ...
//   EXPECT_EQ((*server)->Stop(), 0);
//
//   auto r = RunCommand({BinaryPath("ferry"), "health"}, absl::Seconds(30));
#ifndef FERRY_TESTS_INTEGRATION_SERVER_PROCESS_H_
#define FERRY_TESTS_INTEGRATION_SERVER_PROCESS_H_

#include <signal.h>
#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "ferry/status.h"

namespace ferry::testing {

// Folder of the ferry binaries: FERRY_BIN_DIR (ctest sets it), else <test binary's folder>/../bin
// (tests land in build/tests, binaries in build/bin).
std::string BinDir();

// BinDir()/name.
std::string BinaryPath(const std::string& name);

// A free TCP port on 127.0.0.1 at the time of the call (bound to port 0, then closed). Another
// process may take it before the caller does; use it only where nothing should listen.
int UnusedLoopbackPort();

struct ServerProcessOptions {
  // Passed after the flags ServerProcess sets: --listen 127.0.0.1:0 and --ready-file F always
  // (do not repeat them: ferry-server rejects a repeated flag), and --admin-listen 127.0.0.1:0,
  // --store memory and --log-level info unless extra_args names that flag.
  std::vector<std::string> extra_args;
  // Path of ferry-server; empty means BinaryPath("ferry-server").
  std::string binary;
  absl::Duration ready_timeout = absl::Seconds(20);
  absl::Duration stop_timeout = absl::Seconds(10);
};

// One ferry-server child process. Its stdout and stderr go to a log file; errors from Create,
// Stop and Restart end with the log's tail, and the destructor prints the tail when the current
// GoogleTest test has failed. Thread-compatible.
class ServerProcess {
 public:
  // Starts the server and waits until its ready file names its ports.
  static StatusOr<std::unique_ptr<ServerProcess>> Create(ServerProcessOptions options = {});

  // Stops a running server (SIGTERM, then SIGKILL after stop_timeout) and removes the temporary
  // folder.
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // Sends `signal` and waits up to stop_timeout for the exit. Returns the exit code, or
  // 128 + the signal number if a signal ended it. DeadlineExceeded (the process is then killed)
  // if it did not exit in time; FailedPrecondition if it is not running.
  StatusOr<int> Stop(int signal = SIGTERM);

  // SIGKILL and reap; the next Restart() starts it again. No-op if not running.
  void Kill();

  // Stops the server if running (SIGTERM; its exit code is not checked) and starts it again on
  // the same gRPC port, so that clients keep their address. The admin port may change. With a
  // memory store the new server holds no records.
  Status Restart();

  bool running() const { return pid_ > 0; }
  std::string grpc_address() const;  // "127.0.0.1:<grpc_port>"
  int grpc_port() const { return grpc_port_; }
  int admin_port() const { return admin_port_; }
  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }

  // The last `lines` lines of the server's log, indented.
  std::string LogTail(int lines = 40) const;

 private:
  ServerProcess(ServerProcessOptions options, std::string dir);

  // Launches with --listen 127.0.0.1:<grpc_port> and waits for the ready file.
  Status Launch(int grpc_port);

  const ServerProcessOptions options_;
  const std::string dir_;
  const std::string ready_path_;
  const std::string log_path_;
  pid_t pid_ = -1;  // -1 when not running
  int grpc_port_ = 0;
  int admin_port_ = 0;
};

struct CommandResult {
  int exit_code = -1;  // 128 + signal number if a signal ended the command
  std::string out;     // everything it wrote to stdout
  std::string err;     // everything it wrote to stderr
};

// Runs argv (argv[0] is a path) with the test's environment plus `extra_env` ("NAME=value";
// replaces a variable of the same name; "NAME=" sets it empty) and captures its output.
// DeadlineExceeded, with the output so far, if it runs longer than `timeout` (it is killed).
StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv, absl::Duration timeout,
                                   const std::vector<std::string>& extra_env = {});

// The whole file ("" if it cannot be read: the caller's assertion on the content fails).
std::string ReadFile(const std::string& path);
// Writes `data` to `path` (replacing it), creating the parent directories.
void WriteFile(const std::string& path, const std::string& data);

}  // namespace ferry::testing

#endif  // FERRY_TESTS_INTEGRATION_SERVER_PROCESS_H_
