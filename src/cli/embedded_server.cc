#include "cli/embedded_server.h"

#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace ferry::cli {

namespace fs = std::filesystem;

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
    return absl::FailedPreconditionError(
        absl::StrCat("no ferry-server next to ", self.string(), " (", server.string(), ": ",
                     std::strerror(errno),
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
    return absl::UnavailableError(absl::StrCat("cannot create a temporary folder ", dir_template,
                                               ": ", std::strerror(errno)));
  }
  std::unique_ptr<EmbeddedServer> server(new EmbeddedServer(options, dir_template));
  const std::string ready_file = server->dir_ + "/ready.json";
  ChildOptions child;
  child.argv = {options.server_binary,
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
  child.log_file = server->dir_ + "/ferry-server.log";
  FERRY_ASSIGN_OR_RETURN(server->child_, ChildProcess::Start(std::move(child)));
  FERRY_ASSIGN_OR_RETURN(nlohmann::json ready, server->child_->WaitForReadyFile(
                                                   ready_file, "grpc_port", options.ready_timeout));
  server->grpc_port_ = ready["grpc_port"].get<int>();
  if (ready.contains("admin_port") && ready["admin_port"].is_number_integer()) {
    server->admin_port_ = ready["admin_port"].get<int>();
  }
  return server;
}

EmbeddedServer::EmbeddedServer(EmbeddedServerOptions options, std::string dir)
    : options_(std::move(options)), dir_(std::move(dir)) {}

EmbeddedServer::~EmbeddedServer() {
  child_.reset();  // kills the server if Stop() was not called or failed
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

Status EmbeddedServer::Stop() {
  if (child_ == nullptr || child_->pid() <= 0) {
    return absl::FailedPreconditionError("the embedded server is not running");
  }
  return child_->Terminate(options_.stop_timeout);
}

std::string EmbeddedServer::address() const { return absl::StrCat("127.0.0.1:", grpc_port_); }

}  // namespace ferry::cli
