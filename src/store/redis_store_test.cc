// RedisStore against real redis-server processes on loopback ports: the conformance suite, and
// what only a networked store can get wrong (Redis down, hung, restarted or killed mid-write;
// several server replicas on one Redis).
#include "store/redis_store.h"

#include <atomic>
#include <latch>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "store/store_conformance.h"
#include "store/testing/redis_server.h"

namespace ferry::store {
namespace {

using ferry::testing::RedisServer;
using ferry::testing::RedisServerOptions;
using ::model_express::p2p::SOURCE_STATUS_INITIALIZING;
using ::model_express::p2p::SOURCE_STATUS_READY;
using ::model_express::p2p::SOURCE_STATUS_STALE;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

std::string Message(const Status& s) { return std::string(s.message()); }

// One server for the conformance suite, started on first use and killed at exit.
RedisServer* SharedServer() {
  static RedisServer* const server = [] {
    auto started = RedisServer::Start();
    if (!started.ok()) {
      ADD_FAILURE() << started.status();
      return static_cast<RedisServer*>(nullptr);
    }
    return started->release();
  }();
  return server;
}

struct SharedServerCleanup {
  ~SharedServerCleanup() { delete SharedServer(); }
};

std::unique_ptr<RedisStore> MustCreate(const std::string& url) {
  RedisStoreOptions options;
  options.url = url;
  auto store = RedisStore::Create(options);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

std::unique_ptr<MetadataStore> FreshConformanceStore() {
  static SharedServerCleanup cleanup;
  RedisServer* server = SharedServer();
  if (server == nullptr) return nullptr;
  auto flushed = server->Call({"FLUSHALL"});
  if (!flushed.ok()) {
    ADD_FAILURE() << flushed.status();
    return nullptr;
  }
  return MustCreate(server->url(0));
}

INSTANTIATE_TEST_SUITE_P(Redis, StoreConformanceTest,
                         ::testing::Values(StoreFactoryParam{"redis", FreshConformanceStore}),
                         [](const auto& info) { return info.param.name; });

PublishRecord Record(const std::string& source, const std::string& worker_id, uint32_t rank,
                     SourceStatus status = SOURCE_STATUS_READY, int64_t updated_at = 1000) {
  return SampleRecord(source, worker_id, rank, status, updated_at);
}

uint64_t VersionOf(MetadataStore& store, const std::string& source, const std::string& worker) {
  auto list = store.ListWorkers({source});
  EXPECT_TRUE(list.ok()) << list.status();
  if (!list.ok()) return 0;
  for (const auto& s : *list) {
    if (s.worker_id == worker) return s.version;
  }
  ADD_FAILURE() << "worker " << worker << " not listed";
  return 0;
}

class RedisStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = RedisServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    store_ = MustCreate(server_->url());
    ASSERT_NE(store_, nullptr);
  }
  std::string Unreachable() const {
    return absl::StrCat("redis store redis://127.0.0.1:", server_->port(), "/0 unreachable: ");
  }

  std::unique_ptr<RedisServer> server_;
  std::unique_ptr<RedisStore> store_;
};

TEST_F(RedisStoreTest, DescribeNamesTheServerWithoutCredentials) {
  EXPECT_EQ(store_->Describe(), absl::StrCat("redis://127.0.0.1:", server_->port(), "/0"));
}

TEST_F(RedisStoreTest, KeyLayoutIsAsDocumented) {
  PublishRecord r = Record("0123456789abcdef", "w1", 2, SOURCE_STATUS_READY, 1751234567891);
  r.owner = "alice";
  ASSERT_TRUE(store_->Publish(r).ok());
  EXPECT_EQ(*server_->Call({"SMEMBERS", "ferry:sources"}), "0123456789abcdef");
  EXPECT_EQ(*server_->Call({"HGET", "ferry:src:0123456789abcdef", "identity"}),
            r.identity.SerializeAsString());
  EXPECT_EQ(*server_->Call({"HGET", "ferry:rec:0123456789abcdef:w1", "2"}),
            r.worker.SerializeAsString());
  const std::string summary = *server_->Call({"HGET", "ferry:src:0123456789abcdef", "w:w1"});
  // Numbers are strings: a millisecond clock never turns into 1.75e+12.
  EXPECT_THAT(summary, AllOf(HasSubstr(R"("u":"1751234567891")"), HasSubstr(R"("o":"alice")"),
                             HasSubstr(R"("i":"2")"), HasSubstr(R"("s":"2")"),
                             HasSubstr(R"("a":"cuda")"), Not(HasSubstr("e+"))));
  // The version counter starts at the clock in microseconds, so it does not repeat after a
  // restart that lost it.
  const uint64_t version = VersionOf(*store_, "0123456789abcdef", "w1");
  EXPECT_GT(version, 1'600'000'000'000'000u);
  EXPECT_EQ(*server_->Call({"GET", "ferry:version"}), absl::StrCat(version));
  EXPECT_THAT(summary, HasSubstr(absl::StrCat(R"("v":")", version, R"(")")));
}

TEST_F(RedisStoreTest, LargeClockValuesAndVersionsRoundTripExactly) {
  const int64_t t = 1751234567891;
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0, SOURCE_STATUS_READY, t)).ok());
  ASSERT_TRUE(store_->UpdateStatus({"s", "w", 0u, SOURCE_STATUS_READY, t + 1, {}}).ok());
  auto got = store_->GetWorker("s", "w");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->worker.updated_at(), t + 1);
  auto list = store_->ListWorkers({});
  ASSERT_TRUE(list.ok());
  EXPECT_EQ((*list)[0].updated_at, t + 1);
  EXPECT_EQ((*list)[0].version, got->version);
  EXPECT_TRUE(store_->RemoveWorker("s", "w", got->version).ok());
}

