#include "bench_load.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <queue>
#include <random>
#include <unordered_set>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "bench_population.h"
#include "grpcpp/grpcpp.h"
#include "model_express/health.grpc.pb.h"
#include "model_express/p2p.grpc.pb.h"

namespace ferry::bench {

namespace p2p = ::model_express::p2p;
namespace health = ::model_express::health;

namespace {

enum Rpc : uint8_t { kPublish, kHeartbeat, kList, kGet, kHealth, kRpcCount };
constexpr const char* kRpcNames[kRpcCount] = {"publish", "heartbeat", "list_identity_ready",
                                              "get_metadata", "health"};

std::string ReplicaName(int r) { return std::string(1, static_cast<char>('A' + r)); }

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

Clock::duration Chrono(absl::Duration d) {
  return std::chrono::duration_cast<Clock::duration>(absl::ToChronoNanoseconds(d));
}

std::shared_ptr<grpc::Channel> Channel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);             // the full listing of the check
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // one TCP connection per channel
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

}  // namespace

// ---- Redis PING ---------------------------------------------------------------------------------

StatusOr<std::unique_ptr<RedisPinger>> RedisPinger::Connect(int port) {
  redisContext* c = redisConnect("127.0.0.1", port);
  if (c == nullptr || c->err != 0) {
    std::string why = c == nullptr ? "out of memory" : c->errstr;
    if (c != nullptr) redisFree(c);
    return absl::UnavailableError(absl::StrCat("redis 127.0.0.1:", port, ": ", why));
  }
  return std::unique_ptr<RedisPinger>(new RedisPinger(c));
}

RedisPinger::~RedisPinger() { redisFree(context_); }

Status RedisPinger::Ping() {
  auto* reply = static_cast<redisReply*>(redisCommand(context_, "PING"));
  if (reply == nullptr) {
    return absl::UnavailableError(absl::StrCat("redis PING: ", context_->errstr));
  }
  const bool pong = reply->type == REDIS_REPLY_STATUS && std::string(reply->str) == "PONG";
  freeReplyObject(reply);
  return pong ? absl::OkStatus() : absl::InternalError("redis PING: no PONG");
}

// ---- one client thread
// ----------------------------------------------------------------------------

// One client thread: every threads-th worker and target (and, on thread 0, the health probe),
// with a channel to each replica. Its figures are read once its thread has been joined.
class Load::Client {
 public:
  Client(Load* load, int index) : load_(load), index_(index), rng_(load->options_.seed + index) {
    for (const std::string& address : load->addresses_) {
      auto channel = Channel(address);
      p2p_.push_back(p2p::P2pService::NewStub(channel));
      health_.push_back(health::HealthService::NewStub(channel));
    }
    for (int64_t j = index; j < load->options_.targets; j += load->options_.threads) {
      target_replica_.push_back(static_cast<uint8_t>(j % load->addresses_.size()));
    }
  }

  p2p::P2pService::Stub& p2p(int r) { return *p2p_[r]; }
  health::HealthService::Stub& health(int r) { return *health_[r]; }

  // Runs the schedule from t0 until t0 + duration.
  void Run() {
    const LoadOptions& o = load_->options_;
    const Clock::time_point t0 = load_->t0_;
    const Clock::time_point end = t0 + Chrono(o.duration);
    std::priority_queue<Event, std::vector<Event>, std::greater<>> queue;
    for (int64_t w = index_; w < o.workers; w += o.threads) {
      queue.push({t0 + Phase(o.ramp), kWorkerEvent, w});
    }
    for (int64_t j = index_, n = 0; j < o.targets; j += o.threads, ++n) {
      queue.push({t0 + Phase(o.target_interval), kTargetEvent, n});
    }
    if (index_ == 0) queue.push({t0, kProbeEvent, 0});
    while (!queue.empty()) {
      Event e = queue.top();
      if (e.due >= end) break;
      queue.pop();
      std::this_thread::sleep_until(e.due);
      switch (e.kind) {
        case kWorkerEvent:
          e.due = OnWorker(e.index, e.due);
          break;
        case kTargetEvent:
          e.due = OnTarget(e.index, e.due);
          break;
        default:
          e.due = OnProbe(e.due);
          break;
      }
      queue.push(e);
    }
  }

  struct Sample {
    float start_s;  // since t0
    float latency_us;
    float lag_us;
    uint8_t replica;
  };
  struct Error {
    Rpc rpc;
    uint8_t replica;
    double end_s;  // since t0
    std::string what;
  };

