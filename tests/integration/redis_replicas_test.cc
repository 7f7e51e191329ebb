// ferry-server replicas on one real redis-server, and the server when that Redis fails. Every
// part is real: redis-server and ferry-server child processes, gRPC and HTTP over loopback.
//
//   TwoReplicasServeOneView                 writes through one replica are read through the other
//   ReapersOnBothReplicas...                two reapers expire a dead worker once, a live one never
//   RedisOutageTest/*                       Redis stopped or killed: fast UNAVAILABLE naming the
//                                           store, NOT_SERVING, then recovery without a restart
//   RedisKilledDuringPublishes...           only OK or UNAVAILABLE; no half-written worker; no
//                                           acknowledged write lost (AOF, appendfsync always)
//   KillingOneReplicaUnderLoad...           the other replica keeps answering; no record is lost
//
// The durations below are short so that the whole binary stays well under a minute on two cores;
// each margin is stated where it is chosen.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <set>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "ferry/metadata_client.h"
#include "ferry/publisher.h"
#include "ferry/source_identity.h"
#include "redis_replicas_support.h"

namespace ferry::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;
using ::testing::UnorderedElementsAreArray;

// ---------------------------------------------------------------------------------------------
// 1. Two replicas, one view

TEST_F(RedisReplicasTest, TwoReplicasServeOneView) {
  ASSERT_NO_FATAL_FAILURE(StartRedis());
  Replica* a = StartReplica();
  ASSERT_NE(a, nullptr);
  Replica* b = StartReplica();
  ASSERT_NE(b, nullptr);

  const SourceIdentity identity = Identity("Org/Replica-Model-7B");
  const std::string source_id = *ComputeMxSourceId(identity);
  PublishMetadataRequest request = Request(identity, "Worker-A1", /*rank=*/1, /*tensors=*/3);
  auto published = a->client->Publish(request);
  ASSERT_TRUE(published.ok()) << published.status();
  EXPECT_EQ(published->mx_source_id, source_id);
  EXPECT_EQ(published->worker_id, "Worker-A1");
  ASSERT_TRUE(a->client->UpdateStatus(source_id, "Worker-A1", 1, p2p::SOURCE_STATUS_READY).ok());

  ListSourcesRequest ready;
  ready.set_status_filter(p2p::SOURCE_STATUS_READY);
  auto listed = b->client->ListSources(ready);
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  const SourceInstanceRef& ref = (*listed)[0];
  EXPECT_EQ(ref.mx_source_id(), source_id);
  EXPECT_EQ(ref.worker_id(), "Worker-A1");
  EXPECT_EQ(ref.model_name(), "Org/Replica-Model-7B");
  EXPECT_EQ(ref.worker_rank(), 1u);
  EXPECT_EQ(ref.accelerator(), "cuda");

  auto via_b = b->client->GetMetadata(source_id, "Worker-A1");
  ASSERT_TRUE(via_b.ok()) << via_b.status();
  EXPECT_EQ(via_b->mx_source_id(), source_id);
  EXPECT_EQ(via_b->worker_id(), "Worker-A1");
  EXPECT_EQ(IdentityDiff(via_b->identity(), identity), "");
  EXPECT_EQ(via_b->identity().model_name(), "Org/Replica-Model-7B");
  EXPECT_EQ(via_b->identity().dtype(), "BFloat16");
  EXPECT_EQ(WorkerDiff(via_b->worker(), request.worker()), "");
  EXPECT_EQ(via_b->worker().worker_grpc_endpoint(), "10.1.1.1:6555/Worker-A1");
  EXPECT_EQ(via_b->worker().status(), p2p::SOURCE_STATUS_READY);
  EXPECT_EQ(via_b->worker().updated_at(), ref.updated_at());
  auto via_a = a->client->GetMetadata(source_id, "Worker-A1");
  ASSERT_TRUE(via_a.ok()) << via_a.status();
  EXPECT_EQ(via_a->worker().updated_at(), via_b->worker().updated_at());

  // A status change through B is what A serves.
  ASSERT_TRUE(b->client->UpdateStatus(source_id, "Worker-A1", 1, p2p::SOURCE_STATUS_STALE).ok());
  via_a = a->client->GetMetadata(source_id, "Worker-A1");
  ASSERT_TRUE(via_a.ok()) << via_a.status();
  EXPECT_EQ(via_a->worker().status(), p2p::SOURCE_STATUS_STALE);
  auto ready_via_a = a->client->ListSources(ready);
  ASSERT_TRUE(ready_via_a.ok()) << ready_via_a.status();
  EXPECT_THAT(*ready_via_a, IsEmpty());
  ListSourcesRequest stale;
  stale.set_status_filter(p2p::SOURCE_STATUS_STALE);
  auto stale_via_a = a->client->ListSources(stale);
  ASSERT_TRUE(stale_via_a.ok()) << stale_via_a.status();
  ASSERT_EQ(stale_via_a->size(), 1u);
  EXPECT_EQ((*stale_via_a)[0].worker_id(), "Worker-A1");

  // A re-publish through B replaces the record A serves.
  request.mutable_worker()->set_worker_grpc_endpoint("10.9.9.9:7000");
  ASSERT_TRUE(b->client->Publish(request).ok());
  via_a = a->client->GetMetadata(source_id, "Worker-A1");
  ASSERT_TRUE(via_a.ok()) << via_a.status();
  EXPECT_EQ(via_a->worker().worker_grpc_endpoint(), "10.9.9.9:7000");
  EXPECT_EQ(via_a->worker().status(), p2p::SOURCE_STATUS_INITIALIZING);

  // Unknown records are NotFound through either replica, not an error.
  EXPECT_EQ(a->client->GetMetadata(source_id, "nobody").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(b->client->UpdateStatus(source_id, "nobody", 0, p2p::SOURCE_STATUS_READY).code(),
            absl::StatusCode::kNotFound);
}

// ---------------------------------------------------------------------------------------------
// 2. Reapers on both replicas

// Heartbeat timeout 1 s against 100 ms heartbeats: a live publisher would have to stall ten
// intervals to be marked STALE. The STALE window of a dead worker (gc 800 ms) is 40 of the
// 20 ms polls below, so it is observed.
TEST_F(RedisReplicasTest, ReapersOnBothReplicasExpireDeadWorkersOnceAndSpareLiveOnes) {
  ASSERT_NO_FATAL_FAILURE(StartRedis());
  const std::vector<std::string> reaper = {
      "--reaper-scan-interval", "100ms", "--heartbeat-timeout", "1s", "--gc-timeout", "800ms"};
  Replica* a = StartReplica(reaper);
  ASSERT_NE(a, nullptr);
  Replica* b = StartReplica(reaper);
  ASSERT_NE(b, nullptr);

  const SourceIdentity identity = Identity("Org/Reaper-Model");
  const std::string source_id = *ComputeMxSourceId(identity);

  // Dead workers: published, never refreshed. Two marked READY (through A and through B), one
  // left INITIALIZING (its publisher died before its first heartbeat).
  struct Dead {
    std::string worker_id;
    Replica* via;
    bool ready;
    bool seen_stale = false;
    bool gone = false;
  };
  std::vector<Dead> dead = {
      {"dead-ready-a", a, true}, {"dead-ready-b", b, true}, {"dead-initializing", a, false}};
  for (uint32_t i = 0; i < dead.size(); ++i) {
    ASSERT_TRUE(dead[i].via->client->Publish(Request(identity, dead[i].worker_id, i, 1)).ok());
    if (dead[i].ready) {
      ASSERT_TRUE(
          dead[i]
              .via->client->UpdateStatus(source_id, dead[i].worker_id, i, p2p::SOURCE_STATUS_READY)
              .ok());
    }
  }

  // Live workers: one publisher heartbeating through each replica.
  auto live_a = StartPublisher(PublisherFor(a->client.get(), identity, "live-a", 10));
  ASSERT_NE(live_a, nullptr);
  auto live_b = StartPublisher(PublisherFor(b->client.get(), identity, "live-b", 11));
  ASSERT_NE(live_b, nullptr);

  // Watch the live workers continuously, alternating replicas: READY in GetMetadata and listed
  // as READY, every time.
  ErrorLog watch_errors;
  std::atomic<int> watch_checks{0};
  std::jthread watcher([&](std::stop_token stop) {
    ListSourcesRequest ready;
    ready.set_status_filter(p2p::SOURCE_STATUS_READY);
    for (int i = 0; !stop.stop_requested(); ++i) {
      Replica* r = i % 2 == 0 ? a : b;
      const char* name = i % 2 == 0 ? "A" : "B";
      for (const char* w : {"live-a", "live-b"}) {
        auto got = r->client->GetMetadata(source_id, w);
        if (!got.ok()) {
          watch_errors.Add(
              absl::StrCat("GetMetadata ", w, " via ", name, ": ", got.status().ToString()));
        } else if (got->worker().status() != p2p::SOURCE_STATUS_READY) {
          watch_errors.Add(absl::StrCat(w, " via ", name, " has status ",
                                        p2p::SourceStatus_Name(got->worker().status())));
        }
      }
      auto listed = r->client->ListSources(ready);
      if (!listed.ok()) {
        watch_errors.Add(absl::StrCat("ListSources via ", name, ": ", listed.status().ToString()));
      } else {
        for (const char* w : {"live-a", "live-b"}) {
          if (!Contains(*listed, source_id, w)) {
            watch_errors.Add(absl::StrCat(w, " missing from READY listing via ", name));
          }
        }
      }
      watch_checks.fetch_add(1);
      absl::SleepFor(absl::Milliseconds(20));
    }
  });
  const absl::Time watch_start = absl::Now();

  // Each dead worker turns STALE, then disappears, through both replicas' eyes.
  const bool all_gone = WaitFor(
      [&] {
        bool done = true;
        for (Dead& d : dead) {
          if (d.gone) continue;
          auto got = b->client->GetMetadata(source_id, d.worker_id);
          if (got.ok()) {
            if (got->worker().status() == p2p::SOURCE_STATUS_STALE) d.seen_stale = true;
            done = false;
          } else if (got.status().code() == absl::StatusCode::kNotFound) {
            d.gone = true;
          } else {
            ADD_FAILURE() << got.status();
            done = false;
          }
        }
        return done;
      },
      absl::Seconds(10));
  ASSERT_TRUE(all_gone);
  for (const Dead& d : dead) {
    EXPECT_TRUE(d.seen_stale) << d.worker_id << " was deleted without being seen STALE first";
    EXPECT_EQ(a->client->GetMetadata(source_id, d.worker_id).status().code(),
              absl::StatusCode::kNotFound);
  }

  // Keep watching the live ones for 3 s in all (three heartbeat timeouts).
  absl::SleepFor(std::max(absl::ZeroDuration(), watch_start + absl::Seconds(3) - absl::Now()));
  watcher.request_stop();
  watcher.join();
  EXPECT_THAT(watch_errors.errors(), IsEmpty()) << watch_errors.count() << " errors";
  EXPECT_GT(watch_checks.load(), 20);
  EXPECT_EQ(live_a->failed_heartbeat_count(), 0);
  EXPECT_EQ(live_b->failed_heartbeat_count(), 0);

  // Each dead worker was marked STALE once and deleted once, across both reapers: the other
  // reaper's compare-and-set lost. The counters are updated at the end of a scan, so wait for
  // the sum, then for a few more scans to see it does not grow.
  auto sum = [&](absl::string_view name) -> int64_t {
    StatusOr<int64_t> on_a = Counter(a->process->admin_port(), name);
    StatusOr<int64_t> on_b = Counter(b->process->admin_port(), name);
    EXPECT_TRUE(on_a.ok()) << on_a.status();
    EXPECT_TRUE(on_b.ok()) << on_b.status();
    return (on_a.ok() ? *on_a : 0) + (on_b.ok() ? *on_b : 0);
  };
  const int64_t dead_count = static_cast<int64_t>(dead.size());
  WaitFor([&] { return sum("ferry_reaper_deleted_total") >= dead_count; }, absl::Seconds(3));
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(sum("ferry_reaper_deleted_total"), dead_count);
  EXPECT_EQ(sum("ferry_reaper_marked_stale_total"), dead_count);
  EXPECT_EQ(sum("ferry_reaper_scan_errors_total"), 0);
  EXPECT_EQ(sum("ferry_reaper_worker_errors_total"), 0);
  for (Replica* r : {a, b}) {
    StatusOr<int64_t> scans = Counter(r->process->admin_port(), "ferry_reaper_scans_total");
    ASSERT_TRUE(scans.ok()) << scans.status();
    EXPECT_GT(*scans, 10) << "both reapers must have been scanning";
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Redis unreachable, then back

enum class Outage { kStop, kKill };

class RedisOutageTest : public RedisReplicasTest, public ::testing::WithParamInterface<Outage> {};

TEST_P(RedisOutageTest, FailsFastGoesNotServingAndRecoversWithoutRestart) {
  ASSERT_NO_FATAL_FAILURE(StartRedis());
  Replica* s = StartReplica();
  ASSERT_NE(s, nullptr);
  const std::string url = redis_->url();
  const pid_t server_pid = s->process->pid();

  const SourceIdentity identity = Identity("Org/Outage-Model");
  const std::string source_id = *ComputeMxSourceId(identity);
  auto publisher = StartPublisher(PublisherFor(s->client.get(), identity, "survivor", 0));
  ASSERT_NE(publisher, nullptr);
  ListSourcesRequest ready;
  ready.set_status_filter(p2p::SOURCE_STATUS_READY);
  auto listed_ready = [&] {
    auto refs = s->client->ListSources(ready);
    return refs.ok() && Contains(*refs, source_id, "survivor");
  };
  ASSERT_TRUE(listed_ready());

  const absl::Time down = absl::Now();
  ASSERT_TRUE((GetParam() == Outage::kStop ? redis_->Stop() : redis_->Kill()).ok());

  // Every P2P RPC answers UNAVAILABLE within its deadline, naming the store.
  auto expect_unavailable = [&](const char* rpc, const grpc::Status& st, absl::Duration took) {
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << rpc << ": " << st.error_message();
    EXPECT_THAT(st.error_message(), HasSubstr(absl::StrCat("metadata store ", url))) << rpc;
    EXPECT_THAT(st.error_message(), HasSubstr(absl::StrCat("redis store ", url, " unreachable")))
        << rpc;
    EXPECT_LT(took, kRpcDeadline) << rpc;
  };
  {
    p2p::PublishMetadataResponse resp;
    const absl::Time t = absl::Now();
    grpc::Status st =
        s->p2p->PublishMetadata(Context().get(), Request(identity, "during-outage", 0, 1), &resp);
    expect_unavailable("PublishMetadata", st, absl::Now() - t);
  }
  {
    p2p::ListSourcesResponse resp;
    const absl::Time t = absl::Now();
    grpc::Status st = s->p2p->ListSources(Context().get(), ready, &resp);
    expect_unavailable("ListSources", st, absl::Now() - t);
  }
  {
    p2p::GetMetadataRequest req;
    req.set_mx_source_id(source_id);
    req.set_worker_id("survivor");
    p2p::GetMetadataResponse resp;
    const absl::Time t = absl::Now();
    grpc::Status st = s->p2p->GetMetadata(Context().get(), req, &resp);
    expect_unavailable("GetMetadata", st, absl::Now() - t);
  }
  {
    p2p::UpdateStatusRequest req;
    req.set_mx_source_id(source_id);
    req.set_worker_id("survivor");
    req.set_status(p2p::SOURCE_STATUS_READY);
    p2p::UpdateStatusResponse resp;
    const absl::Time t = absl::Now();
    grpc::Status st = s->p2p->UpdateStatus(Context().get(), req, &resp);
    expect_unavailable("UpdateStatus", st, absl::Now() - t);
  }
  // What a MetadataClient user sees: Unavailable, naming the RPC, the server and the store.
  {
    auto refs = s->client->ListSources(ready);
    EXPECT_EQ(refs.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(std::string(refs.status().message()),
                StartsWith(absl::StrCat("ListSources to ", s->process->address(),
                                        " failed: UNAVAILABLE: metadata store ", url)));
  }
  // ModelExpress's health RPC still answers, with the cause.
  {
    ::model_express::health::HealthRequest req;
    ::model_express::health::HealthResponse resp;
    grpc::Status st = s->mx_health->GetHealth(Context().get(), req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_THAT(resp.status(), StartsWith(absl::StrCat("unavailable: redis store ", url)));
  }

  // Health turns NOT_SERVING within 3 s; /healthz says 503 and why.
  ASSERT_TRUE(
      WaitFor([&] { return HealthCheck(*s) == health_v1::HealthCheckResponse::NOT_SERVING; },
              down + absl::Seconds(3) - absl::Now()))
      << "grpc.health.v1 still " << HealthCheck(*s) << " after " << absl::Now() - down;
  EXPECT_EQ(HealthCheck(*s, "model_express.p2p.P2pService"),
            health_v1::HealthCheckResponse::NOT_SERVING);
  {
    auto healthz = HttpGet(s->process->admin_port(), "/healthz");
    ASSERT_TRUE(healthz.ok()) << healthz.status();
    EXPECT_EQ(healthz->status, 503);
    EXPECT_THAT(healthz->body, StartsWith(absl::StrCat("store ", url, " unavailable: ")));
  }
  ASSERT_TRUE(WaitFor([&] { return publisher->failed_heartbeat_count() >= 1; }, absl::Seconds(3)));

  // Redis comes back on the same port, empty (persistence is off).
  ASSERT_TRUE(redis_->Restart().ok());
  const absl::Time up = absl::Now();
  ASSERT_TRUE(WaitFor([&] { return HealthCheck(*s) == health_v1::HealthCheckResponse::SERVING; },
                      absl::Seconds(3)))
      << "grpc.health.v1 still " << HealthCheck(*s) << " after " << absl::Now() - up;
  EXPECT_EQ(HealthCheck(*s, "model_express.p2p.P2pService"),
            health_v1::HealthCheckResponse::SERVING);
  {
    auto healthz = HttpGet(s->process->admin_port(), "/healthz");
    ASSERT_TRUE(healthz.ok()) << healthz.status();
    EXPECT_EQ(healthz->status, 200);
    EXPECT_EQ(healthz->body, "ok\n");
  }
  // The publisher's next heartbeat hears NotFound and publishes again: READY within a few
  // heartbeat intervals of Redis answering.
  ASSERT_TRUE(WaitFor(listed_ready, absl::Seconds(3)))
      << "failed heartbeats: " << publisher->failed_heartbeat_count();
  EXPECT_LT(absl::Now() - up, 20 * kHeartbeat);
  EXPECT_GE(publisher->republish_count(), 1);
  auto got = s->client->GetMetadata(source_id, "survivor");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->worker().status(), p2p::SOURCE_STATUS_READY);
  EXPECT_EQ(WorkerDiff(got->worker(), Worker("survivor", 0, 2)), "");
  EXPECT_EQ(got->identity().model_name(), "Org/Outage-Model");
  // The same server process did all of it.
  EXPECT_TRUE(s->process->running());
  EXPECT_EQ(s->process->pid(), server_pid);
}

INSTANTIATE_TEST_SUITE_P(StopOrKill, RedisOutageTest,
                         ::testing::Values(Outage::kStop, Outage::kKill),
                         [](const ::testing::TestParamInfo<Outage>& info) {
                           return info.param == Outage::kStop ? "Stop" : "Kill";
                         });

// ---------------------------------------------------------------------------------------------
// 4. Redis SIGKILLed in the middle of a stream of publishes

// Worker "crash-T-I": thread T's I-th publish. Two sources shared by all threads, so that
// concurrent writes meet in the same source hash; the tensor count varies with I.
PublishMetadataRequest CrashRequest(int thread, int i) {
  return Request(Identity(absl::StrCat("Org/Crash-", thread % 2)),
                 absl::StrCat("crash-", thread, "-", i), static_cast<uint32_t>(thread), 1 + i % 7);
}

TEST_F(RedisReplicasTest, RedisKilledDuringPublishesLeavesNoHalfWrittenWorker) {
  // Durable: every write Redis acknowledged is on disk before the reply leaves Redis.
  ASSERT_NO_FATAL_FAILURE(
      StartRedis({.extra_args = {"--appendonly", "yes", "--appendfsync", "always"}}));
  Replica* s = StartReplica();
  ASSERT_NE(s, nullptr);
  const std::string url = redis_->url();

  constexpr int kThreads = 4;
  struct Outcome {
    std::string worker_id;
    grpc::StatusCode code;
    bool success;  // the response's success flag, when code is OK
    std::string message;
    absl::Duration took;
  };
  std::vector<std::vector<Outcome>> outcomes(kThreads);
  std::atomic<int> acknowledged{0};
  std::atomic<int> failed{0};
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t](std::stop_token stop) {
        for (int i = 0; !stop.stop_requested(); ++i) {
          const PublishMetadataRequest req = CrashRequest(t, i);
          p2p::PublishMetadataResponse resp;
          const absl::Time start = absl::Now();
          grpc::Status st = s->p2p->PublishMetadata(Context().get(), req, &resp);
          Outcome o{req.worker_id(), st.error_code(), resp.success(),
                    st.ok() ? resp.message() : st.error_message(), absl::Now() - start};
          if (st.ok() && resp.success()) {
            acknowledged.fetch_add(1);
          } else {
            failed.fetch_add(1);
            absl::SleepFor(absl::Milliseconds(5));  // do not spin while Redis is down
          }
          outcomes[t].push_back(std::move(o));
        }
      });
    }
    ASSERT_TRUE(WaitFor([&] { return acknowledged.load() >= 100; }, absl::Seconds(20)));
    ASSERT_TRUE(redis_->Kill().ok());
    const int at_kill = acknowledged.load();
    ASSERT_TRUE(WaitFor([&] { return failed.load() >= 2 * kThreads; }, absl::Seconds(5)));
    EXPECT_LE(acknowledged.load() - at_kill, kThreads)
        << "publishes kept succeeding with Redis dead (at most one in flight per thread may "
           "have been acknowledged just before the kill)";
    ASSERT_TRUE(redis_->Restart().ok());
    const int at_restart = acknowledged.load();
    ASSERT_TRUE(WaitFor([&] { return acknowledged.load() >= at_restart + 20; }, absl::Seconds(10)));
    for (std::jthread& t : threads) t.request_stop();
  }  // joins

  // Every publish either succeeded or failed with UNAVAILABLE naming the store, in time.
  std::set<std::string> acked;
  std::set<std::string> sent;
  int unavailable = 0;
  std::vector<std::string> unexpected;
  for (const auto& per_thread : outcomes) {
    for (const Outcome& o : per_thread) {
      sent.insert(o.worker_id);
      EXPECT_LT(o.took, kRpcDeadline) << o.worker_id;
      if (o.code == grpc::StatusCode::OK && o.success) {
        acked.insert(o.worker_id);
      } else if (o.code == grpc::StatusCode::UNAVAILABLE &&
                 absl::StrContains(o.message, absl::StrCat("metadata store ", url))) {
        ++unavailable;
      } else if (unexpected.size() < 10) {
        unexpected.push_back(
            absl::StrCat(o.worker_id, ": code ", o.code, " success ", o.success, ": ", o.message));
      }
    }
  }
  EXPECT_THAT(unexpected, IsEmpty());
  EXPECT_GE(unavailable, 2 * kThreads);
  EXPECT_EQ(static_cast<int>(acked.size()), acknowledged.load());

  // Every worker listed is whole: GetMetadata returns exactly what its publish sent. And every
  // acknowledged publish is listed.
  auto listed = s->client->ListSources(ListSourcesRequest());
  ASSERT_TRUE(listed.ok()) << listed.status();
  std::set<std::string> present;
  int checked = 0;
  for (const SourceInstanceRef& ref : *listed) {
    present.insert(ref.worker_id());
    // A failed publish may still have been applied (Redis died before its reply), but nothing
    // that was never sent may appear.
    EXPECT_TRUE(sent.contains(ref.worker_id())) << ref.worker_id();
    int thread = -1, i = -1;
    std::vector<std::string> parts = absl::StrSplit(ref.worker_id(), '-');
    ASSERT_EQ(parts.size(), 3u) << ref.worker_id();
    ASSERT_TRUE(absl::SimpleAtoi(parts[1], &thread) && absl::SimpleAtoi(parts[2], &i))
        << ref.worker_id();
    const PublishMetadataRequest sent = CrashRequest(thread, i);
    EXPECT_EQ(ref.mx_source_id(), *ComputeMxSourceId(sent.identity())) << ref.worker_id();
    EXPECT_EQ(ref.model_name(), sent.identity().model_name()) << ref.worker_id();
    auto got = s->client->GetMetadata(ref.mx_source_id(), ref.worker_id());
    ASSERT_TRUE(got.ok()) << ref.worker_id() << ": " << got.status();
    EXPECT_EQ(IdentityDiff(got->identity(), sent.identity()), "") << ref.worker_id();
    EXPECT_EQ(WorkerDiff(got->worker(), sent.worker()), "") << ref.worker_id();
    EXPECT_EQ(got->worker().status(), p2p::SOURCE_STATUS_INITIALIZING) << ref.worker_id();
    ++checked;
  }
  std::vector<std::string> lost;
  for (const std::string& w : acked) {
    if (!present.contains(w)) lost.push_back(w);
  }
  EXPECT_THAT(lost, IsEmpty()) << "acknowledged publishes missing after the Redis crash";
  EXPECT_GE(checked, static_cast<int>(acked.size()));
}

