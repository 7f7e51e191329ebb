// control_plane_load: ferry-server under a fleet's steady load, through the generated
// model_express stubs, against real ferry-server child processes with the memory store or a
// real redis-server (started here on a loopback port).
//
// Workloads, all running at once on an open-loop schedule for --duration (each call has a
// slot; a call that starts late is counted as schedule lag, never skipped):
//   publish              each of --workers simulated workers publishes once (P2P mode, endpoints
//                        only, as bench_population.h), at a random moment of the first --ramp
//   heartbeat            UpdateStatus(READY) right after that publish (the first tick), then
//                        every --heartbeat-interval. A heartbeat answered "not found" means the
//                        server lost the record: the worker re-publishes (counted; fails the run)
//   list_identity_ready  each of --targets targets, every --target-interval:
//                        ListSources(identity of a random source, status_filter=READY); once
//                        every worker is READY, a listing must hold all 8 ranks
//   get_metadata         then GetMetadata of one listed worker, picked at random
//   health               GetHealth every --probe-interval on the same server (the load-time
//                        twin of the idle baseline)
//
// Baselines, measured on the same server just before the load: health_idle (sequential
// GetHealth, which also pings the store) and, with Redis, redis_ping (a raw PING on one
// hiredis connection). Every latency is also given as a ratio to health_idle.
//
// Fault run (--replicas 2, Redis only): two ferry-server replicas share one Redis; workers and
// targets alternate between them. At --kill-replica-at replica A gets SIGKILL; a client whose
// call fails with UNAVAILABLE or DEADLINE_EXCEEDED switches to the other replica and retries at
// once. Errors count as "in the failover window" only if they came from A, ending between the
// kill and one client interval + --failover-grace after it.
//
// After the load, through the surviving replica: ListSources() must hold every worker, and
// ListSources(identity, READY) of every source must list all of them (records lost = missing).
//
// Measured: per RPC count, errors, p50/p99/max latency, calls/s, schedule lag (how late a call
// started against its slot: a saturated or stalled client thread shows here) and "from slot"
// (lag + latency: when an independent client would have had its answer); CPU (utime + stime over
// the window, % of one core) and VmRSS/VmHWM of each ferry-server, of redis-server and of this
// client; the machine's busy and steal time, and what other processes used. --timeline adds one
// line per second (heartbeat latency, CPU of each process).
//
// Output: one JSON object per line on stdout per measurement, a table on stderr. Exit status 1
// if a check fails: an error outside the failover window, a record lost, a "not found" heartbeat.
//
//   control_plane_load [--store memory,redis] [--workers 10000] [--targets 100] [--duration 60s]
//                      [--heartbeat-interval 10s] [--target-interval 1s] [--replicas 1|2]
//                      [--kill-replica-at 30s] [--threads 4] [--server-bin PATH] [--smoke]

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "bench_load.h"
#include "bench_server.h"
#include "bench_stats.h"
#include "ferry/status.h"
#include "nlohmann/json.hpp"
#include "store/testing/redis_server.h"