  std::vector<Sample> samples[kRpcCount];
  std::vector<Error> errors;
  int64_t not_found = 0, republishes = 0, failovers = 0;
  int64_t short_listings = 0;  // fewer than 8 READY before every worker was READY

 private:
  enum EventKind : uint8_t { kWorkerEvent, kTargetEvent, kProbeEvent };
  struct Event {
    Clock::time_point due;
    EventKind kind;
    int64_t index;  // worker w, or this client's n-th target
    bool operator>(const Event& other) const { return due > other.due; }
  };

  Clock::duration Phase(absl::Duration span) {
    const int64_t ns = absl::ToInt64Nanoseconds(span);
    if (ns <= 0) return Clock::duration::zero();
    return Chrono(absl::Nanoseconds(std::uniform_int_distribution<int64_t>(0, ns - 1)(rng_)));
  }

  // One call on `*replica`: `rpc_call` sends it, `check` (run only when the status is OK)
  // returns "" for a right answer or what is wrong. Records the latency, or the error. With two
  // replicas, an UNAVAILABLE or DEADLINE_EXCEEDED moves `*replica` to the other one and the call
  // is tried once more there. True if the (last) call succeeded.
  bool Call(Rpc rpc, uint8_t* replica, Clock::time_point slot,
            absl::FunctionRef<grpc::Status(int replica, grpc::ClientContext*)> rpc_call,
            absl::FunctionRef<std::string()> check) {
    const Clock::time_point t0 = load_->t0_;
    for (int attempt = 0;; ++attempt) {
      const Clock::time_point begin = Clock::now();
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() +
                       absl::ToChronoNanoseconds(load_->options_.rpc_deadline));
      const grpc::Status status = rpc_call(*replica, &ctx);
      const Clock::time_point end = Clock::now();
      std::string what =
          status.ok() ? check()
                      : absl::StrCat("gRPC ", status.error_code(), " ", status.error_message());
      if (what.empty()) {
        samples[rpc].push_back({static_cast<float>(Seconds(begin - t0)),
                                static_cast<float>(Micros(end - begin)),
                                static_cast<float>(std::max(0.0, Micros(begin - slot))), *replica});
        return true;
      }
      errors.push_back({rpc, *replica, Seconds(end - t0), std::move(what)});
      const bool failover = attempt == 0 && load_->addresses_.size() > 1 &&
                            (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                             status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED);
      if (!failover) return false;
      *replica ^= 1;
      ++failovers;
      slot = Clock::now();
    }
  }

  bool Publish(int64_t w, Clock::time_point slot) {
    Worker& worker = load_->workers_[w];
    const p2p::PublishMetadataRequest req =
        EndpointPublish(load_->identities_[w / kRanksPerSource], w);
    p2p::PublishMetadataResponse resp;
    const bool ok = Call(
        kPublish, &worker.replica, slot,
        [&](int r, grpc::ClientContext* ctx) {
          resp.Clear();
          return p2p_[r]->PublishMetadata(ctx, req, &resp);
        },
        [&] {
          return resp.success() ? std::string() : absl::StrCat("success=false: ", resp.message());
        });
    if (ok) {
      worker.source_id = resp.mx_source_id();
      worker.published = true;
    }
    return ok;
  }

  // UpdateStatus(READY). `*lost` is set when the server answered that the worker is unknown.
  bool Heartbeat(int64_t w, Clock::time_point slot, bool* lost) {
    Worker& worker = load_->workers_[w];
    p2p::UpdateStatusRequest req;
    req.set_mx_source_id(worker.source_id);
    req.set_worker_id(load_->worker_ids_[w]);
    req.set_worker_rank(static_cast<uint32_t>(w % kRanksPerSource));
    req.set_status(p2p::SOURCE_STATUS_READY);
    p2p::UpdateStatusResponse resp;
    *lost = false;
    return Call(
        kHeartbeat, &worker.replica, slot,
        [&](int r, grpc::ClientContext* ctx) {
          resp.Clear();
          return p2p_[r]->UpdateStatus(ctx, req, &resp);
        },
        [&] {
          if (resp.success()) return std::string();
          if (absl::StrContains(resp.message(), "not found")) {
            *lost = true;
            return std::string();
          }
          return absl::StrCat("success=false: ", resp.message());
        });
  }

  // Worker w's tick: its first publish (then at once its first heartbeat), or a heartbeat; a
  // heartbeat answered "not found" re-publishes at once, as ferry's Publisher does.
  Clock::time_point OnWorker(int64_t w, Clock::time_point slot) {
    Worker& worker = load_->workers_[w];
    const Clock::time_point next = slot + Chrono(load_->options_.heartbeat_interval);
    Clock::time_point beat = slot;
    if (!worker.published) {
      if (!Publish(w, slot)) return next;
      beat = Clock::now();
    }
    bool lost = false;
    bool ok = Heartbeat(w, beat, &lost);
    if (ok && lost) {
      ++not_found;
      ++republishes;
      worker.published = false;
      ok = Publish(w, Clock::now()) && Heartbeat(w, Clock::now(), &lost) && !lost;
      if (lost) ++not_found;
    }
    if (ok && !worker.ready) {
      worker.ready = true;
      load_->MarkReady();
    }
    return next;
  }

  // A target's tick: list the READY workers of a random source, then get one of them.
  Clock::time_point OnTarget(int64_t n, Clock::time_point slot) {
    const LoadOptions& o = load_->options_;
    uint8_t& replica = target_replica_[n];
    const Clock::time_point next = slot + Chrono(o.target_interval);
    const int64_t k = std::uniform_int_distribution<int64_t>(0, load_->sources() - 1)(rng_);
    const int64_t expected = std::min<int64_t>(kRanksPerSource, o.workers - k * kRanksPerSource);
    const bool all_ready = load_->ready_.load() == o.workers;
    p2p::ListSourcesRequest req;
    *req.mutable_identity() = load_->identities_[k];
    req.set_status_filter(p2p::SOURCE_STATUS_READY);
    p2p::ListSourcesResponse resp;
    const bool listed = Call(
        kList, &replica, slot,
        [&](int r, grpc::ClientContext* ctx) {
          resp.Clear();
          return p2p_[r]->ListSources(ctx, req, &resp);
        },
        [&] {
          const int64_t got = resp.instances_size();
          if (got == expected) return std::string();
          if (got < expected && !all_ready) {
            ++short_listings;  // still starting up
            return std::string();
          }
          return absl::StrCat(got, " of ", expected, " workers of source ", k, " listed READY",
                              all_ready ? " after every worker was READY" : "");
        });
    if (!listed || resp.instances_size() == 0) return next;
    const p2p::SourceInstanceRef& pick =
        resp.instances(std::uniform_int_distribution<int>(0, resp.instances_size() - 1)(rng_));
    p2p::GetMetadataRequest get;
    get.set_mx_source_id(pick.mx_source_id());
    get.set_worker_id(pick.worker_id());
    p2p::GetMetadataResponse meta;
    Call(
        kGet, &replica, Clock::now(),
        [&](int r, grpc::ClientContext* ctx) {
          meta.Clear();
          return p2p_[r]->GetMetadata(ctx, get, &meta);
        },
        [&] {
          if (meta.found() && meta.worker().worker_rank() == pick.worker_rank() &&
              !meta.worker().metadata_endpoint().empty()) {
            return std::string();
          }
          return absl::StrCat("found=", meta.found(), " rank ", meta.worker().worker_rank(),
                              " for listed worker ", pick.worker_id(), " rank ",
                              pick.worker_rank());
        });
    return next;
  }

  Clock::time_point OnProbe(Clock::time_point slot) {
    health::HealthResponse resp;
    Call(
        kHealth, &probe_replica_, slot,
        [&](int r, grpc::ClientContext* ctx) {
          return health_[r]->GetHealth(ctx, health::HealthRequest(), &resp);
        },
        [&] {
          return resp.status() == "ok" ? std::string()
                                       : absl::StrCat("health status '", resp.status(), "'");
        });
    return slot + Chrono(load_->options_.probe_interval);
  }

  Load* const load_;
  const int index_;
  std::mt19937_64 rng_;
  std::vector<std::unique_ptr<p2p::P2pService::Stub>> p2p_;  // per replica
  std::vector<std::unique_ptr<health::HealthService::Stub>> health_;
  std::vector<uint8_t> target_replica_;  // per target of this client
  uint8_t probe_replica_ = 0;
};

