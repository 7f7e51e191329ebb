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

StatusOr<std::unique_ptr<ServerProcess>> StartServer(const ServerProcessOptions& options) {
  internal::ServerProcessOptions o;
  o.binary = options.binary;
  o.extra_args = {"--store",
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
  o.log_to_stderr = true;
  StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Create(std::move(o));
  if (!server.ok() && server.status().code() == absl::StatusCode::kFailedPrecondition) {
    return absl::FailedPreconditionError(absl::StrCat(
        server.status().message(), "; build target ferry-server or pass --server-bin / --server"));
  }
  return server;
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