namespace ferry::bench {
namespace {

struct Options {
  std::vector<std::string> stores = {"memory"};  // each runs in turn: memory, redis
  int replicas = 1;
  absl::Duration failover_grace = absl::Seconds(2);
  absl::Duration server_heartbeat_timeout;  // zero: 3 heartbeat intervals
  absl::Duration reaper_scan_interval;      // zero: one heartbeat interval
  int baseline_calls = 2000;
  std::string server_bin;
  bool smoke = false;
  bool timeline = false;  // also one JSON line per second
  LoadOptions load;
};

absl::Duration Between(Clock::time_point a, Clock::time_point b) { return absl::FromChrono(b - a); }

double Ms(double us) { return us / 1000.0; }

// ---- baselines --------------------------------------------------------------------------------

// `calls` sequential PINGs on one connection to Redis on 127.0.0.1:`port`, in microseconds.
StatusOr<Summary> RedisPing(int port, int calls) {
  FERRY_ASSIGN_OR_RETURN(auto redis, RedisPinger::Connect(port));
  std::vector<double> us;
  for (int i = 0; i < calls + 100; ++i) {
    auto begin = Clock::now();
    FERRY_RETURN_IF_ERROR(redis->Ping());
    if (i >= 100) us.push_back(Micros(Clock::now() - begin));
  }
  return Summarize(us);
}

// ---- CPU and memory ---------------------------------------------------------------------------

// One reading of every watched process and of the machine.
struct Snapshot {
  Clock::time_point at;
  std::vector<std::optional<double>> cpu;  // per watched process, seconds
  std::vector<std::optional<std::pair<int64_t, int64_t>>> rss;
  std::optional<MachineCpu> machine;
};

struct Watched {
  std::string name;
  int pid;
};

Snapshot Take(const std::vector<Watched>& procs) {
  Snapshot s;
  s.at = Clock::now();
  for (const Watched& p : procs) {
    s.cpu.push_back(ReadCpuSeconds(p.pid));
    s.rss.push_back(ReadRss(p.pid));
  }
  s.machine = ReadMachineCpu();
  return s;
}

// CPU of process `i` between two snapshots, as % of one core; nullopt if either is missing.
std::optional<double> CpuPct(const Snapshot& a, const Snapshot& b, size_t i) {
  if (!a.cpu[i] || !b.cpu[i] || b.at <= a.at) return std::nullopt;
  return 100.0 * (*b.cpu[i] - *a.cpu[i]) / std::chrono::duration<double>(b.at - a.at).count();
}

// ---- one configuration ------------------------------------------------------------------------

struct Config {
  std::string store;  // "memory" or "redis"
  int replicas = 1;
  std::optional<absl::Duration> kill_at;
};

std::string Describe(const Config& c) {
  std::string s =
      absl::StrCat(c.store, ", ", c.replicas, c.replicas == 1 ? " replica" : " replicas");
  if (c.kill_at) {
    absl::StrAppend(&s, ", kill -9 of replica A at ", absl::FormatDuration(*c.kill_at));
  }
  return s;
}

class ConfigRun {
 public:
  ConfigRun(const Options& options, Config config)
      : options_(options), config_(std::move(config)) {}

  // Runs the configuration, prints its figures; OK if every check passed.
  Status Run() {
    FERRY_RETURN_IF_ERROR(StartServers());
    std::cerr << "control_plane_load: " << Describe(config_) << "; " << options_.load.workers
              << " workers, " << options_.load.targets << " targets, "
              << absl::FormatDuration(options_.load.duration) << "\n";
    std::optional<int> killed = config_.kill_at ? std::optional<int>(0) : std::nullopt;
    LoadResults results;
    StatusOr<Verdict> verdict;
    {
      Load load(options_.load, addresses_);
      FERRY_RETURN_IF_ERROR(load.Connect());
      FERRY_ASSIGN_OR_RETURN(base_, load.HealthBaseline(0, options_.baseline_calls));
      if (redis_ != nullptr) {
        FERRY_ASSIGN_OR_RETURN(redis_ping_, RedisPing(redis_->port(), options_.baseline_calls));
      }
      RunLoad(load);
      results = load.Results(killed, kill_time_, FailoverWindow());
      verdict = load.Verify(killed ? 1 : 0);
    }  // closes the client channels, so that SIGTERM need not wait for them
    Report(results, verdict);
    // A clean shutdown is part of the contract: SIGTERM exits 0 under a populated store.
    for (auto& server : servers_) {
      if (server->running()) FERRY_RETURN_IF_ERROR(server->Stop());
    }
    FERRY_RETURN_IF_ERROR(verdict.status());
    return Check(results, *verdict);
  }

 private:
  Status StartServers() {
    ServerProcessOptions server;
    server.binary = options_.server_bin;
    if (config_.store == "redis") {
      FERRY_ASSIGN_OR_RETURN(redis_, testing::RedisServer::Start());
      server.store = redis_->url();
    }
    const absl::Duration interval = options_.load.heartbeat_interval;
    absl::Duration timeout = options_.server_heartbeat_timeout;
    if (timeout == absl::ZeroDuration()) timeout = 3 * interval;
    absl::Duration scan = options_.reaper_scan_interval;
    if (scan == absl::ZeroDuration()) scan = interval;
    server.heartbeat_timeout = absl::FormatDuration(timeout);
    server.reaper_scan_interval = absl::FormatDuration(scan);
    server.gc_timeout = "3600s";
    for (int r = 0; r < config_.replicas; ++r) {
      FERRY_ASSIGN_OR_RETURN(auto process, StartServer(server));
      addresses_.push_back(process->address());
      watched_.push_back({absl::StrCat("ferry-server ", std::string(1, static_cast<char>('A' + r))),
                          process->pid()});
      servers_.push_back(std::move(process));
    }
    if (redis_ != nullptr) watched_.push_back({"redis-server", static_cast<int>(redis_->pid())});
    watched_.push_back({"client (this process)", static_cast<int>(getpid())});
    return absl::OkStatus();
  }

