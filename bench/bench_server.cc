#include "bench_server.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace ferry::bench {

using Clock = std::chrono::steady_clock;

StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Create(
    const ServerProcessOptions& options) {
  const std::string& binary = options.binary;
  char dir_template[] = "/tmp/ferry-bench-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp: ", strerror(errno)));
  }
  std::string dir = dir_template;
  std::string ready = dir + "/ready.json";
  std::vector<std::string> args = {binary,
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--admin-listen",
                                   "127.0.0.1:0",
                                   "--ready-file",
                                   ready,
                                   "--store",
                                   options.store,
                                   "--log-level",
                                   "warn",
                                   "--heartbeat-timeout",
                                   options.heartbeat_timeout,
                                   "--gc-timeout",
                                   options.gc_timeout,
                                   "--reaper-scan-interval",
                                   options.reaper_scan_interval,
                                   "--max-message-size",
                                   options.max_message_size};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The server's stdout joins our stderr: stdout carries only the JSON lines.
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, STDERR_FILENO, STDOUT_FILENO);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    return absl::FailedPreconditionError(absl::StrCat("cannot start ", binary, ": ", strerror(rc),
                                                      "; build target ferry-server or pass "
                                                      "--server-bin / --server"));
  }
  auto server = std::unique_ptr<ServerProcess>(new ServerProcess(pid, dir));
  auto deadline = Clock::now() + std::chrono::seconds(20);
  while (Clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      server->pid_ = 0;
      return absl::InternalError(
          absl::StrCat(binary, " exited (status ", status, ") before writing ", ready));
    }
    std::ifstream in(ready);
    auto ports = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (ports.is_object() && ports.value("grpc_port", 0) > 0) {
      server->address_ = absl::StrCat("127.0.0.1:", ports["grpc_port"].get<int>());
      server->admin_port_ = ports.value("admin_port", 0);
      return server;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::DeadlineExceededError(
      absl::StrCat(binary, " wrote no ready file ", ready, " within 20 s"));
}

ServerProcess::~ServerProcess() {
  Kill();
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

Status ServerProcess::Stop() {
  kill(pid_, SIGTERM);
  auto deadline = Clock::now() + std::chrono::seconds(10);
  int status = 0;
  while (waitpid(pid_, &status, WNOHANG) == 0) {
    if (Clock::now() > deadline) {
      return absl::DeadlineExceededError("ferry-server ignored SIGTERM for 10 s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  pid_ = 0;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(
        absl::StrCat("ferry-server did not exit cleanly on SIGTERM (wait status ", status, ")"));
  }
  return absl::OkStatus();
}

void ServerProcess::Kill() {
  if (pid_ == 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = 0;
}

std::optional<std::pair<int64_t, int64_t>> ReadRss(int pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  int64_t rss = -1, hwm = -1;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) rss = std::atoll(line.c_str() + 6) * 1024;
    if (line.rfind("VmHWM:", 0) == 0) hwm = std::atoll(line.c_str() + 6) * 1024;
  }
  if (rss < 0 || hwm < 0) return std::nullopt;
  return std::make_pair(rss, hwm);
}

std::optional<double> ReadCpuSeconds(int pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The command name (field 2) is in parentheses and may hold spaces; count from after it.
  size_t paren = text.rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream fields(text.substr(paren + 2));
  std::string field;
  // Fields 3..13 come first; utime and stime are fields 14 and 15.
  for (int i = 3; i <= 13 && (fields >> field); ++i) {
  }
  unsigned long long utime = 0, stime = 0;
  if (!(fields >> utime >> stime)) return std::nullopt;
  return static_cast<double>(utime + stime) / sysconf(_SC_CLK_TCK);
}

std::optional<MachineCpu> ReadMachineCpu() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  // cpu  user nice system idle iowait irq softirq steal guest guest_nice (guest time is
  // already inside user and nice).
  unsigned long long v[8] = {};
  if (!(in >> cpu) || cpu != "cpu") return std::nullopt;
  for (auto& x : v) {
    if (!(in >> x)) return std::nullopt;
  }
  const double tick = sysconf(_SC_CLK_TCK);
  MachineCpu m;
  m.busy = (v[0] + v[1] + v[2] + v[5] + v[6]) / tick;
  m.steal = v[7] / tick;
  m.total = (v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7]) / tick;
  return m;
}

}  // namespace ferry::bench
