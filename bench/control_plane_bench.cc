// control_plane_bench: latency and throughput of ferry-server's P2P control plane, through the
// generated model_express stubs (the wire a ModelExpress client uses), against a real
// ferry-server child process with the memory store.
//
// For each population size N in --workers (default 1000,10000,100000; the server keeps its
// population, so each size adds to the previous one):
//   populate             publish N endpoint-only workers (P2P mode) + UpdateStatus(READY) each,
//                        then read the server's RSS (VmRSS, VmHWM of the child)
//   health (baseline)    model_express.health.HealthService/GetHealth: a trivial round trip on
//                        the same server and channels; every p50/p99 is also given as a ratio
//                        to this one
//   grpc_floor           the same call to a minimal in-process gRPC server (no store, no
//                        metrics): gRPC's own cost on this machine, for scale
//   publish              PublishMetadata re-publishing an existing endpoint-only worker
//   update_status        UpdateStatus(READY) of that worker (the heartbeat; restores READY)
//   list_identity_ready  ListSources(identity, status_filter=READY): what a target sends
//   list_all             ListSources with no filter: every worker (fewer iterations)
//   get_endpoint         GetMetadata of an endpoint-only worker
//   get_tensors          GetMetadata of one centralized-mode worker holding --tensors (2,000)
//                        tensors, sent twice (tensor_source + legacy field) like the client
//
// Population shape: worker i is rank i % 8 of source k = i / 8 (model "bench/model-<k>",
// tensor_parallel_size 8), with its own worker_id, as 8-GPU sources publish: N/8 sources of
// 8 workers. So list_identity_ready returns 8 entries whatever N is.
//
// After the last size: the child's SIGTERM-to-exit time (it must exit 0).
//
// Output: one JSON object per line on stdout per measurement; a summary table on stderr.
// Every response is checked (success/found/entry counts); any failed call fails the run.
//
//   control_plane_bench [--workers 1000,10000,100000] [--threads 2] [--iterations 10000]
//                       [--server HOST:PORT [--server-pid PID]] [--server-bin PATH] [--smoke]

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <latch>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "bench_population.h"
#include "bench_server.h"
#include "bench_stats.h"
#include "ferry/status.h"
#include "grpcpp/grpcpp.h"
#include "model_express/health.grpc.pb.h"
#include "model_express/p2p.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace ferry::bench {
namespace {

namespace p2p = ::model_express::p2p;
namespace health = ::model_express::health;
using Clock = std::chrono::steady_clock;

constexpr int kMaxMessageBytes = 256 << 20;

struct Options {
  std::vector<int64_t> workers = {1000, 10000, 100000};
  int threads = 2;                // client threads for every measured workload
  int64_t iterations = 10000;     // calls per workload and population size
  int64_t list_all_budget = 2e6;  // list_all runs budget / N calls (5 at least)
  int tensors = 2000;             // tensors in the centralized-mode worker
  int populate_threads = 4;       // populate is not measured; more threads fill the pipe
  std::string server;             // empty: start --server-bin as a child
  int server_pid = 0;             // with --server: read RSS of this process if set
  std::string server_bin;         // default: ferry-server next to this binary
  std::vector<std::string> only;  // workload names to run; empty: all (health always runs)
  bool smoke = false;
};

// The floor under every figure: a minimal in-process gRPC server whose GetHealth only sets
// "ok", called over loopback like ferry-server. Separates gRPC's own cost from ferry's.
// Thread-safe.
class FloorServer final : public health::HealthService::Service {
 public:
  static StatusOr<std::unique_ptr<FloorServer>> Create() {
    auto floor = std::unique_ptr<FloorServer>(new FloorServer());
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &floor->port_);
    builder.RegisterService(floor.get());
    floor->server_ = builder.BuildAndStart();
    if (floor->server_ == nullptr || floor->port_ == 0) {
      return absl::UnavailableError("cannot start the in-process floor server on 127.0.0.1:0");
    }
    return floor;
  }
  ~FloorServer() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

  grpc::Status GetHealth(grpc::ServerContext*, const health::HealthRequest*,
                         health::HealthResponse* response) override {
    response->set_status("ok");
    return grpc::Status::OK;
  }