  absl::Duration FailoverWindow() const {
    const LoadOptions& l = options_.load;
    return std::max({l.heartbeat_interval, l.target_interval, l.probe_interval}) +
           options_.failover_grace;
  }

  // Runs the load; snapshots CPU/RSS at its start, at the end of the ramp, just before the
  // kill, and at its end.
  void RunLoad(Load& load) {
    const LoadOptions& l = options_.load;
    const Clock::time_point t0 = Clock::now() + std::chrono::milliseconds(100);
    load.Start(t0);
    std::this_thread::sleep_until(t0);
    start_ = Take(watched_);
    enum What { kTick, kRampEnd, kKill };
    struct Mark {
      absl::Duration at;
      What what;
    };
    std::vector<Mark> marks = {{std::min(l.ramp, l.duration), kRampEnd}};
    if (config_.kill_at) marks.push_back({*config_.kill_at, kKill});
    for (absl::Duration at = absl::Seconds(1); at < l.duration; at += absl::Seconds(1)) {
      marks.push_back({at, kTick});
    }
    std::stable_sort(marks.begin(), marks.end(),
                     [](const Mark& a, const Mark& b) { return a.at < b.at; });
    ticks_ = {start_};
    for (const Mark& m : marks) {
      std::this_thread::sleep_until(t0 + absl::ToChronoNanoseconds(m.at));
      if (m.what == kTick) {
        ticks_.push_back(Take(watched_));
      } else if (m.what == kRampEnd) {
        ramp_end_ = Take(watched_);
      } else {
        before_kill_ = Take(watched_);
        kill_time_ = Clock::now();  // before the signal: every error it causes ends later
        servers_[0]->Kill();
        std::cerr << "control_plane_load: SIGKILL replica A at +"
                  << absl::FormatDuration(Between(t0, kill_time_)) << "\n";
      }
    }
    std::this_thread::sleep_until(t0 + absl::ToChronoNanoseconds(l.duration));
    end_ = Take(watched_);
    ticks_.push_back(end_);
    load.Join();
  }

  nlohmann::json Line() const {
    return {{"bench", "control_plane_load"},
            {"store", config_.store},
            {"replicas", config_.replicas},
            {"workers", options_.load.workers},
            {"targets", options_.load.targets},
            {"duration_s", absl::ToDoubleSeconds(options_.load.duration)},
            {"heartbeat_interval_s", absl::ToDoubleSeconds(options_.load.heartbeat_interval)},
            {"target_interval_s", absl::ToDoubleSeconds(options_.load.target_interval)},
            {"threads", options_.load.threads}};
  }

  static void Emit(const nlohmann::json& line) { std::cout << line.dump() << std::endl; }