// ---- the load ---------------------------------------------------------------------------------

Load::Load(const LoadOptions& options, std::vector<std::string> addresses)
    : options_(options), addresses_(std::move(addresses)) {
  const int64_t sources = (options_.workers + kRanksPerSource - 1) / kRanksPerSource;
  for (int64_t k = 0; k < sources; ++k) {
    identities_.push_back(Identity(absl::StrCat("load/model-", k)));
  }
  workers_.resize(options_.workers);
  for (int64_t w = 0; w < options_.workers; ++w) {
    worker_ids_.push_back(WorkerId(w));
    workers_[w].replica = static_cast<uint8_t>(w % addresses_.size());
  }
}

Load::~Load() { Join(); }

Status Load::Connect() {
  for (int t = 0; t < options_.threads; ++t) clients_.push_back(std::make_unique<Client>(this, t));
  // Every channel connects now, so no measured call pays for a connection setup.
  for (const auto& client : clients_) {
    for (size_t r = 0; r < addresses_.size(); ++r) {
      grpc::ClientContext ctx;
      ctx.set_wait_for_ready(true);
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      health::HealthResponse resp;
      grpc::Status status = client->health(r).GetHealth(&ctx, health::HealthRequest(), &resp);
      if (!status.ok() || resp.status() != "ok") {
        return absl::UnavailableError(
            absl::StrCat("replica ", ReplicaName(r), " at ", addresses_[r],
                         " does not answer GetHealth: ", status.error_message(), resp.status()));
      }
    }
  }
  return absl::OkStatus();
}