 private:
  FloorServer() = default;

  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

// ---- the population ---------------------------------------------------------------------------

struct Source {
  p2p::SourceIdentity identity;
  std::string id;  // mx_source_id from PublishMetadata
};

// Every client-side handle of one run. Thread-compatible; each thread uses its own stub.
class Bench {
 public:
  Bench(const Options& options, const std::string& address, const std::string& floor_address)
      : options_(options) {
    int channels = std::max(options.threads, options.populate_threads);
    for (int t = 0; t < channels; ++t) {
      auto channel = Channel(address);
      p2p_.push_back(p2p::P2pService::NewStub(channel));
      health_.push_back(health::HealthService::NewStub(channel));
      floor_.push_back(health::HealthService::NewStub(Channel(floor_address)));
    }
  }

  // Publishes workers [workers_, n) and marks each READY, as each rank's first heartbeat tick.
  Status Populate(int64_t n) {
    // A partial last source from the previous size is filled up first.
    int64_t first_source = workers_ / kRanksPerSource;
    int64_t last_source = (n + kRanksPerSource - 1) / kRanksPerSource;
    for (int64_t k = sources_.size(); k < last_source; ++k) {
      sources_.push_back({Identity(absl::StrCat("bench/model-", k)), ""});
    }
    std::atomic<int64_t> next{first_source};
    absl::Mutex mu;
    Status first_error;
    std::vector<std::thread> threads;
    for (int t = 0; t < options_.populate_threads; ++t) {
      threads.emplace_back([&, t] {
        for (int64_t k = next++; k < last_source; k = next++) {
          for (int64_t i = k * kRanksPerSource; i < std::min(n, (k + 1) * kRanksPerSource); ++i) {
            if (i < workers_) continue;
            Status s = PublishReady(t, sources_[k], i);
            if (!s.ok()) {
              absl::MutexLock lock(&mu);
              if (first_error.ok()) first_error = s;
              return;
            }
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    FERRY_RETURN_IF_ERROR(first_error);
    workers_ = n;
    return absl::OkStatus();
  }

  // The centralized-mode worker with `tensors` tensors, in its own source; READY.
  Status PublishTensorWorker(int tensors) {
    tensor_source_ = {Identity("bench/tensor-model"), ""};
    p2p::PublishMetadataRequest req;
    *req.mutable_identity() = tensor_source_.identity;
    req.set_worker_id("7e7507a1");
    p2p::WorkerMetadata* w = req.mutable_worker();
    w->set_nixl_metadata(std::string(16 << 10, '\x5a'));
    w->set_accelerator("cuda");
    for (int j = 0; j < tensors; ++j) {
      p2p::TensorDescriptor* d = w->mutable_tensor_source()->add_tensors();
      d->set_name(
          absl::StrCat("model.layers.", j / 8, ".mlp.experts.", j % 8, ".down_proj.weight"));
      d->set_addr(0x7f3a00000000ull + static_cast<uint64_t>(j) * 58720256ull);
      d->set_size(58720256);
      d->set_device_id(0);
      d->set_dtype("torch.bfloat16");
      // The client writes the deprecated legacy field too (contract section 6.1).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
      *w->add_tensors() = *d;
#pragma GCC diagnostic pop
    }
    grpc::ClientContext ctx;
    p2p::PublishMetadataResponse resp;
    grpc::Status status = p2p_[0]->PublishMetadata(&ctx, req, &resp);
    FERRY_RETURN_IF_ERROR(Check("PublishMetadata", status, [&] { return Failure(resp); }));
    tensor_source_.id = resp.mx_source_id();
    tensor_worker_id_ = "7e7507a1";
    return UpdateReady(0, tensor_source_.id, tensor_worker_id_, 0);
  }

  int64_t workers() const { return workers_; }
  int64_t server_workers() const { return workers_ + (tensor_source_.id.empty() ? 0 : 1); }
  int64_t sources() const { return sources_.size(); }

  // One measured call: the `i`-th of a workload, on client thread `t`. OK if the response
  // is what the population implies.
  using Call = std::function<Status(int t, int64_t i)>;

  Status Health(int t, int64_t) {
    grpc::ClientContext ctx;
    health::HealthResponse resp;
    grpc::Status status = health_[t]->GetHealth(&ctx, health::HealthRequest(), &resp);
    return Check("GetHealth", status, [&] {
      return resp.status() == "ok" ? "" : absl::StrCat("status '", resp.status(), "'");
    });
  }

  Status Floor(int t, int64_t) {
    grpc::ClientContext ctx;
    health::HealthResponse resp;
    grpc::Status status = floor_[t]->GetHealth(&ctx, health::HealthRequest(), &resp);
    return Check("GetHealth(floor)", status, [] { return std::string(); });
  }

  Status Publish(int t, int64_t i) {
    int64_t w = Spread(i, workers_);
    auto req = EndpointPublish(sources_[w / kRanksPerSource].identity, w);
    grpc::ClientContext ctx;
    p2p::PublishMetadataResponse resp;
    grpc::Status status = p2p_[t]->PublishMetadata(&ctx, req, &resp);
    return Check("PublishMetadata", status, [&] { return Failure(resp); });
  }

  Status Update(int t, int64_t i) {
    int64_t w = Spread(i, workers_);
    return UpdateReady(t, sources_[w / kRanksPerSource].id, WorkerId(w), w % kRanksPerSource);
  }

  Status ListIdentityReady(int t, int64_t i) {
    int64_t k = Spread(i, sources());
    p2p::ListSourcesRequest req;
    *req.mutable_identity() = sources_[k].identity;
    req.set_status_filter(p2p::SOURCE_STATUS_READY);
    grpc::ClientContext ctx;
    p2p::ListSourcesResponse resp;
    int64_t expected = std::min<int64_t>(kRanksPerSource, workers_ - k * kRanksPerSource);
    grpc::Status status = p2p_[t]->ListSources(&ctx, req, &resp);
    return Check("ListSources(identity, READY)", status,
                 [&] { return CountFailure(resp.instances_size(), expected, "entries"); });
  }

  Status ListAll(int t, int64_t) {
    grpc::ClientContext ctx;
    p2p::ListSourcesResponse resp;
    grpc::Status status = p2p_[t]->ListSources(&ctx, p2p::ListSourcesRequest(), &resp);
    return Check("ListSources()", status,
                 [&] { return CountFailure(resp.instances_size(), server_workers(), "entries"); });
  }

  Status GetEndpoint(int t, int64_t i) {
    int64_t w = Spread(i, workers_);
    p2p::GetMetadataRequest req;
    req.set_mx_source_id(sources_[w / kRanksPerSource].id);
    req.set_worker_id(WorkerId(w));
    grpc::ClientContext ctx;
    p2p::GetMetadataResponse resp;
    grpc::Status status = p2p_[t]->GetMetadata(&ctx, req, &resp);
    return Check("GetMetadata", status, [&] {
      return resp.found() && resp.worker().worker_rank() == w % kRanksPerSource
                 ? ""
                 : absl::StrCat("found=", resp.found(), " rank ", resp.worker().worker_rank(),
                                " for worker ", w);
    });
  }

  Status GetTensors(int t, int64_t) {
    p2p::GetMetadataRequest req;
    req.set_mx_source_id(tensor_source_.id);
    req.set_worker_id(tensor_worker_id_);
    grpc::ClientContext ctx;
    p2p::GetMetadataResponse resp;
    grpc::Status status = p2p_[t]->GetMetadata(&ctx, req, &resp);
    return Check("GetMetadata(tensors)", status, [&] {
      return CountFailure(resp.worker().tensor_source().tensors_size(), options_.tensors,
                          "tensors");
    });
  }

 private:
  static std::shared_ptr<grpc::Channel> Channel(const std::string& address) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(kMaxMessageBytes);
    args.SetMaxSendMessageSize(kMaxMessageBytes);
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // one TCP connection per thread
    return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  }

  // Spreads call i over [0, n) in a scrambled but repeatable order, so that two workloads run
  // with the same i touch the same workers.
  static int64_t Spread(int64_t i, int64_t n) {
    return static_cast<int64_t>((static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull >> 16) %
                                static_cast<uint64_t>(n));
  }

  // OK if the call succeeded and `failure`, run once the response is in, returns "";
  // otherwise what went wrong.
  static Status Check(const char* rpc, const grpc::Status& status,
                      absl::FunctionRef<std::string()> failure) {
    if (!status.ok()) {
      return absl::UnavailableError(
          absl::StrCat(rpc, " failed: gRPC ", status.error_code(), " ", status.error_message()));
    }
    std::string what = failure();
    if (!what.empty()) {
      return absl::InternalError(absl::StrCat(rpc, " returned a wrong answer: ", what));
    }
    return absl::OkStatus();
  }
  template <typename Response>
  static std::string Failure(const Response& resp) {
    return resp.success() ? "" : absl::StrCat("success=false: ", resp.message());
  }
  static std::string CountFailure(int64_t got, int64_t expected, const char* what) {
    return got == expected ? "" : absl::StrCat(got, " ", what, ", expected ", expected);
  }

  Status UpdateReady(int t, const std::string& source_id, const std::string& worker_id, int rank) {
    p2p::UpdateStatusRequest req;
    req.set_mx_source_id(source_id);
    req.set_worker_id(worker_id);
    req.set_worker_rank(rank);
    req.set_status(p2p::SOURCE_STATUS_READY);
    grpc::ClientContext ctx;
    p2p::UpdateStatusResponse resp;
    grpc::Status status = p2p_[t]->UpdateStatus(&ctx, req, &resp);
    return Check("UpdateStatus", status, [&] { return Failure(resp); });
  }

  Status PublishReady(int t, Source& source, int64_t i) {
    auto req = EndpointPublish(source.identity, i);
    grpc::ClientContext ctx;
    p2p::PublishMetadataResponse resp;
    grpc::Status status = p2p_[t]->PublishMetadata(&ctx, req, &resp);
    FERRY_RETURN_IF_ERROR(Check("PublishMetadata", status, [&] { return Failure(resp); }));
    source.id = resp.mx_source_id();
    return UpdateReady(t, source.id, req.worker_id(), req.worker().worker_rank());
  }

  const Options& options_;
  std::vector<std::unique_ptr<p2p::P2pService::Stub>> p2p_;
  std::vector<std::unique_ptr<health::HealthService::Stub>> health_;
  std::vector<std::unique_ptr<health::HealthService::Stub>> floor_;
  std::vector<Source> sources_;  // source k holds workers [8k, 8k+8)
  int64_t workers_ = 0;
  Source tensor_source_;
  std::string tensor_worker_id_;
};

// ---- measuring ----------------------------------------------------------------------------------

struct Stats {
  int64_t calls = 0;
  double p50_us = 0, p99_us = 0, mean_us = 0, max_us = 0, qps = 0;
};

// Runs `calls` calls of `call` spread over `threads` threads, each timing its own calls.
StatusOr<Stats> Measure(int threads, int64_t calls, const Bench::Call& call) {
  std::vector<std::vector<double>> per_thread(threads);
  std::vector<Status> errors(threads);
  std::latch start(threads + 1);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      per_thread[t].reserve(calls / threads + 1);
      start.arrive_and_wait();
      for (int64_t i = t; i < calls; i += threads) {
        auto begin = Clock::now();
        Status s = call(t, i);
        auto end = Clock::now();
        if (!s.ok()) {
          errors[t] = s;
          return;
        }
        per_thread[t].push_back(std::chrono::duration<double, std::micro>(end - begin).count());
      }
    });
  }
  start.arrive_and_wait();
  auto begin = Clock::now();
  for (auto& th : pool) th.join();
  double seconds = std::chrono::duration<double>(Clock::now() - begin).count();
  for (auto& e : errors) FERRY_RETURN_IF_ERROR(e);
  std::vector<double> all;
  for (auto& v : per_thread) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  Stats stats;
  stats.calls = all.size();
  stats.p50_us = Percentile(all, 0.50);
  stats.p99_us = Percentile(all, 0.99);
  stats.max_us = all.back();
  double sum = 0;
  for (double v : all) sum += v;
  stats.mean_us = sum / all.size();
  stats.qps = all.size() / seconds;
  return stats;
}

void Emit(const nlohmann::json& line) { std::cout << line.dump() << std::endl; }

nlohmann::json Line(const char* workload, int64_t workers, const Options& options) {
  return {{"bench", "control_plane"},
          {"workload", workload},
          {"workers", workers},
          {"threads", options.threads}};
}

// Every workload at every population size against the server at `address`; reads RSS of
// `rss_pid` unless it is 0.
Status RunWorkloads(const Options& options, const std::string& address, int rss_pid) {
  FERRY_ASSIGN_OR_RETURN(auto floor, FloorServer::Create());
  Bench bench(options, address, floor->address());
  FERRY_RETURN_IF_ERROR(bench.PublishTensorWorker(options.tensors));

  std::ostringstream summary;
  char row[200];
  std::snprintf(row, sizeof(row), "%-20s %8s %9s %9s %8s %8s %10s\n", "workload", "workers",
                "p50_us", "p99_us", "p50/base", "p99/base", "calls/s");
  summary << row;

  int64_t baseline_calls = std::max<int64_t>(options.iterations, 200);
  for (int64_t n : options.workers) {
    auto begin = Clock::now();
    FERRY_RETURN_IF_ERROR(bench.Populate(n));
    double populate_s = std::chrono::duration<double>(Clock::now() - begin).count();
    auto line = Line("populate", n, options);
    line["threads"] = options.populate_threads;
    line["sources"] = bench.sources();
    line["seconds"] = populate_s;
    if (auto rss = rss_pid != 0 ? ReadRss(rss_pid) : std::nullopt) {
      line["server_rss_bytes"] = rss->first;
      line["server_hwm_bytes"] = rss->second;
      std::fprintf(stderr, "populated %lld workers in %.1f s; server RSS %.1f MiB (peak %.1f)\n",
                   static_cast<long long>(n), populate_s, rss->first / 1048576.0,
                   rss->second / 1048576.0);
    }
    Emit(line);

    // Warm the connections, then the baseline, then each workload against it.
    FERRY_RETURN_IF_ERROR(Measure(options.threads, 200, [&](int t, int64_t i) {
                            return bench.Health(t, i);
                          }).status());
    FERRY_ASSIGN_OR_RETURN(Stats base,
                           Measure(options.threads, baseline_calls,
                                   [&](int t, int64_t i) { return bench.Health(t, i); }));
    int64_t list_all_calls = std::max<int64_t>(5, options.list_all_budget / n);
    struct Workload {
      const char* name;
      int64_t calls;
      Bench::Call call;
    };
    using namespace std::placeholders;
    std::vector<Workload> workloads = {
        {"health", baseline_calls, nullptr},
        {"grpc_floor", baseline_calls, std::bind(&Bench::Floor, &bench, _1, _2)},
        {"publish", options.iterations, std::bind(&Bench::Publish, &bench, _1, _2)},
        {"update_status", options.iterations, std::bind(&Bench::Update, &bench, _1, _2)},
        {"list_identity_ready", options.iterations,
         std::bind(&Bench::ListIdentityReady, &bench, _1, _2)},
        {"list_all", std::min(list_all_calls, options.iterations),
         std::bind(&Bench::ListAll, &bench, _1, _2)},
        {"get_endpoint", options.iterations, std::bind(&Bench::GetEndpoint, &bench, _1, _2)},
        {"get_tensors", std::max<int64_t>(options.iterations / 10, 20),
         std::bind(&Bench::GetTensors, &bench, _1, _2)},
    };
    for (const Workload& w : workloads) {
      if (w.call && !options.only.empty() &&
          std::find(options.only.begin(), options.only.end(), w.name) == options.only.end()) {
        continue;
      }
      Stats s = base;
      if (w.call) {
        auto measured = Measure(options.threads, w.calls, w.call);
        if (!measured.ok()) {
          return absl::Status(
              measured.status().code(),
              absl::StrCat(w.name, " at ", n, " workers: ", measured.status().message()));
        }
        s = *measured;
      }
      auto out = Line(w.name, n, options);
      out["calls"] = s.calls;
      out["p50_us"] = s.p50_us;
      out["p99_us"] = s.p99_us;
      out["mean_us"] = s.mean_us;
      out["max_us"] = s.max_us;
      out["calls_per_s"] = s.qps;
      out["baseline"] = "health";
      out["baseline_p50_us"] = base.p50_us;
      out["baseline_p99_us"] = base.p99_us;
      out["p50_vs_baseline"] = s.p50_us / base.p50_us;
      out["p99_vs_baseline"] = s.p99_us / base.p99_us;
      if (std::string(w.name) == "get_tensors") out["tensors"] = options.tensors;
      if (std::string(w.name) == "list_all") out["entries"] = bench.server_workers();
      Emit(out);
      std::snprintf(row, sizeof(row), "%-20s %8lld %9.1f %9.1f %8.2f %8.2f %10.0f\n", w.name,
                    static_cast<long long>(n), s.p50_us, s.p99_us, s.p50_us / base.p50_us,
                    s.p99_us / base.p99_us, s.qps);
      summary << row;
    }
    if (auto rss = rss_pid != 0 ? ReadRss(rss_pid) : std::nullopt) {
      auto after = Line("server_rss_after", n, options);
      after["server_rss_bytes"] = rss->first;
      after["server_hwm_bytes"] = rss->second;
      Emit(after);
    }
  }
  std::cerr << summary.str();
  return absl::OkStatus();
}

Status Run(const Options& options) {
  if (!options.server.empty()) {
    std::cerr << "control_plane_bench: server " << options.server << "\n";
    return RunWorkloads(options, options.server, options.server_pid);
  }
  ServerProcessOptions server_options;
  server_options.binary = options.server_bin;
  FERRY_ASSIGN_OR_RETURN(auto child, StartServer(server_options));
  std::cerr << "control_plane_bench: server " << child->address() << " (child)\n";
  FERRY_RETURN_IF_ERROR(RunWorkloads(options, child->address(), child->pid()));
  auto begin = Clock::now();
  FERRY_RETURN_IF_ERROR(child->Stop());
  auto line = Line("sigterm_to_exit", options.workers.back(), options);
  line["seconds"] = std::chrono::duration<double>(Clock::now() - begin).count();
  Emit(line);
  return absl::OkStatus();
}

}  // namespace
}  // namespace ferry::bench