  void Report(const LoadResults& results, const StatusOr<Verdict>& verdict) {
    char row[256];
    std::string table;
    auto baseline = [&](const char* name, const Summary& s) {
      auto line = Line();
      line["rpc"] = name;
      line["calls"] = s.count;
      line["p50_us"] = s.p50;
      line["p99_us"] = s.p99;
      line["max_us"] = s.max;
      line["mean_us"] = s.mean;
      Emit(line);
    };
    if (options_.timeline) EmitTimeline(results);
    baseline("health_idle", base_);
    if (redis_ != nullptr) baseline("redis_ping", redis_ping_);

    std::snprintf(row, sizeof(row), "%-20s %8s %6s %7s %7s %8s %8s %8s %8s %8s %9s\n", "rpc",
                  "calls", "errors", "p50_ms", "p99_ms", "max_ms", "p50/base", "p99/base",
                  "calls/s", "lag99_ms", "slot99_ms");
    table += row;
    for (const RpcResult& r : results.rpcs) {
      auto line = Line();
      line["rpc"] = r.name;
      line["calls"] = r.calls;
      line["errors"] = r.errors;
      line["p50_us"] = r.latency.p50;
      line["p99_us"] = r.latency.p99;
      line["max_us"] = r.latency.max;
      line["mean_us"] = r.latency.mean;
      line["calls_per_s"] = r.calls / absl::ToDoubleSeconds(options_.load.duration);
      line["lag_p50_us"] = r.lag.p50;
      line["lag_p99_us"] = r.lag.p99;
      line["lag_max_us"] = r.lag.max;
      line["from_slot_p50_us"] = r.from_slot.p50;
      line["from_slot_p99_us"] = r.from_slot.p99;
      line["from_slot_max_us"] = r.from_slot.max;
      line["baseline"] = "health_idle";
      line["baseline_p50_us"] = base_.p50;
      line["baseline_p99_us"] = base_.p99;
      line["p50_vs_baseline"] = r.latency.p50 / base_.p50;
      line["p99_vs_baseline"] = r.latency.p99 / base_.p99;
      if (redis_ != nullptr) {
        line["redis_ping_p50_us"] = redis_ping_.p50;
        line["redis_ping_p99_us"] = redis_ping_.p99;
      }
      if (config_.kill_at) {
        line["p99_us_before_kill"] = r.before_kill.p99;
        line["p99_us_after_failover"] = r.after_failover.p99;
        line["errors_in_failover_window"] = r.errors_in_window;
      }
      for (const auto& [key, value] : r.extra) line[key] = value;
      for (const auto& slow : r.slowest) {
        line["slowest"].push_back({{"start_s", slow.start_s},
                                   {"latency_us", slow.latency_us},
                                   {"replica", slow.replica}});
      }
      Emit(line);
      std::snprintf(
          row, sizeof(row), "%-20s %8lld %6lld %7.2f %7.2f %8.2f %8.2f %8.2f %8.0f %8.2f %9.2f\n",
          r.name.c_str(), static_cast<long long>(r.calls), static_cast<long long>(r.errors),
          Ms(r.latency.p50), Ms(r.latency.p99), Ms(r.latency.max), r.latency.p50 / base_.p50,
          r.latency.p99 / base_.p99, r.calls / absl::ToDoubleSeconds(options_.load.duration),
          Ms(r.lag.p99), Ms(r.from_slot.p99));
      table += row;
    }
    std::snprintf(row, sizeof(row),
                  "baseline health_idle p50 %.3f ms p99 %.3f ms (%lld sequential calls)",
                  Ms(base_.p50), Ms(base_.p99), static_cast<long long>(base_.count));
    table += row;
    if (redis_ != nullptr) {
      std::snprintf(row, sizeof(row), "; redis PING p50 %.3f ms p99 %.3f ms", Ms(redis_ping_.p50),
                    Ms(redis_ping_.p99));
      table += row;
    }
    table += "\n";

    // Processes: whole window, and after the ramp (steady state); a killed replica until the kill.
    std::snprintf(row, sizeof(row), "%-22s %7s %11s %12s %8s %9s\n", "process", "cpu%",
                  "cpu% steady", "cpu% post-kill", "rss_MiB", "peak_MiB");
    table += row;
    for (size_t i = 0; i < watched_.size(); ++i) {
      const bool killed = config_.kill_at && i == 0;
      const Snapshot& last = killed ? *before_kill_ : end_;
      auto whole = CpuPct(start_, last, i);
      auto steady =
          ramp_end_ && ramp_end_->at < last.at ? CpuPct(*ramp_end_, last, i) : std::nullopt;
      auto post_kill = before_kill_ && !killed ? CpuPct(*before_kill_, end_, i) : std::nullopt;
      auto line = Line();
      line["process"] = watched_[i].name;
      if (whole) line["cpu_pct"] = *whole;
      if (steady) line["cpu_pct_steady"] = *steady;
      if (post_kill) line["cpu_pct_after_kill"] = *post_kill;
      if (last.rss[i]) {
        line["rss_bytes"] = last.rss[i]->first;
        line["hwm_bytes"] = last.rss[i]->second;
      }
      if (killed) line["killed"] = true;
      Emit(line);
      auto pct = [](std::optional<double> v) {
        return v ? absl::StrCat(static_cast<int>(*v + 0.5)) : std::string("-");
      };
      std::snprintf(row, sizeof(row), "%-22s %7s %11s %12s %8.1f %9.1f\n", watched_[i].name.c_str(),
                    pct(whole).c_str(), pct(steady).c_str(), pct(post_kill).c_str(),
                    last.rss[i] ? last.rss[i]->first / 1048576.0 : 0.0,
                    last.rss[i] ? last.rss[i]->second / 1048576.0 : 0.0);
      table += row;
    }
    if (start_.machine && end_.machine && end_.machine->total > start_.machine->total) {
      // In % of one core, like the processes; "other" is what no watched process used (other
      // work on the machine, and the kernel's share not charged to a process).
      const double wall = std::chrono::duration<double>(end_.at - start_.at).count();
      const double busy = 100.0 * (end_.machine->busy - start_.machine->busy) / wall;
      const double steal = 100.0 * (end_.machine->steal - start_.machine->steal) / wall;
      double watched = 0;
      for (size_t i = 0; i < watched_.size(); ++i) {
        const Snapshot& last = config_.kill_at && i == 0 ? *before_kill_ : end_;
        if (start_.cpu[i] && last.cpu[i]) watched += *last.cpu[i] - *start_.cpu[i];
      }
      const double other = busy - 100.0 * watched / wall;
      const unsigned cpus = std::thread::hardware_concurrency();
      auto line = Line();
      line["process"] = "machine";
      line["cpus"] = cpus;
      line["busy_pct"] = busy;
      line["steal_pct"] = steal;
      line["other_pct"] = other;
      Emit(line);
      std::snprintf(row, sizeof(row),
                    "machine: %u CPUs = %u%%; busy %.0f%%, of which other processes %.0f%%; "
                    "steal %.1f%% (all in %% of one core)\n",
                    cpus, cpus * 100, busy, other, steal);
      table += row;
    }

    auto line = Line();
    line["check"] = "records";
    line["expected"] = options_.load.workers;
    line["heartbeats_not_found"] = results.not_found;
    line["republishes"] = results.republishes;
    line["errors_outside_failover_window"] = results.errors_outside_window;
    line["errors_in_failover_window"] = results.errors_in_window;
    line["failovers"] = results.failovers;
    if (results.all_ready_s) line["all_ready_s"] = *results.all_ready_s;
    if (config_.kill_at) {
      line["failover_window_s"] = absl::ToDoubleSeconds(FailoverWindow());
      if (results.last_window_error_s)
        line["last_failover_error_after_kill_s"] = *results.last_window_error_s;
    }
    if (verdict.ok()) {
      line["present"] = verdict->present;
      line["ready_listed"] = verdict->ready_listed;
      line["lost"] = options_.load.workers - verdict->present;
      line["verified_through"] = verdict->through;
    } else {
      line["verify_error"] = std::string(verdict.status().message());
    }
    line["ok"] = verdict.ok() && Check(results, *verdict).ok();
    Emit(line);
    if (verdict.ok()) {
      std::snprintf(row, sizeof(row),
                    "records: %lld of %lld present, %lld READY-listed through replica %s; "
                    "not-found heartbeats %lld\n",
                    static_cast<long long>(verdict->present),
                    static_cast<long long>(options_.load.workers),
                    static_cast<long long>(verdict->ready_listed), verdict->through.c_str(),
                    static_cast<long long>(results.not_found));
      table += row;
    }
    std::snprintf(row, sizeof(row), "errors: %lld outside the failover window, %lld inside",
                  static_cast<long long>(results.errors_outside_window),
                  static_cast<long long>(results.errors_in_window));
    table += row;
    if (results.last_window_error_s) {
      std::snprintf(row, sizeof(row), " (last %.2f s after the kill; %lld failovers)",
                    *results.last_window_error_s, static_cast<long long>(results.failovers));
      table += row;
    }
    table += "\n";
    for (const std::string& e : results.sample_errors) table += "  error: " + e + "\n";
    std::cerr << table;
  }