TEST_F(RedisStoreTest, DatabasesAreSeparate) {
  auto other = MustCreate(server_->url(3));
  ASSERT_NE(other, nullptr);
  EXPECT_EQ(other->Describe(), absl::StrCat("redis://127.0.0.1:", server_->port(), "/3"));
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0)).ok());
  EXPECT_EQ(other->ListWorkers({})->size(), 0u);
  EXPECT_EQ(store_->ListWorkers({})->size(), 1u);
}

TEST_F(RedisStoreTest, RejectsTextThatIsNotUtf8) {
  PublishRecord r = Record("s", "w", 0);
  r.worker.set_accelerator("\xff");
  Status st = store_->Publish(r);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(st), HasSubstr("accelerator"));
  EXPECT_EQ(store_->GetWorker("s", "w").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(RedisStoreTest, CorruptSummaryIsDataLossNotNotFound) {
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0)).ok());
  ASSERT_TRUE(server_->Call({"HSET", "ferry:src:s", "w:w", "{not json"}).ok());
  auto list = store_->ListWorkers({});
  EXPECT_EQ(list.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(list.status()), HasSubstr("w:w"));
  auto got = store_->GetWorker("s", "w");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(got.status()), HasSubstr("remove the worker"));
  EXPECT_EQ(store_->UpdateStatus({"s", "w", 0u, SOURCE_STATUS_READY, 2, {}}).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(store_->Publish(Record("s", "w", 0)).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store_->RemoveWorker("s", "w", 1).code(), absl::StatusCode::kDataLoss);
  // An admin may replace it; so may a remove without a version.
  PublishRecord admin = Record("s", "w", 1);
  admin.override_owner = true;
  ASSERT_TRUE(store_->Publish(admin).ok());
  auto fixed = store_->GetWorker("s", "w");
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  EXPECT_EQ(fixed->worker.worker_rank(), 1u);  // the corrupt worker's rank 0 is gone
  ASSERT_TRUE(server_->Call({"HSET", "ferry:src:s", "w:w", "[]"}).ok());
  EXPECT_TRUE(store_->RemoveWorker("s", "w", std::nullopt).ok());
  EXPECT_TRUE(store_->ListWorkers({})->empty());
}

TEST_F(RedisStoreTest, UpdateStatusIsOneEvalsha) {
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0)).ok());
  // The first run of a script on a Redis sends it in full; after that it is cached.
  ASSERT_TRUE(store_->UpdateStatus({"s", "w", 0u, SOURCE_STATUS_READY, 1500, {}}).ok());
  ASSERT_TRUE(server_->Call({"CONFIG", "RESETSTAT"}).ok());
  ASSERT_TRUE(store_->UpdateStatus({"s", "w", 0u, SOURCE_STATUS_READY, 2000, {}}).ok());
  const std::string stats = *server_->Call({"INFO", "commandstats"});
  EXPECT_THAT(stats, HasSubstr("cmdstat_evalsha:calls=1,"));
  EXPECT_THAT(stats, AllOf(Not(HasSubstr("cmdstat_eval:")), Not(HasSubstr("cmdstat_ping")),
                           Not(HasSubstr("cmdstat_select")), Not(HasSubstr("cmdstat_script"))));
}

