// The client side of control_plane_load: a simulated fleet of workers (publish, then heartbeat)
// and targets (list, then get) driving one or two ferry-server replicas on an open-loop
// schedule, with per-call failover between replicas, and the after-load record check.
#ifndef FERRY_BENCH_BENCH_LOAD_H_
#define FERRY_BENCH_BENCH_LOAD_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "bench_stats.h"
#include "ferry/status.h"
#include "model_express/p2p.pb.h"

struct redisContext;

namespace ferry::bench {

using Clock = std::chrono::steady_clock;

inline double Micros(Clock::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

struct LoadOptions {
  int64_t workers = 10000;  // worker i is rank i % 8 of source i / 8 (bench_population.h)
  int64_t targets = 100;
  absl::Duration duration = absl::Seconds(60);
  absl::Duration heartbeat_interval = absl::Seconds(10);
  absl::Duration target_interval = absl::Seconds(1);        // ListSources + GetMetadata per target
  absl::Duration ramp = absl::Seconds(10);                  // first publishes spread over [0, ramp)
  absl::Duration probe_interval = absl::Milliseconds(100);  // GetHealth during the load
  absl::Duration rpc_deadline = absl::Seconds(5);
  int threads = 4;  // client threads; each owns every threads-th worker and target
  uint64_t seed = 1;
};

// One RPC type's figures over the load. Latencies and lags in microseconds.
struct RpcResult {
  std::string name;
  int64_t calls = 0;   // attempts, failed ones included
  int64_t errors = 0;  // non-OK status, or a wrong answer
  int64_t errors_in_window = 0;
  Summary latency;  // successful calls
  Summary lag;      // how late successful calls started against their slot
  // Lag + latency: when the answer came against when the call was due; what an independent
  // client would see where this one queued calls behind a slow one (coordinated omission).
  Summary from_slot;
  Summary before_kill, after_failover;                 // latency of successful calls in those spans
  std::vector<std::pair<std::string, int64_t>> extra;  // RPC-specific counters
  struct Slow {
    double start_s;  // since the start of the load
    double latency_us;
    std::string replica;
  };
  std::vector<Slow> slowest;  // the 3 slowest successful calls, slowest first
};

struct LoadResults {
  std::vector<RpcResult> rpcs;
  int64_t not_found = 0;    // heartbeats answered "not found"
  int64_t republishes = 0;  // publishes after such a heartbeat
  int64_t failovers = 0;    // clients that switched replica after a failed call
  int64_t errors_in_window = 0, errors_outside_window = 0;
  std::optional<double> all_ready_s;          // when the last worker became READY
  std::optional<double> last_window_error_s;  // the last failover-window error, after the kill
  std::vector<std::string> sample_errors;     // the first few errors, for the log
  std::vector<Summary> heartbeat_by_second;   // [s]: heartbeats that started in second s
};

// What the surviving replica holds after the load.
struct Verdict {
  int64_t present = 0;       // workers in ListSources() with no filter
  int64_t ready_listed = 0;  // workers in ListSources(their identity, READY)
  std::string through;       // the replica asked: "A" or "B"
};

// A raw Redis connection for the PING baseline. Thread-compatible.
class RedisPinger {
 public:
  static StatusOr<std::unique_ptr<RedisPinger>> Connect(int port);
  ~RedisPinger();
  RedisPinger(const RedisPinger&) = delete;
  RedisPinger& operator=(const RedisPinger&) = delete;

  Status Ping();

 private:
  explicit RedisPinger(redisContext* context) : context_(context) {}
  redisContext* context_;
};

// The simulated fleet. Thread-compatible: one controlling thread calls Connect, then
// HealthBaseline, Start, Join, Results and Verify, in that order; Start runs the client threads
// until the duration ends and Join waits for them.
class Load {
 public:
  // `addresses`: the replicas, A first. Client i starts on replica i % addresses.size().
  Load(const LoadOptions& options, std::vector<std::string> addresses);
  ~Load();  // joins the client threads
  Load(const Load&) = delete;
  Load& operator=(const Load&) = delete;

  // Opens every thread's channels and waits (10 s at most) until each replica answers.
  Status Connect();
  // `calls` sequential GetHealth calls on `replica` (after 200 unmeasured), in microseconds.
  StatusOr<Summary> HealthBaseline(int replica, int calls);
  // Starts the client threads; the schedule begins at `t0`.
  void Start(Clock::time_point t0);
  void Join();

  // The figures. With `killed` (a replica index), errors from that replica that ended within
  // `window` after `kill_time` are failover-window errors; every other error is outside it.
  LoadResults Results(std::optional<int> killed, Clock::time_point kill_time,
                      absl::Duration window) const;
  // Asks `replica` for every worker: ListSources() once, ListSources(identity, READY) per source.
  StatusOr<Verdict> Verify(int replica);

 private:
  class Client;
  struct Worker {
    std::string source_id;  // mx_source_id from its last successful publish
    uint8_t replica = 0;    // the replica it talks to
    bool published = false;
    bool ready = false;  // a heartbeat has succeeded
  };

  int64_t sources() const { return static_cast<int64_t>(identities_.size()); }
  void MarkReady();

  const LoadOptions options_;
  const std::vector<std::string> addresses_;
  std::vector<::model_express::p2p::SourceIdentity> identities_;  // source k
  std::vector<std::string> worker_ids_;
  std::vector<Worker> workers_;  // worker w is touched only by client w % threads
  std::vector<std::unique_ptr<Client>> clients_;
  std::vector<std::thread> threads_;
  Clock::time_point t0_;
  std::atomic<int64_t> ready_{0};          // workers with a successful heartbeat
  std::atomic<int64_t> all_ready_ns_{-1};  // since t0_, when ready_ reached workers
};

}  // namespace ferry::bench

#endif  // FERRY_BENCH_BENCH_LOAD_H_
