// A child process started by the `ferry` command (the demo's server, publisher and puller):
// started with fork+exec, its stdout and stderr in a log file, killed if the parent dies.
#ifndef FERRY_CLI_CHILD_PROCESS_H_
#define FERRY_CLI_CHILD_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "ferry/status.h"
#include "nlohmann/json.hpp"

namespace ferry::cli {

// "exit status 3" / "signal 9 (Killed)".
std::string DescribeWaitStatus(int wait_status);

struct ChildOptions {
  std::vector<std::string> argv;  // argv[0] is the executable's path; required
  std::string log_file;           // receives stderr (and stdout unless stdout_file is set)
  std::string stdout_file;        // optional: stdout goes here instead
  // Variables removed from the child's environment (which is otherwise this process's).
  std::vector<std::string> env_remove;
};

// Owns the process: the destructor kills (SIGKILL) and reaps it if it still runs.
// Thread-compatible.
class ChildProcess {
 public:
  static StatusOr<std::unique_ptr<ChildProcess>> Start(ChildOptions options);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Waits until `path` holds a JSON object with the integer field `key`, and returns it.
  // Unavailable (with the log's tail) if the child exits first; DeadlineExceeded after `timeout`.
  StatusOr<nlohmann::json> WaitForReadyFile(const std::string& path, const std::string& key,
                                            absl::Duration timeout);

  // Waits up to `timeout` for the exit; OK only for exit status 0, else the error carries the
  // status and the log's tail. DeadlineExceeded if it still runs (it is left running).
  Status Wait(absl::Duration timeout);

  // SIGTERM, then Wait(timeout); kills the child if it does not exit in time.
  Status Terminate(absl::Duration timeout);

  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }  // basename of argv[0]
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

}  // namespace ferry::cli

#endif  // FERRY_CLI_CHILD_PROCESS_H_