TEST_F(RedisStoreTest, AuthenticatesWithThePasswordInTheUrl) {
  RedisServerOptions options;
  options.password = "s3cret";
  auto locked = RedisServer::Start(options);
  ASSERT_TRUE(locked.ok()) << locked.status();
  const std::string hostport = absl::StrCat("127.0.0.1:", (*locked)->port());
  EXPECT_EQ((*locked)->url(), absl::StrCat("redis://:s3cret@", hostport, "/0"));
  auto good = MustCreate((*locked)->url());
  ASSERT_NE(good, nullptr);
  EXPECT_EQ(good->Describe(), absl::StrCat("redis://", hostport, "/0"));
  EXPECT_TRUE(good->Publish(Record("s", "w", 0)).ok());
  EXPECT_EQ(*(*locked)->Call({"SCARD", "ferry:sources"}), "1");
  auto wrong = MustCreate(absl::StrCat("redis://:nope@", hostport, "/0"));
  ASSERT_NE(wrong, nullptr);
  Status st = wrong->Ping();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Message(st),
              AllOf(HasSubstr("refused AUTH"), HasSubstr("check --store"), Not(HasSubstr("nope"))));
  auto none = MustCreate(absl::StrCat("redis://", hostport, "/0"));
  ASSERT_NE(none, nullptr);
  for (const Status& anonymous : {none->Ping(), none->Publish(Record("s", "w2", 0))}) {
    EXPECT_EQ(anonymous.code(), absl::StatusCode::kUnavailable) << anonymous;
    EXPECT_THAT(Message(anonymous),
                AllOf(HasSubstr("requires a password"), HasSubstr("redis://:PASSWORD@")));
  }
}

// Every method, when Redis is down: Unavailable, naming the store, within a bound.
void ExpectAllUnavailable(MetadataStore& store, const std::string& unreachable) {
  std::vector<std::pair<std::string, Status>> results;
  const absl::Time start = absl::Now();
  results.emplace_back("Publish", store.Publish(Record("s", "w", 0)));
  results.emplace_back("ListWorkers", store.ListWorkers({}).status());
  results.emplace_back("ListWorkers(source)", store.ListWorkers({std::string("s")}).status());
  results.emplace_back("GetWorker", store.GetWorker("s", "w").status());
  results.emplace_back("UpdateStatus",
                       store.UpdateStatus({"s", "w", 0u, SOURCE_STATUS_READY, 1, {}}));
  results.emplace_back("RemoveWorker", store.RemoveWorker("s", "w", std::nullopt));
  results.emplace_back("Ping", store.Ping());
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  for (const auto& [what, st] : results) {
    EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << what << ": " << st;
    EXPECT_THAT(Message(st), AllOf(HasSubstr(unreachable), HasSubstr("Connection refused"),
                                   HasSubstr("; check --store or start Redis")))
        << what;
  }
}

TEST_F(RedisStoreTest, UnreachableIsUnavailableQuicklyAndRecoversWithoutRecreating) {
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0)).ok());
  ASSERT_TRUE(server_->Kill().ok());
  ExpectAllUnavailable(*store_, Unreachable());
  ASSERT_TRUE(server_->Restart().ok());  // same port, empty: persistence is off
  EXPECT_TRUE(store_->Ping().ok());
  EXPECT_EQ(store_->GetWorker("s", "w").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0)).ok());
  EXPECT_TRUE(store_->GetWorker("s", "w").ok());
}

TEST_F(RedisStoreTest, CreatedWhileRedisIsDownThenServesOnceItIsUp) {
  ASSERT_TRUE(server_->Kill().ok());
  auto late = MustCreate(server_->url());
  ASSERT_NE(late, nullptr);
  ExpectAllUnavailable(*late, Unreachable());
  ASSERT_TRUE(server_->Restart().ok());
  EXPECT_TRUE(late->Publish(Record("s", "w", 0)).ok());
}

TEST_F(RedisStoreTest, HungRedisAnswersUnavailableWithinTheCommandTimeout) {
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0)).ok());
  ASSERT_TRUE(server_->Pause().ok());
  const absl::Time start = absl::Now();
  Status st = store_->UpdateStatus({"s", "w", 0u, SOURCE_STATUS_READY, 2, {}});
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(server_->Resume().ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_THAT(Message(st),
              AllOf(HasSubstr(Unreachable()), HasSubstr("no reply to EVALSHA within 2s")));
  EXPECT_GE(took, absl::Milliseconds(1900));
  EXPECT_LT(took, absl::Seconds(5));
  // The connection that timed out is dropped; the next call uses a fresh one.
  EXPECT_TRUE(store_->GetWorker("s", "w").ok());
}

