// Test support: real ferry binaries as child processes, on the one launcher
// (common/child_process.h, common/server_process.h).
//
//   auto server = StartServer({.extra_args = {"--heartbeat-timeout", "2s"}});
//   ASSERT_TRUE(server.ok()) << server.status();
//   ... talk to (*server)->address() ...
//   EXPECT_TRUE((*server)->Stop().ok());
//
//   auto r = RunCommand({BinaryPath("ferry"), "health"}, absl::Seconds(30));
#ifndef FERRY_TESTS_INTEGRATION_SERVER_PROCESS_H_
#define FERRY_TESTS_INTEGRATION_SERVER_PROCESS_H_

#include <memory>
#include <string>

#include "common/child_process.h"
#include "common/server_process.h"
#include "ferry/status.h"

namespace ferry::testing {

using ::ferry::internal::ChildOptions;
using ::ferry::internal::ChildProcess;
using ::ferry::internal::CommandResult;
using ::ferry::internal::RunCommand;
using ::ferry::internal::ServerProcess;
using ::ferry::internal::ServerProcessOptions;

// Folder of the ferry binaries: FERRY_BIN_DIR (ctest sets it), else <test binary's folder>/../bin
// (tests land in build/tests, binaries in build/bin).
std::string BinDir();

// BinDir()/name.
std::string BinaryPath(const std::string& name);

// A free TCP port on 127.0.0.1 at the time of the call (bound to port 0, then closed). Another
// process may take it before the caller does; use it only where nothing should listen.
int UnusedLoopbackPort();

// ServerProcess::Create for a test: `binary` defaults to BinaryPath("ferry-server"), and the
// server's log tail is printed when it is destroyed after the current test has failed.
StatusOr<std::unique_ptr<ServerProcess>> StartServer(ServerProcessOptions options = {});

// The whole file ("" if it cannot be read: the caller's assertion on the content fails).
std::string ReadFile(const std::string& path);
// Writes `data` to `path` (replacing it), creating the parent directories.
void WriteFile(const std::string& path, const std::string& data);

}  // namespace ferry::testing

#endif  // FERRY_TESTS_INTEGRATION_SERVER_PROCESS_H_