StatusOr<Summary> Load::HealthBaseline(int replica, int calls) {
  std::vector<double> us;
  for (int i = 0; i < calls + 200; ++i) {
    grpc::ClientContext ctx;
    health::HealthResponse resp;
    auto begin = Clock::now();
    grpc::Status status =
        clients_[0]->health(replica).GetHealth(&ctx, health::HealthRequest(), &resp);
    auto end = Clock::now();
    if (!status.ok() || resp.status() != "ok") {
      return absl::UnavailableError(
          absl::StrCat("baseline GetHealth: ", status.error_message(), " ", resp.status()));
    }
    if (i >= 200) us.push_back(Micros(end - begin));
  }
  return Summarize(us);
}

void Load::Start(Clock::time_point t0) {
  t0_ = t0;
  for (auto& client : clients_) threads_.emplace_back([c = client.get()] { c->Run(); });
}

void Load::Join() {
  for (auto& t : threads_) t.join();
  threads_.clear();
}

void Load::MarkReady() {
  if (ready_.fetch_add(1) + 1 == options_.workers) {
    all_ready_ns_.store(std::chrono::nanoseconds(Clock::now() - t0_).count());
  }
}

LoadResults Load::Results(std::optional<int> killed, Clock::time_point kill_time,
                          absl::Duration window) const {
  LoadResults out;
  const double kill_s = killed ? Seconds(kill_time - t0_) : 0;
  const double window_s = absl::ToDoubleSeconds(window);
  std::vector<const Client::Error*> errors;
  int64_t short_listings = 0;
  for (const auto& c : clients_) {
    out.not_found += c->not_found;
    out.republishes += c->republishes;
    out.failovers += c->failovers;
    short_listings += c->short_listings;
    for (const auto& e : c->errors) errors.push_back(&e);
  }
  std::sort(errors.begin(), errors.end(),
            [](const auto* a, const auto* b) { return a->end_s < b->end_s; });
  for (int rpc = 0; rpc < kRpcCount; ++rpc) {
    RpcResult r;
    r.name = kRpcNames[rpc];
    std::vector<double> latency, lag, from_slot, before, after;
    for (const auto& c : clients_) {
      for (const auto& s : c->samples[rpc]) {
        latency.push_back(s.latency_us);
        lag.push_back(s.lag_us);
        from_slot.push_back(s.lag_us + s.latency_us);
        if (killed && s.start_s < kill_s) before.push_back(s.latency_us);
        if (killed && s.start_s > kill_s + window_s) after.push_back(s.latency_us);
      }
    }
    for (const auto* e : errors) {
      if (e->rpc != rpc) continue;
      ++r.errors;
      const bool in_window =
          killed && e->replica == *killed && e->end_s >= kill_s && e->end_s <= kill_s + window_s;
      if (in_window) {
        ++r.errors_in_window;
        out.last_window_error_s = std::max(out.last_window_error_s.value_or(0), e->end_s - kill_s);
      }
    }
    std::vector<const Client::Sample*> slowest;
    for (const auto& c : clients_) {
      for (const auto& s : c->samples[rpc]) {
        slowest.push_back(&s);
        if (slowest.size() > 3) {
          std::sort(slowest.begin(), slowest.end(),
                    [](const auto* a, const auto* b) { return a->latency_us > b->latency_us; });
          slowest.pop_back();
        }
      }
    }
    for (const auto* s : slowest) {
      r.slowest.push_back({s->start_s, s->latency_us, ReplicaName(s->replica)});
    }
    r.calls = static_cast<int64_t>(latency.size()) + r.errors;
    r.latency = Summarize(latency);
    r.lag = Summarize(lag);
    r.from_slot = Summarize(from_slot);
    r.before_kill = Summarize(before);
    r.after_failover = Summarize(after);
    if (rpc == kHeartbeat) {
      std::vector<std::vector<double>> by_second(
          static_cast<size_t>(std::ceil(absl::ToDoubleSeconds(options_.duration))));
      for (const auto& c : clients_) {
        for (const auto& s : c->samples[rpc]) {
          const size_t second = static_cast<size_t>(std::max(0.0f, s.start_s));
          if (second < by_second.size()) by_second[second].push_back(s.latency_us);
        }
      }
      for (auto& v : by_second) out.heartbeat_by_second.push_back(Summarize(v));
      r.extra = {{"not_found", out.not_found}, {"republishes", out.republishes}};
    }
    if (rpc == kList) r.extra = {{"short_listings_while_starting", short_listings}};
    out.errors_in_window += r.errors_in_window;
    out.errors_outside_window += r.errors - r.errors_in_window;
    out.rpcs.push_back(std::move(r));
  }
  for (const auto* e : errors) {
    if (out.sample_errors.size() >= 8) break;
    char at[32];
    std::snprintf(at, sizeof(at), "%.3f", e->end_s);
    out.sample_errors.push_back(absl::StrCat(kRpcNames[e->rpc], " on ", ReplicaName(e->replica),
                                             " at +", at, " s: ", e->what));
  }
  if (const int64_t ns = all_ready_ns_.load(); ns >= 0) out.all_ready_s = ns / 1e9;
  return out;
}