TEST_F(RedisStoreTest, RestartLosesRecordsThenReadsAreNotFoundAndWritesReloadScripts) {
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0)).ok());
  ASSERT_TRUE(store_->GetWorker("s", "w").ok());
  const uint64_t reloads = store_->script_reloads();
  ASSERT_TRUE(server_->Restart().ok());
  // A heartbeat after the restart: NotFound, so the publisher re-publishes.
  EXPECT_EQ(store_->UpdateStatus({"s", "w", 0u, SOURCE_STATUS_READY, 5, {}}).code(),
            absl::StatusCode::kNotFound);
  EXPECT_GT(store_->script_reloads(), reloads);  // EVALSHA met NOSCRIPT and fell back to EVAL
  EXPECT_EQ(store_->GetWorker("s", "w").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store_->ListWorkers({})->empty());
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0)).ok());
  EXPECT_TRUE(store_->GetWorker("s", "w").ok());
  EXPECT_TRUE(store_->UpdateStatus({"s", "w", 0u, SOURCE_STATUS_READY, 6, {}}).ok());
  EXPECT_TRUE(store_->RemoveWorker("s", "w", std::nullopt).ok());
}

TEST_F(RedisStoreTest, ScriptFlushIsHandledByEveryScript) {
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0)).ok());
  const uint64_t reloads = store_->script_reloads();
  ASSERT_TRUE(server_->Call({"SCRIPT", "FLUSH"}).ok());
  ASSERT_TRUE(store_->GetWorker("s", "w").ok());
  ASSERT_TRUE(server_->Call({"SCRIPT", "FLUSH"}).ok());
  ASSERT_TRUE(store_->UpdateStatus({"s", "w", 0u, SOURCE_STATUS_STALE, 5, {}}).ok());
  ASSERT_TRUE(server_->Call({"SCRIPT", "FLUSH"}).ok());
  ASSERT_TRUE(store_->Publish(Record("s", "w2", 0)).ok());
  ASSERT_TRUE(server_->Call({"SCRIPT", "FLUSH"}).ok());
  ASSERT_TRUE(store_->RemoveWorker("s", "w", std::nullopt).ok());
  EXPECT_EQ(store_->script_reloads(), reloads + 4);
}

TEST_F(RedisStoreTest, TwoInstancesOnOneRedisActAsOneStore) {
  auto b = MustCreate(server_->url());
  ASSERT_NE(b, nullptr);
  PublishRecord r = Record("s", "w", 0, SOURCE_STATUS_INITIALIZING);
  r.owner = "alice";
  ASSERT_TRUE(store_->Publish(r).ok());
  auto list = b->ListWorkers({});
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].owner, "alice");
  auto got = b->GetWorker("s", "w");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->worker.SerializeAsString(), r.worker.SerializeAsString());
  // A heartbeat through B is seen through A at once, and ownership holds across instances.
  StatusUpdate beat{"s", "w", 0u, SOURCE_STATUS_READY, 7000, std::nullopt, "alice", false};
  ASSERT_TRUE(b->UpdateStatus(beat).ok());
  EXPECT_EQ(store_->GetWorker("s", "w")->worker.status(), SOURCE_STATUS_READY);
  beat.caller = "mallory";
  EXPECT_EQ(store_->UpdateStatus(beat).code(), absl::StatusCode::kPermissionDenied);
  ASSERT_TRUE(store_->RemoveWorker("s", "w", std::nullopt).ok());
  EXPECT_EQ(b->GetWorker("s", "w").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(b->ListWorkers({})->empty());
}

// Two replicas' reapers (or a reaper and a heartbeat) race on the same version: exactly one
// write lands; the other sees Aborted or, once the worker is gone, NotFound.
TEST_F(RedisStoreTest, ConcurrentCompareAndSetWritersExactlyOneWins) {
  auto b = MustCreate(server_->url());
  ASSERT_NE(b, nullptr);
  MetadataStore* stores[2] = {store_.get(), b.get()};
  for (int round = 0; round < 40; ++round) {
    ASSERT_TRUE(store_->Publish(Record("s", "w", 0)).ok());
    ASSERT_TRUE(store_->Publish(Record("s", "w", 1)).ok());
    for (int kind = 0; kind < 3; ++kind) {
      // kind 0: both mark stale; 1: both remove; 2: one marks stale, the other removes.
      if (kind > 0 && !store_->GetWorker("s", "w").ok()) {
        ASSERT_TRUE(store_->Publish(Record("s", "w", 0)).ok());
      }
      const uint64_t v = VersionOf(*store_, "s", "w");
      Status results[2];
      std::latch go(2);
      std::vector<std::thread> threads;
      for (int i = 0; i < 2; ++i) {
        threads.emplace_back([&, i] {
          go.arrive_and_wait();
          const bool remove = kind == 1 || (kind == 2 && i == 1);
          results[i] = remove ? stores[i]->RemoveWorker("s", "w", v)
                              : stores[i]->UpdateStatus(
                                    {"s", "w", std::nullopt, SOURCE_STATUS_STALE, 9, v, "", true});
        });
      }
      for (auto& t : threads) t.join();
      const int wins = results[0].ok() + results[1].ok();
      EXPECT_EQ(wins, 1) << "round " << round << " kind " << kind << ": " << results[0] << " / "
                         << results[1];
      for (const Status& st : results) {
        if (st.ok()) continue;
        EXPECT_TRUE(st.code() == absl::StatusCode::kAborted ||
                    st.code() == absl::StatusCode::kNotFound)
            << st;
      }
    }
    (void)store_->RemoveWorker("s", "w", std::nullopt);
  }
}

