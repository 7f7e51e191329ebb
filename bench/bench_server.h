// Shared by the bench/ programs: a ferry-server child process on loopback ports, and what
// /proc says about a process (CPU time, resident memory) and about the machine (busy time).
#ifndef FERRY_BENCH_BENCH_SERVER_H_
#define FERRY_BENCH_BENCH_SERVER_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "common/server_process.h"
#include "ferry/status.h"

namespace ferry::bench {

struct ServerProcessOptions {
  std::string binary;  // the ferry-server to run; required
  // --store: "memory" or redis://HOST:PORT/DB.
  std::string store = "memory";
  // Lifecycle flags, passed as given (ferry-server duration syntax: "90s", "500ms").
  // The defaults let nothing expire during a run while the reaper still scans at the upstream
  // default period, so its cost is part of what is measured.
  std::string heartbeat_timeout = "86400s";
  std::string gc_timeout = "86400s";
  std::string reaper_scan_interval = "30s";
  std::string max_message_size = "100MiB";
};

using ServerProcess = ::ferry::internal::ServerProcess;

// A ferry-server child (common/server_process.h) listening on 127.0.0.1 ports it picks itself,
// with `options` as flags and --log-level warn. Its output goes to our stderr, so a bench's
// stdout carries only its JSON lines. FailedPrecondition when the binary cannot be started (the
// message says what to build).
StatusOr<std::unique_ptr<ServerProcess>> StartServer(const ServerProcessOptions& options);

// VmRSS and VmHWM of `pid` in bytes; nullopt if unreadable.
std::optional<std::pair<int64_t, int64_t>> ReadRss(int pid);

// User + system CPU time of `pid` (every thread), in seconds, from /proc/PID/stat; nullopt if
// unreadable (the process is gone).
std::optional<double> ReadCpuSeconds(int pid);

// The machine's CPU time since boot, summed over all CPUs, from /proc/stat, in seconds.
struct MachineCpu {
  double busy = 0;   // user, nice, system, irq, softirq
  double steal = 0;  // time the hypervisor gave to someone else
  double total = 0;  // everything, idle and iowait included
};
std::optional<MachineCpu> ReadMachineCpu();

}  // namespace ferry::bench

#endif  // FERRY_BENCH_BENCH_SERVER_H_