  // One line per second: heartbeat latency and each process's CPU in that second, and what
  // other processes on the machine used (to tell the server's spikes from a neighbour's).
  void EmitTimeline(const LoadResults& results) const {
    for (size_t s = 0; s + 1 < ticks_.size(); ++s) {
      const Snapshot& a = ticks_[s];
      const Snapshot& b = ticks_[s + 1];
      auto line = Line();
      line["second"] = s;
      if (s < results.heartbeat_by_second.size()) {
        const Summary& h = results.heartbeat_by_second[s];
        line["heartbeat_calls"] = h.count;
        line["heartbeat_p50_us"] = h.p50;
        line["heartbeat_p99_us"] = h.p99;
        line["heartbeat_max_us"] = h.max;
      }
      const double wall = std::chrono::duration<double>(b.at - a.at).count();
      double watched = 0;
      for (size_t i = 0; i < watched_.size(); ++i) {
        if (auto pct = CpuPct(a, b, i)) {
          line["cpu_pct"][watched_[i].name] = *pct;
          watched += *pct;
        }
      }
      if (a.machine && b.machine) {
        line["busy_pct"] = 100.0 * (b.machine->busy - a.machine->busy) / wall;
        line["other_pct"] = 100.0 * (b.machine->busy - a.machine->busy) / wall - watched;
      }
      Emit(line);
    }
  }