int main(int argc, char** argv) {
  ferry::bench::Options options;
  CLI::App app{"Latency and throughput of ferry-server's P2P control plane (see file header)"};
  std::string workers;
  app.add_option("--workers", workers, "population sizes, comma-separated (1000,10000,100000)");
  app.add_option("--only", options.only, "run only these workloads (names as in the header)")
      ->delimiter(',');
  app.add_option("--threads", options.threads, "client threads per workload")
      ->check(CLI::Range(1, 64));
  app.add_option("--iterations", options.iterations, "calls per workload and population size")
      ->check(CLI::PositiveNumber);
  app.add_option("--list-all-budget", options.list_all_budget,
                 "ListSources() with no filter runs max(5, budget / workers) calls");
  app.add_option("--tensors", options.tensors, "tensors in the centralized-mode worker");
  app.add_option("--populate-threads", options.populate_threads, "threads filling the server")
      ->check(CLI::Range(1, 64));
  app.add_option("--server", options.server, "use a running server at HOST:PORT");
  app.add_option("--server-pid", options.server_pid, "with --server: pid to read RSS from");
  app.add_option("--server-bin", options.server_bin, "ferry-server binary to start");
  app.add_flag("--smoke", options.smoke, "100 workers, few calls: checks the bench still runs");
  CLI11_PARSE(app, argc, argv);

  if (options.smoke) {
    options.workers = {100};
    options.iterations = 100;
    options.list_all_budget = 1000;
  }
  if (!workers.empty()) {
    options.workers.clear();
    std::stringstream in(workers);
    std::string item;
    while (std::getline(in, item, ',')) {
      char* end = nullptr;
      long long n = std::strtoll(item.c_str(), &end, 10);
      if (item.empty() || *end != '\0' || n <= 0 ||
          (!options.workers.empty() && n <= options.workers.back())) {
        std::cerr << "--workers: '" << workers
                  << "' must be increasing positive integers, e.g. 1000,10000,100000\n";
        return 2;
      }
      options.workers.push_back(n);
    }
  }
  if (options.server_bin.empty()) {
    options.server_bin =
        (std::filesystem::read_symlink("/proc/self/exe").parent_path() / "ferry-server").string();
  }
  ferry::Status status = ferry::bench::Run(options);
  if (!status.ok()) {
    std::cerr << "control_plane_bench: " << status << "\n";
    return 1;
  }
  return 0;
}
