// The one child-process launcher: the `ferry` command's children (`ferry demo` starts the
// server, a publisher and a puller), the integration tests' and the benchmarks' children
// (ferry-server, ferry publish, redis-server) and RunCommand, which captures a command's output.
//
// Children are started with fork+exec; everything the child touches is prepared before fork, so
// the child makes only async-signal-safe calls (callers have gRPC threads). Each child closes
// every descriptor but stdin/stdout/stderr, and receives `death_signal` when the thread that
// started it exits (PR_SET_PDEATHSIG), so a killed parent leaves no child behind: start children
// from a long-lived thread.
#ifndef FERRY_COMMON_CHILD_PROCESS_H_
#define FERRY_COMMON_CHILD_PROCESS_H_

#include <signal.h>
#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "ferry/status.h"
#include "nlohmann/json.hpp"

namespace ferry::internal {

// "exit status 3" / "signal 9 (Killed)".
std::string DescribeWaitStatus(int wait_status);

// The exit code a shell reports: the exit status, or 128 + the signal that ended the process.
int ExitCodeOf(int wait_status);

struct ChildOptions {
  std::vector<std::string> argv;  // argv[0] is the executable's path; required
  // Receives the child's stderr, and its stdout unless stdout_file is set; created, or appended
  // to with append_log. Empty: both go to this process's stderr (LogTail has nothing to show),
  // as benchmarks want: their stdout carries only their result lines.
  std::string log_file;
  bool append_log = false;
  std::string stdout_file;  // optional: stdout goes here instead
  // The child's environment is this process's, without the variables named in env_remove and
  // with the "NAME=value" entries of env_set (which replace a variable of the same name; "NAME="
  // sets it empty).
  std::vector<std::string> env_remove;
  std::vector<std::string> env_set;
  // Sent to the child when the thread that started it exits.
  int death_signal = SIGTERM;
};

// Owns the process: the destructor kills (SIGKILL) and reaps it if it still runs.
// Thread-compatible.
class ChildProcess {
 public:
  // Unavailable naming the path when a file cannot be created or fork fails. A binary that
  // cannot be executed shows as a child that exits with status 127 at once.
  static StatusOr<std::unique_ptr<ChildProcess>> Start(ChildOptions options);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Waits until `path` is a ready file (common/ready_file.h) with the integer field `key`, and
  // returns its object. Unavailable (with the log's tail) if the child exits first;
  // DeadlineExceeded after `timeout` (the child is left running).
  StatusOr<nlohmann::json> WaitForReadyFile(const std::string& path, const std::string& key,
                                            absl::Duration timeout);

  // Waits up to `timeout` for the exit; OK only for exit status 0, else the error carries the
  // status and the log's tail. DeadlineExceeded if it still runs (it is left running).
  Status Wait(absl::Duration timeout);

  // Sends `signal`, then waits up to `timeout` for the exit and returns ExitCodeOf it. If the
  // child does not exit in time it is killed and the answer is DeadlineExceeded with the log's
  // tail. FailedPrecondition if the child is not running.
  StatusOr<int> Signal(int signal, absl::Duration timeout);

  // SIGTERM, then Wait(timeout); kills the child if it does not exit in time. OK only for exit
  // status 0.
  Status Terminate(absl::Duration timeout);

  // SIGKILL and reap. No-op when not running.
  void Kill();

  // Sends `signal` without waiting (SIGSTOP, SIGCONT). FailedPrecondition if not running.
  Status SendSignal(int signal);

  // True until the exit has been observed (by Wait, Signal, Terminate, Kill, WaitForReadyFile or
  // Exited()).
  bool running() const { return pid_ > 0; }
  // Polls for the exit without blocking; true (and not running()) once the child has exited.
  bool Exited();

  pid_t pid() const { return pid_; }                 // -1 once reaped
  const std::string& name() const { return name_; }  // basename of argv[0]
  const std::string& log_file() const { return options_.log_file; }
  // The last `lines` lines of the log, indented by two spaces.
  std::string LogTail(int lines = 30) const;

 private:
  ChildProcess(ChildOptions options, pid_t pid);
  // OK for exit status 0; otherwise an error describing `wait_status` after `what`.
  Status ExitStatus(int wait_status, const std::string& what) const;

  const ChildOptions options_;
  const std::string name_;
  pid_t pid_;  // -1 once reaped
};

struct CommandResult {
  int exit_code = -1;  // ExitCodeOf the command's wait status
  std::string out;     // everything it wrote to stdout
  std::string err;     // everything it wrote to stderr
};

// Runs argv (argv[0] is a path) with this process's environment plus `env_set` (as
// ChildOptions.env_set) and stdin from /dev/null, and captures its output. DeadlineExceeded, with
// the output so far, if it runs longer than `timeout` (it is killed).
StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv, absl::Duration timeout,
                                   const std::vector<std::string>& env_set = {});

}  // namespace ferry::internal

#endif  // FERRY_COMMON_CHILD_PROCESS_H_