  Status Check(const LoadResults& results, const Verdict& verdict) const {
    std::vector<std::string> failed;
    if (results.errors_outside_window > 0) {
      failed.push_back(
          absl::StrCat(results.errors_outside_window, " errors outside the failover window"));
    }
    if (verdict.present != options_.load.workers) {
      failed.push_back(absl::StrCat(options_.load.workers - verdict.present, " records lost"));
    }
    if (verdict.ready_listed != options_.load.workers) {
      failed.push_back(
          absl::StrCat(options_.load.workers - verdict.ready_listed, " workers not listed READY"));
    }
    if (results.not_found > 0) {
      failed.push_back(absl::StrCat(results.not_found, " heartbeats answered not found"));
    }
    if (failed.empty()) return absl::OkStatus();
    std::string all;
    for (const auto& f : failed) absl::StrAppend(&all, all.empty() ? "" : "; ", f);
    return absl::InternalError(absl::StrCat(Describe(config_), ": ", all));
  }

  const Options& options_;
  const Config config_;
  std::unique_ptr<testing::RedisServer> redis_;
  std::vector<std::unique_ptr<ServerProcess>> servers_;
  std::vector<std::string> addresses_;
  std::vector<Watched> watched_;
  Summary base_, redis_ping_;
  Snapshot start_, end_;
  std::optional<Snapshot> ramp_end_, before_kill_;
  std::vector<Snapshot> ticks_;  // start_, then every second, then end_
  Clock::time_point kill_time_;
};

int Main(const Options& options, const std::vector<Config>& configs) {
  int failures = 0;
  for (const Config& config : configs) {
    ConfigRun run(options, config);
    Status s = run.Run();
    if (!s.ok()) {
      std::cerr << "control_plane_load: FAILED: " << s << "\n";
      ++failures;
    }
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace ferry::bench

namespace {

// Adds a duration flag ("60s", "500ms", "1m"), parsed with absl::ParseDuration.
CLI::Option* AddDuration(CLI::App& app, const std::string& name, absl::Duration* out,
                         const std::string& help) {
  return app.add_option_function<std::string>(
      name,
      [name, out](const std::string& text) {
        if (!absl::ParseDuration(text, out) || *out < absl::ZeroDuration()) {
          throw CLI::ValidationError(name, "'" + text + "' is not a duration such as 10s or 500ms");
        }
      },
      help);
}

}  // namespace

int main(int argc, char** argv) {
  using ferry::bench::Options;
  Options options;
  ferry::bench::LoadOptions& load = options.load;
  CLI::App app{
      "ferry-server under a fleet's load: heartbeats, listings, failover (see file header)"};
  app.add_option("--store", options.stores, "memory, redis, or both comma-separated (memory)")
      ->delimiter(',')
      ->check(CLI::IsMember({"memory", "redis"}));
  app.add_option("--workers", load.workers, "simulated workers (10000)")
      ->check(CLI::PositiveNumber);
  app.add_option("--targets", load.targets, "simulated targets (100)")->check(CLI::PositiveNumber);
  AddDuration(app, "--duration", &load.duration, "length of the load (60s)");
  AddDuration(app, "--heartbeat-interval", &load.heartbeat_interval,
              "each worker's UpdateStatus period (10s: 6 beats a minute)");
  AddDuration(app, "--target-interval", &load.target_interval,
              "each target's ListSources + GetMetadata period (1s)");
  auto* ramp =
      AddDuration(app, "--ramp", &load.ramp,
                  "workers publish at random moments of this first span (heartbeat interval)");
  AddDuration(app, "--probe-interval", &load.probe_interval, "GetHealth probe period (100ms)");
  AddDuration(app, "--rpc-deadline", &load.rpc_deadline, "deadline of every call (5s)");
  app.add_option("--replicas", options.replicas, "ferry-server replicas (2 needs --store redis)")
      ->check(CLI::Range(1, 2));
  absl::Duration kill_at;
  auto* kill = AddDuration(app, "--kill-replica-at", &kill_at,
                           "with --replicas 2: SIGKILL replica A this long into the load "
                           "(default: half the duration; 0s: never)");
  AddDuration(app, "--failover-grace", &options.failover_grace,
              "failover window = kill + longest client interval + this (2s)");
  AddDuration(app, "--server-heartbeat-timeout", &options.server_heartbeat_timeout,
              "ferry-server --heartbeat-timeout (3 heartbeat intervals)");
  AddDuration(app, "--reaper-scan-interval", &options.reaper_scan_interval,
              "ferry-server --reaper-scan-interval (one heartbeat interval)");
  app.add_option("--threads", load.threads, "client threads (4)")->check(CLI::Range(1, 64));
  app.add_option("--baseline-calls", options.baseline_calls, "idle GetHealth / PING calls (2000)")
      ->check(CLI::PositiveNumber);
  app.add_option("--seed", load.seed, "random seed of the schedule (1)");
  app.add_option("--server-bin", options.server_bin, "ferry-server binary to start");
  app.add_flag("--timeline", options.timeline,
               "also print one JSON line per second (heartbeat latency, CPU of each process)");
  app.add_flag("--smoke", options.smoke,
               "200 workers, 5 targets, 3 s: memory, then redis with 2 replicas and a kill");
  CLI11_PARSE(app, argc, argv);

  if (options.smoke) {
    options.stores = {"memory", "redis"};
    load.workers = 200;
    load.targets = 5;
    load.duration = absl::Seconds(3);
    load.heartbeat_interval = absl::Seconds(1);
    load.target_interval = absl::Milliseconds(200);
    load.ramp = absl::Milliseconds(500);
    options.server_heartbeat_timeout = absl::Seconds(30);  // a slow CI machine must not expire
    options.baseline_calls = 200;
    kill_at = absl::Milliseconds(1500);
  }
  if (ramp->count() == 0 && !options.smoke) load.ramp = load.heartbeat_interval;
  if (load.heartbeat_interval <= absl::ZeroDuration() ||
      load.target_interval <= absl::ZeroDuration() || load.probe_interval <= absl::ZeroDuration() ||
      load.duration <= absl::ZeroDuration()) {
    std::cerr << "control_plane_load: --duration and the intervals must be positive\n";
    return 2;
  }
  std::vector<ferry::bench::Config> configs;
  for (const std::string& store : options.stores) {
    ferry::bench::Config c;
    c.store = store;
    c.replicas = options.smoke ? (store == "redis" ? 2 : 1) : options.replicas;
    if (c.replicas == 2 && store != "redis") {
      std::cerr << "control_plane_load: --replicas 2 needs --store redis: replicas share records "
                   "only through Redis (each memory store is private to its process)\n";
      return 2;
    }
    if (c.replicas == 2) {
      absl::Duration at = (kill->count() > 0 || options.smoke) ? kill_at : load.duration / 2;
      if (at > absl::ZeroDuration()) c.kill_at = std::min(at, load.duration);
    }
    configs.push_back(c);
  }
  if (options.server_bin.empty()) {
    options.server_bin =
        (std::filesystem::read_symlink("/proc/self/exe").parent_path() / "ferry-server").string();
  }
  return ferry::bench::Main(options, configs);
}