StatusOr<Verdict> Load::Verify(int replica) {
  p2p::P2pService::Stub& stub = clients_[0]->p2p(replica);
  auto deadline = [] { return std::chrono::system_clock::now() + std::chrono::seconds(60); };
  Verdict v;
  v.through = ReplicaName(replica);
  // Source ids as the workers learnt them; a source no worker could publish has none.
  std::vector<std::string> source_ids(sources());
  for (int64_t w = 0; w < options_.workers; ++w) {
    if (!workers_[w].source_id.empty()) source_ids[w / kRanksPerSource] = workers_[w].source_id;
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    p2p::ListSourcesResponse resp;
    grpc::Status status = stub.ListSources(&ctx, p2p::ListSourcesRequest(), &resp);
    if (!status.ok()) {
      return absl::UnavailableError(absl::StrCat("check: ListSources() through replica ", v.through,
                                                 ": ", status.error_message()));
    }
    std::unordered_set<std::string> seen;
    for (const auto& i : resp.instances()) seen.insert(i.mx_source_id() + "/" + i.worker_id());
    for (int64_t w = 0; w < options_.workers; ++w) {
      v.present += seen.count(source_ids[w / kRanksPerSource] + "/" + worker_ids_[w]);
    }
  }
  for (int64_t k = 0; k < sources(); ++k) {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    p2p::ListSourcesRequest req;
    *req.mutable_identity() = identities_[k];
    req.set_status_filter(p2p::SOURCE_STATUS_READY);
    p2p::ListSourcesResponse resp;
    grpc::Status status = stub.ListSources(&ctx, req, &resp);
    if (!status.ok()) {
      return absl::UnavailableError(absl::StrCat("check: ListSources(source ", k,
                                                 ", READY) through replica ", v.through, ": ",
                                                 status.error_message()));
    }
    std::unordered_set<std::string> listed;
    for (const auto& i : resp.instances()) listed.insert(i.worker_id());
    const int64_t end = std::min<int64_t>(options_.workers, (k + 1) * kRanksPerSource);
    for (int64_t w = k * kRanksPerSource; w < end; ++w)
      v.ready_listed += listed.count(worker_ids_[w]);
  }
  return v;
}

}  // namespace ferry::bench