// Redis is SIGKILLed while several threads publish. With an append-only file fsynced on every
// write, what Redis acknowledged survives; each publish either fully landed or failed with
// Unavailable; and after the restart no worker exists without its record and identity.
TEST(RedisCrashTest, KillDuringPublishesLeavesNoHalfWrittenWorker) {
  RedisServerOptions options;
  options.extra_args = {"--appendonly", "yes", "--appendfsync", "always"};
  auto server_or = RedisServer::Start(options);
  ASSERT_TRUE(server_or.ok()) << server_or.status();
  RedisServer& server = **server_or;
  auto store = MustCreate(server.url());
  ASSERT_NE(store, nullptr);

  struct Outcome {
    std::string source, worker;
    uint32_t rank;
    Status status;
  };
  constexpr int kThreads = 4;
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::vector<Outcome> outcomes;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; !stop.load(); ++i) {
        PublishRecord r = Record(absl::StrCat("s", i % 3), absl::StrCat(t, "-", i), i % 2);
        for (int k = 0; k < 300; ++k) {  // ~15 KB records: writes span several packets
          auto* tensor = r.worker.mutable_tensor_source()->add_tensors();
          tensor->set_name(absl::StrCat("model.layers.", k, ".weight"));
          tensor->set_size(4096);
        }
        Status st = store->Publish(r);
        {
          std::lock_guard<std::mutex> lock(mu);
          outcomes.push_back({r.mx_source_id, r.worker_id, r.worker.worker_rank(), st});
        }
        if (!st.ok()) absl::SleepFor(absl::Milliseconds(2));
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(400));
  ASSERT_TRUE(server.Kill().ok());
  absl::SleepFor(absl::Milliseconds(200));
  ASSERT_TRUE(server.Restart().ok());  // loads the append-only file
  absl::SleepFor(absl::Milliseconds(200));
  stop = true;
  for (auto& t : threads) t.join();

  int ok = 0, unavailable = 0;
  for (const Outcome& o : outcomes) {
    auto got = store->GetWorker(o.source, o.worker);
    if (o.status.ok()) {
      ++ok;
      ASSERT_TRUE(got.ok()) << "acknowledged publish of " << o.worker << " lost: " << got.status();
    } else {
      ++unavailable;
      ASSERT_EQ(o.status.code(), absl::StatusCode::kUnavailable) << o.status;
      ASSERT_THAT(Message(o.status), HasSubstr("redis store"));
      if (!got.ok()) {
        ASSERT_EQ(got.status().code(), absl::StatusCode::kNotFound) << got.status();
        continue;
      }
    }
    // Landed: whole.
    EXPECT_EQ(got->worker.worker_rank(), o.rank);
    EXPECT_EQ(got->worker.tensor_source().tensors_size(), 300);
    ASSERT_TRUE(got->identity.has_value());
    EXPECT_EQ(got->identity->model_name(), "Org/Model-" + o.source);
  }
  EXPECT_GT(ok, 0);
  EXPECT_GT(unavailable, 0) << "the kill did not interrupt the publishes";

  // Every listed worker has its record and identity.
  auto list = store->ListWorkers({});
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_GT(list->size(), 0u);
  for (const WorkerSummary& s : *list) {
    auto got = store->GetWorker(s.mx_source_id, s.worker_id);
    ASSERT_TRUE(got.ok()) << s.worker_id << ": " << got.status();
    EXPECT_TRUE(got->identity.has_value());
    EXPECT_EQ(s.model_name, "Org/Model-" + s.mx_source_id);
  }
}

}  // namespace
}  // namespace ferry::store
