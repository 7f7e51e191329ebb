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

// A ferry-server child process listening on 127.0.0.1 ports it picks itself (--listen
// 127.0.0.1:0, read back from --ready-file). Its stdout goes to our stderr, so a bench's stdout
// carries only its JSON lines. The destructor SIGKILLs a child that is still running.
// Thread-compatible.
class ServerProcess {
 public:
  // Starts the server and waits (up to 20 s) until it has written its ports.
  // FailedPrecondition when the binary cannot be started (the message says what to build).
  static StatusOr<std::unique_ptr<ServerProcess>> Create(const ServerProcessOptions& options);

  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  const std::string& address() const { return address_; }  // 127.0.0.1:GRPC_PORT
  int admin_port() const { return admin_port_; }           // GET /metrics, /healthz
  pid_t pid() const { return pid_; }                       // 0 once stopped or killed
  bool running() const { return pid_ != 0; }

  // SIGTERM, then waits up to 10 s. OK only if the server exits with status 0.
  Status Stop();
  // SIGKILL (a crash: no draining), then reaps the process.
  void Kill();

 private:
  ServerProcess(pid_t pid, std::string dir) : pid_(pid), dir_(std::move(dir)) {}

  pid_t pid_;
  std::string dir_;
  std::string address_;
  int admin_port_ = 0;
};

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