// ---------------------------------------------------------------------------------------------
// 5. kill -9 of one replica under load

// Heartbeat timeout 2 s: A's workers go without a heartbeat from A's death until they are
// re-homed on B (well under a second), so only a lost record could drop them.
TEST_F(RedisReplicasTest, KillingOneReplicaUnderLoadLosesNothing) {
  ASSERT_NO_FATAL_FAILURE(StartRedis());
  const std::vector<std::string> flags = {"--reaper-scan-interval", "200ms", "--heartbeat-timeout",
                                          "2s"};
  Replica* a = StartReplica(flags);
  ASSERT_NE(a, nullptr);
  Replica* b = StartReplica(flags);
  ASSERT_NE(b, nullptr);

  const SourceIdentity identity = Identity("Org/Failover-Model");
  const std::string source_id = *ComputeMxSourceId(identity);
  constexpr int kPerReplica = 3;
  std::vector<std::string> on_a, on_b, all;
  for (int i = 0; i < kPerReplica; ++i) {
    on_a.push_back(absl::StrCat("via-a-", i));
    on_b.push_back(absl::StrCat("via-b-", i));
  }
  all = on_a;
  all.insert(all.end(), on_b.begin(), on_b.end());
  auto rank_of = [&](size_t index) { return static_cast<uint32_t>(index); };

  // A's publishers are re-homed below; their clients outlive them.
  std::unique_ptr<MetadataClient> rehome_client = NewClient(b->process->address());
  ASSERT_NE(rehome_client, nullptr);
  std::vector<std::unique_ptr<Publisher>> publishers_a, publishers_b, rehomed;
  for (size_t i = 0; i < on_a.size(); ++i) {
    publishers_a.push_back(
        StartPublisher(PublisherFor(a->client.get(), identity, on_a[i], rank_of(i))));
    ASSERT_NE(publishers_a.back(), nullptr);
    publishers_b.push_back(
        StartPublisher(PublisherFor(b->client.get(), identity, on_b[i], rank_of(on_a.size() + i))));
    ASSERT_NE(publishers_b.back(), nullptr);
  }

  // The reader, through B only: every listing holds all workers (re-homing re-publishes, so a
  // re-homed worker is briefly INITIALIZING, but never absent), B's own workers are always
  // listed READY, and GetMetadata always finds the record.
  ErrorLog reader_errors;
  std::atomic<int> reads{0};
  std::jthread reader([&](std::stop_token stop) {
    ListSourcesRequest ready;
    ready.set_status_filter(p2p::SOURCE_STATUS_READY);
    for (size_t n = 0; !stop.stop_requested(); ++n) {
      auto listed = b->client->ListSources(ListSourcesRequest());
      if (!listed.ok()) {
        reader_errors.Add(absl::StrCat("ListSources via B: ", listed.status().ToString()));
      } else {
        for (const std::string& w : all) {
          if (!Contains(*listed, source_id, w)) reader_errors.Add(absl::StrCat(w, " not listed"));
        }
      }
      auto listed_ready = b->client->ListSources(ready);
      if (!listed_ready.ok()) {
        reader_errors.Add(
            absl::StrCat("ListSources(READY) via B: ", listed_ready.status().ToString()));
      } else {
        for (const std::string& w : on_b) {
          if (!Contains(*listed_ready, source_id, w)) {
            reader_errors.Add(absl::StrCat(w, " not listed READY"));
          }
        }
      }
      const std::string& w = all[n % all.size()];
      auto got = b->client->GetMetadata(source_id, w);
      if (!got.ok())
        reader_errors.Add(absl::StrCat("GetMetadata ", w, " via B: ", got.status().ToString()));
      reads.fetch_add(1);
      absl::SleepFor(absl::Milliseconds(10));
    }
  });

  absl::SleepFor(absl::Milliseconds(500));  // load runs on both replicas
  a->process->Kill();

  // A's publishers notice; B's do not.
  ASSERT_TRUE(WaitFor(
      [&] {
        for (const auto& p : publishers_a) {
          if (p->failed_heartbeat_count() == 0) return false;
        }
        return true;
      },
      absl::Seconds(5)));
  // Right after A's death every record is still there, READY, through B.
  for (const std::string& w : all) {
    auto got = b->client->GetMetadata(source_id, w);
    ASSERT_TRUE(got.ok()) << w << ": " << got.status();
    EXPECT_EQ(got->worker().status(), p2p::SOURCE_STATUS_READY) << w;
  }
  // Re-home A's workers on B: same worker ids, heartbeats through B from now on.
  for (size_t i = 0; i < publishers_a.size(); ++i) {
    publishers_a[i]->Stop();  // its STALE mark goes to the dead A and is lost, as it should be
    rehomed.push_back(
        StartPublisher(PublisherFor(rehome_client.get(), identity, on_a[i], rank_of(i))));
    ASSERT_NE(rehomed.back(), nullptr);
  }
  const absl::Time rehomed_at = absl::Now();
  // Past one heartbeat timeout: only heartbeats through B keep all of them READY now.
  absl::SleepFor(absl::Milliseconds(2500));
  reader.request_stop();
  reader.join();
  EXPECT_THAT(reader_errors.errors(), IsEmpty()) << reader_errors.count() << " errors";
  EXPECT_GT(reads.load(), 20);

  ListSourcesRequest ready;
  ready.set_status_filter(p2p::SOURCE_STATUS_READY);
  auto listed = b->client->ListSources(ready);
  ASSERT_TRUE(listed.ok()) << listed.status();
  std::vector<std::string> ready_ids;
  for (const SourceInstanceRef& r : *listed) ready_ids.push_back(r.worker_id());
  EXPECT_THAT(ready_ids, UnorderedElementsAreArray(all));
  for (size_t i = 0; i < all.size(); ++i) {
    auto got = b->client->GetMetadata(source_id, all[i]);
    ASSERT_TRUE(got.ok()) << all[i] << ": " << got.status();
    EXPECT_EQ(got->worker().status(), p2p::SOURCE_STATUS_READY) << all[i];
    EXPECT_EQ(WorkerDiff(got->worker(), Worker(all[i], rank_of(i), 2)), "") << all[i];
    EXPECT_GE(got->worker().updated_at(), absl::ToUnixMillis(rehomed_at)) << all[i];
  }
  for (const auto& p : publishers_b) EXPECT_EQ(p->failed_heartbeat_count(), 0);
  for (const auto& p : rehomed) EXPECT_EQ(p->failed_heartbeat_count(), 0);
  EXPECT_TRUE(b->process->running());
}

}  // namespace
}  // namespace ferry::testing
