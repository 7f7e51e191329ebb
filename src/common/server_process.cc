#include "common/server_process.h"

#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/fd.h"

namespace ferry::internal {
namespace {

namespace fs = std::filesystem;

bool HasFlag(const std::vector<std::string>& args, std::string_view flag) {
  for (const std::string& a : args) {
    if (a == flag || a.starts_with(std::string(flag) + "=")) return true;
  }
  return false;
}

}  // namespace

StatusOr<std::string> SiblingBinary(const std::string& name) {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot find ", name, ": /proc/self/exe: ", ec.message(), "; pass its path explicitly"));
  }
  const fs::path beside = self.parent_path() / name;
  const fs::path in_bin = self.parent_path().parent_path() / "bin" / name;
  for (const fs::path& p : {beside, in_bin}) {
    if (access(p.c_str(), X_OK) == 0) return p.string();
  }
  return absl::FailedPreconditionError(absl::StrCat("no ", name, " next to ", self.string(),
                                                    " (neither ", beside.string(), " nor ",
                                                    in_bin.string(), "); build it: ninja ", name));
}

StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Create(ServerProcessOptions options) {
  if (options.binary.empty()) {
    FERRY_ASSIGN_OR_RETURN(options.binary, SiblingBinary("ferry-server"));
  }
  if (access(options.binary.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(options.binary, " is not an executable (",
                                                      ErrnoText(errno),
                                                      "); build it first: ninja ferry-server"));
  }
  std::string dir = (fs::temp_directory_path() / "ferry-server-XXXXXX").string();
  if (mkdtemp(dir.data()) == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot create a temporary folder ", dir, ": ", ErrnoText(errno)));
  }
  std::unique_ptr<ServerProcess> server(new ServerProcess(std::move(options), std::move(dir)));
  FERRY_RETURN_IF_ERROR(server->Launch(0));
  return server;
}

ServerProcess::ServerProcess(ServerProcessOptions options, std::string dir)
    : options_(std::move(options)),
      dir_(std::move(dir)),
      ready_path_(dir_ + "/ready.json"),
      log_path_(options_.log_to_stderr ? "" : dir_ + "/ferry-server.log") {}

ServerProcess::~ServerProcess() {
  if (running()) (void)child_->Signal(SIGTERM, options_.stop_timeout);
  if (options_.print_log_tail_on_exit_if && options_.print_log_tail_on_exit_if()) {
    std::cerr << "ferry-server log (" << log_path_ << "), last lines:\n" << LogTail() << "\n";
  }
  child_.reset();
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

Status ServerProcess::Launch(int grpc_port) {
  std::error_code ec;
  fs::remove(ready_path_, ec);
  ChildOptions child;
  child.argv = {options_.binary, "--listen", absl::StrCat("127.0.0.1:", grpc_port), "--ready-file",
                ready_path_};
  const std::pair<const char*, const char*> defaults[] = {
      {"--admin-listen", "127.0.0.1:0"}, {"--store", "memory"}, {"--log-level", "info"}};
  for (const auto& [flag, value] : defaults) {
    if (!HasFlag(options_.extra_args, flag)) child.argv.insert(child.argv.end(), {flag, value});
  }
  child.argv.insert(child.argv.end(), options_.extra_args.begin(), options_.extra_args.end());
  child.log_file = log_path_;
  child.append_log = true;  // a restarted server's log follows the first one's
  child.death_signal = SIGKILL;
  FERRY_ASSIGN_OR_RETURN(child_, ChildProcess::Start(std::move(child)));
  StatusOr<nlohmann::json> ready =
      child_->WaitForReadyFile(ready_path_, "grpc_port", options_.ready_timeout);
  if (!ready.ok()) {
    child_.reset();  // kills it
    return ready.status();
  }
  grpc_port_ = (*ready)["grpc_port"].get<int>();
  admin_port_ = ready->value("admin_port", 0);
  return absl::OkStatus();
}

Status ServerProcess::Stop() {
  if (!running()) return absl::FailedPreconditionError("ferry-server is not running");
  return child_->Terminate(options_.stop_timeout);
}

void ServerProcess::Kill() {
  if (child_ != nullptr) child_->Kill();
}

Status ServerProcess::Restart() {
  if (running()) (void)child_->Signal(SIGTERM, options_.stop_timeout);
  return Launch(grpc_port_);
}

std::string ServerProcess::address() const { return absl::StrCat("127.0.0.1:", grpc_port_); }

std::string ServerProcess::LogTail(int lines) const {
  if (child_ == nullptr) return "  (not started)";
  return child_->LogTail(lines);
}

}  // namespace ferry::internal
