// A ferry-server child process on loopback ports, for `ferry demo`.
#ifndef FERRY_CLI_EMBEDDED_SERVER_H_
#define FERRY_CLI_EMBEDDED_SERVER_H_

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/time/time.h"
#include "cli/child_process.h"
#include "ferry/status.h"

namespace ferry::cli {

// The ferry-server binary in the directory of the running executable (build/bin/ferry ->
// build/bin/ferry-server). FailedPrecondition, saying how to get one, if it is not there.
StatusOr<std::string> ServerBinaryNextToSelf();

struct EmbeddedServerOptions {
  std::string server_binary;  // path of ferry-server; required
  // How long to wait for the server to write its ready file.
  absl::Duration ready_timeout = absl::Seconds(20);
  // How long Stop() waits after SIGTERM before it kills the server.
  absl::Duration stop_timeout = absl::Seconds(10);
};

// Owns the child process and a temporary folder holding its ready file and log. Thread-compatible.
class EmbeddedServer {
 public:
  // Starts `ferry-server --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --ready-file F
  // --store memory` and waits until F names its ports. On failure the child is gone and the
  // error carries the tail of its log.
  static StatusOr<std::unique_ptr<EmbeddedServer>> Create(const EmbeddedServerOptions& options);

  // Kills the child if Stop() was not called (or failed), then removes the temporary folder.
  ~EmbeddedServer();
  EmbeddedServer(const EmbeddedServer&) = delete;
  EmbeddedServer& operator=(const EmbeddedServer&) = delete;

  // SIGTERM, then waits for the exit. OK only if the server exited with status 0.
  Status Stop();

  std::string address() const;  // "127.0.0.1:<grpc_port>"
  int grpc_port() const { return grpc_port_; }
  int admin_port() const { return admin_port_; }
  pid_t pid() const { return child_ ? child_->pid() : -1; }

 private:
  EmbeddedServer(EmbeddedServerOptions options, std::string dir);

  const EmbeddedServerOptions options_;
  const std::string dir_;  // temporary folder; removed by the destructor
  std::unique_ptr<ChildProcess> child_;
  int grpc_port_ = 0;
  int admin_port_ = 0;
};

}  // namespace ferry::cli

#endif  // FERRY_CLI_EMBEDDED_SERVER_H_
