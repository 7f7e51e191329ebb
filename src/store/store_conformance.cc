#include "store/store_conformance.h"

#include <limits>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "google/protobuf/unknown_field_set.h"

namespace ferry::store {

PublishRecord SampleRecord(const std::string& source, const std::string& worker_id, uint32_t rank,
                           SourceStatus status, int64_t updated_at) {
  PublishRecord r;
  r.mx_source_id = source;
  r.identity.set_model_name("Org/Model-" + source);
  r.worker_id = worker_id;
  r.worker.set_worker_rank(rank);
  r.worker.set_status(status);
  r.worker.set_updated_at(updated_at);
  r.worker.set_worker_grpc_endpoint("10.0.0.1:6555");
  r.worker.set_accelerator("cuda");
  return r;
}

namespace {

// Short name inside the suite.
PublishRecord Record(const std::string& source, const std::string& worker_id, uint32_t rank,
                     SourceStatus status = ::model_express::p2p::SOURCE_STATUS_READY,
                     int64_t updated_at = 1000) {
  return SampleRecord(source, worker_id, rank, status, updated_at);
}

using ::model_express::p2p::SOURCE_STATUS_INITIALIZING;
using ::model_express::p2p::SOURCE_STATUS_READY;
using ::model_express::p2p::SOURCE_STATUS_STALE;
using ::testing::HasSubstr;

const WorkerSummary* FindSummary(const std::vector<WorkerSummary>& list, const std::string& src,
                                 const std::string& worker_id) {
  for (const auto& s : list) {
    if (s.mx_source_id == src && s.worker_id == worker_id) return &s;
  }
  return nullptr;
}

TEST_P(StoreConformanceTest, PublishGetRemoveRoundTrip) {
  ASSERT_TRUE(store_->Publish(Record("s1", "w1", 0)).ok());
  auto got = store_->GetWorker("s1", "w1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->worker.worker_grpc_endpoint(), "10.0.0.1:6555");
  ASSERT_TRUE(got->identity.has_value());
  EXPECT_EQ(got->identity->model_name(), "Org/Model-s1");

  ASSERT_TRUE(store_->RemoveWorker("s1", "w1", std::nullopt).ok());
  EXPECT_EQ(store_->GetWorker("s1", "w1").status().code(), absl::StatusCode::kNotFound);
  auto list = store_->ListWorkers({});
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty());
  EXPECT_EQ(store_->RemoveWorker("s1", "w1", std::nullopt).code(), absl::StatusCode::kNotFound);
}

TEST_P(StoreConformanceTest, GetReturnsLowestRankListReportsLastPublished) {
  for (uint32_t rank : {2u, 0u, 1u}) ASSERT_TRUE(store_->Publish(Record("s", "w", rank)).ok());
  auto got = store_->GetWorker("s", "w");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->worker.worker_rank(), 0u);
  auto list = store_->ListWorkers({});
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].worker_rank, 1u);
}

TEST_P(StoreConformanceTest, StatusMaskCoversEveryRank) {
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0, SOURCE_STATUS_INITIALIZING)).ok());
  ASSERT_TRUE(store_->Publish(Record("s", "w", 1, SOURCE_STATUS_READY)).ok());
  auto list = store_->ListWorkers({});
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  const uint32_t mask = (*list)[0].status_mask;
  EXPECT_TRUE(mask & (1u << SOURCE_STATUS_INITIALIZING));
  EXPECT_TRUE(mask & (1u << SOURCE_STATUS_READY));
  EXPECT_FALSE(mask & (1u << SOURCE_STATUS_STALE));
}

TEST_P(StoreConformanceTest, SummaryCarriesRepresentativeFieldsAndDerivedExtras) {
  PublishRecord r = Record("s", "w", 3, SOURCE_STATUS_READY, 4242);
  (*r.identity.mutable_extra_parameters())["training_step"] = "42";
  (*r.identity.mutable_extra_parameters())["layout_signature"] = "sig-A";
  r.owner = "alice";
  ASSERT_TRUE(store_->Publish(r).ok());
  auto list = store_->ListWorkers({});
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  const WorkerSummary& s = (*list)[0];
  EXPECT_EQ(s.worker_rank, 3u);
  EXPECT_EQ(s.status, SOURCE_STATUS_READY);
  EXPECT_EQ(s.accelerator, "cuda");
  EXPECT_EQ(s.updated_at, 4242);
  EXPECT_EQ(s.model_name, "Org/Model-s");
  EXPECT_EQ(s.training_step, 42u);
  EXPECT_EQ(s.layout_signature, "sig-A");
  EXPECT_EQ(s.owner, "alice");
}

TEST_P(StoreConformanceTest, UpdateStatusChangesOnlyExistingRanks) {
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0, SOURCE_STATUS_INITIALIZING)).ok());
  StatusUpdate u{"s", "w", 0u, SOURCE_STATUS_READY, 123, std::nullopt};
  ASSERT_TRUE(store_->UpdateStatus(u).ok());
  auto got = store_->GetWorker("s", "w");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->worker.status(), SOURCE_STATUS_READY);
  EXPECT_EQ(got->worker.updated_at(), 123);

  StatusUpdate bad_rank{"s", "w", 7u, SOURCE_STATUS_READY, 124, std::nullopt};
  Status st = store_->UpdateStatus(bad_rank);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(st.message()), HasSubstr("rank 7 not found"));
  StatusUpdate bad_worker{"s", "nobody", 0u, SOURCE_STATUS_READY, 124, std::nullopt};
  EXPECT_EQ(store_->UpdateStatus(bad_worker).code(), absl::StatusCode::kNotFound);
  StatusUpdate bad_source{"nosuch", "w", 0u, SOURCE_STATUS_READY, 124, std::nullopt};
  EXPECT_EQ(store_->UpdateStatus(bad_source).code(), absl::StatusCode::kNotFound);
  // A failed update never creates a record.
  EXPECT_EQ(store_->GetWorker("nosuch", "w").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetWorker("s", "nobody").status().code(), absl::StatusCode::kNotFound);
}

TEST_P(StoreConformanceTest, UpdateStatusWithoutRankUpdatesEveryRank) {
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0)).ok());
  ASSERT_TRUE(store_->Publish(Record("s", "w", 1)).ok());
  ASSERT_TRUE(store_->UpdateStatus({"s", "w", std::nullopt, SOURCE_STATUS_STALE, 99, {}}).ok());
  auto list = store_->ListWorkers({});
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].status_mask, 1u << SOURCE_STATUS_STALE);
  EXPECT_EQ((*list)[0].updated_at, 99);
}

TEST_P(StoreConformanceTest, CompareAndSetOnVersion) {
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0)).ok());
  auto list = store_->ListWorkers({});
  ASSERT_TRUE(list.ok());
  const uint64_t v1 = (*list)[0].version;
  // A heartbeat lands: the version moves on.
  ASSERT_TRUE(store_->UpdateStatus({"s", "w", 0u, SOURCE_STATUS_READY, 2000, {}}).ok());
  auto list2 = store_->ListWorkers({});
  ASSERT_TRUE(list2.ok());
  const uint64_t v2 = (*list2)[0].version;
  EXPECT_NE(v1, v2);
  // A writer holding the old version loses, and the record is untouched.
  Status st = store_->UpdateStatus({"s", "w", std::nullopt, SOURCE_STATUS_STALE, 3000, v1});
  EXPECT_EQ(st.code(), absl::StatusCode::kAborted) << st;
  EXPECT_EQ(store_->RemoveWorker("s", "w", v1).code(), absl::StatusCode::kAborted);
  auto got = store_->GetWorker("s", "w");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->worker.status(), SOURCE_STATUS_READY);
  EXPECT_EQ(got->worker.updated_at(), 2000);
  // The current version wins.
  EXPECT_TRUE(store_->UpdateStatus({"s", "w", std::nullopt, SOURCE_STATUS_STALE, 3000, v2}).ok());
  auto list3 = store_->ListWorkers({});
  ASSERT_TRUE(list3.ok());
  EXPECT_TRUE(store_->RemoveWorker("s", "w", (*list3)[0].version).ok());
}

TEST_P(StoreConformanceTest, RepublishReplacesRecordAndIdentity) {
  PublishRecord a = Record("s", "w", 0);
  a.worker.set_agent_name("agent-a");
  ASSERT_TRUE(store_->Publish(a).ok());
  PublishRecord b = Record("s", "w2", 0);
  b.identity.set_model_name("ORG/MODEL-S");
  ASSERT_TRUE(store_->Publish(b).ok());
  PublishRecord a2 = Record("s", "w", 0, SOURCE_STATUS_INITIALIZING);
  a2.identity = b.identity;
  a2.worker.set_agent_name("agent-a2");
  ASSERT_TRUE(store_->Publish(a2).ok());
  auto got = store_->GetWorker("s", "w");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->worker.agent_name(), "agent-a2");
  EXPECT_EQ(got->worker.status(), SOURCE_STATUS_INITIALIZING);
  EXPECT_EQ(got->identity->model_name(), "ORG/MODEL-S");  // last writer, original case
  auto list = store_->ListWorkers({});
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 2u);
  for (const auto& s : *list) EXPECT_EQ(s.model_name, "ORG/MODEL-S");
}

TEST_P(StoreConformanceTest, ListFiltersBySource) {
  ASSERT_TRUE(store_->Publish(Record("a", "w1", 0)).ok());
  ASSERT_TRUE(store_->Publish(Record("a", "w2", 0)).ok());
  ASSERT_TRUE(store_->Publish(Record("b", "w3", 0)).ok());
  auto a = store_->ListWorkers({std::string("a")});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->size(), 2u);
  EXPECT_NE(FindSummary(*a, "a", "w1"), nullptr);
  EXPECT_NE(FindSummary(*a, "a", "w2"), nullptr);
  auto none = store_->ListWorkers({std::string("zzz")});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  auto all = store_->ListWorkers({});
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 3u);
}

TEST_P(StoreConformanceTest, LargeRecordRoundTripsExactly) {
  PublishRecord r = Record("s", "w", 0);
  auto* tensors = r.worker.mutable_tensor_source()->mutable_tensors();
  for (int i = 0; i < 2000; ++i) {
    auto* t = tensors->Add();
    t->set_name(absl::StrCat("model.layers.", i, ".weight"));
    t->set_addr(0xffffffffffff0000ull + i);
    t->set_size(1ull << 40);
    t->set_dtype("torch.bfloat16");
  }
  r.worker.set_nixl_metadata(std::string("\0\1\2\xff", 4));
  ASSERT_TRUE(store_->Publish(r).ok());
  auto got = store_->GetWorker("s", "w");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->worker.SerializeAsString(), r.worker.SerializeAsString());
}

TEST_P(StoreConformanceTest, ConcurrentPublishersAllLand) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        ASSERT_TRUE(
            store_->Publish(Record(absl::StrCat("s", i % 7), absl::StrCat(t, "-", i), 0)).ok());
        (void)store_->ListWorkers({});
      }
    });
  }
  for (auto& th : threads) th.join();
  auto all = store_->ListWorkers({});
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), static_cast<size_t>(kThreads * kPerThread));
}

TEST_P(StoreConformanceTest, OwnershipGuardsRepublishAndStatusUpdates) {
  PublishRecord mine = Record("s", "w", 0);
  mine.owner = "alice";
  ASSERT_TRUE(store_->Publish(mine).ok());
  // Another principal can neither replace the record nor change its status.
  PublishRecord theirs = Record("s", "w", 0, SOURCE_STATUS_STALE);
  theirs.owner = "mallory";
  Status st = store_->Publish(theirs);
  EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("alice"));
  StatusUpdate u{"s", "w", 0u, SOURCE_STATUS_STALE, 5000, std::nullopt, "mallory", false};
  EXPECT_EQ(store_->UpdateStatus(u).code(), absl::StatusCode::kPermissionDenied);
  auto got = store_->GetWorker("s", "w");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->worker.status(), SOURCE_STATUS_READY);
  EXPECT_EQ(got->owner, "alice");
  // The owner may; an admin may, and takes the record over when it re-publishes.
  u.caller = "alice";
  EXPECT_TRUE(store_->UpdateStatus(u).ok());
  u.caller = "root";
  u.override_owner = true;
  u.status = SOURCE_STATUS_READY;
  EXPECT_TRUE(store_->UpdateStatus(u).ok());
  theirs.owner = "root";
  theirs.override_owner = true;
  EXPECT_TRUE(store_->Publish(theirs).ok());
  EXPECT_EQ(store_->GetWorker("s", "w")->owner, "root");
  // Unowned records (authentication off) are open to everyone.
  ASSERT_TRUE(store_->Publish(Record("open-source", "open", 0)).ok());
  PublishRecord anyone = Record("open-source", "open", 0);
  anyone.owner = "bob";
  EXPECT_TRUE(store_->Publish(anyone).ok());
}

// Regression: any principal could add workers under another's model identity.
TEST_P(StoreConformanceTest, SourceBelongsToThePrincipalThatCreatedIt) {
  PublishRecord first = Record("s", "w1", 0);
  first.owner = "alice";
  ASSERT_TRUE(store_->Publish(first).ok());
  PublishRecord intruder = Record("s", "w2", 0);
  intruder.owner = "mallory";
  Status st = store_->Publish(intruder);
  EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("source 's' belongs to principal 'alice'"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("only 'alice' or an admin principal may"));
  EXPECT_EQ(store_->GetWorker("s", "w2").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ListWorkers({})->size(), 1u);
  // The owner adds workers; an admin may too, without taking the source over.
  PublishRecord second = Record("s", "w3", 0);
  second.owner = "alice";
  EXPECT_TRUE(store_->Publish(second).ok());
  PublishRecord admin = Record("s", "w4", 0);
  admin.owner = "root";
  admin.override_owner = true;
  EXPECT_TRUE(store_->Publish(admin).ok());
  EXPECT_EQ(store_->Publish(intruder).code(), absl::StatusCode::kPermissionDenied);
  // The source (and its ownership) goes with its last worker.
  for (const char* w : {"w1", "w3", "w4"}) {
    ASSERT_TRUE(store_->RemoveWorker("s", w, std::nullopt).ok()) << w;
  }
  EXPECT_TRUE(store_->Publish(intruder).ok());
  EXPECT_EQ(store_->Publish(first).code(), absl::StatusCode::kPermissionDenied);
}

// Regression: a principal could publish an unbounded number of workers.
TEST_P(StoreConformanceTest, MaxOwnerWorkersBoundsWorkersPerPrincipal) {
  auto rec = [](const std::string& source, const std::string& worker, const std::string& owner,
                uint32_t rank = 0) {
    PublishRecord r = Record(source, worker, rank);
    r.owner = owner;
    r.max_owner_workers = 2;
    return r;
  };
  ASSERT_TRUE(store_->Publish(rec("s1", "w1", "alice")).ok());
  ASSERT_TRUE(store_->Publish(rec("s1", "w2", "alice")).ok());
  Status st = store_->Publish(rec("s2", "w3", "alice"));
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("principal 'alice' already owns 2 workers"));
  EXPECT_EQ(store_->GetWorker("s2", "w3").status().code(), absl::StatusCode::kNotFound);
  // Re-publishing and more ranks of an owned worker are not new workers; other principals and
  // unowned records have their own count.
  EXPECT_TRUE(store_->Publish(rec("s1", "w1", "alice")).ok());
  EXPECT_TRUE(store_->Publish(rec("s1", "w1", "alice", 1)).ok());
  EXPECT_TRUE(store_->Publish(rec("s3", "w5", "bob")).ok());
  EXPECT_TRUE(store_->Publish(rec("s4", "w6", "")).ok());
  EXPECT_TRUE(store_->Publish(rec("s4", "w7", "")).ok());
  EXPECT_EQ(store_->Publish(rec("s4", "w8", "")).code(), absl::StatusCode::kResourceExhausted);
  // Removing a worker frees its place.
  ASSERT_TRUE(store_->RemoveWorker("s1", "w1", std::nullopt).ok());
  EXPECT_TRUE(store_->Publish(rec("s2", "w3", "alice")).ok());
  EXPECT_EQ(store_->Publish(rec("s2", "w9", "alice")).code(), absl::StatusCode::kResourceExhausted);
  // An admin taking a worker over moves it to the admin's count.
  PublishRecord takeover = rec("s1", "w2", "root");
  takeover.override_owner = true;
  ASSERT_TRUE(store_->Publish(takeover).ok());
  EXPECT_TRUE(store_->Publish(rec("s2", "w9", "alice")).ok());
}

TEST_P(StoreConformanceTest, RemovingOneWorkerKeepsTheSourceAndItsOtherWorkers) {
  ASSERT_TRUE(store_->Publish(Record("s", "w1", 0)).ok());
  ASSERT_TRUE(store_->Publish(Record("s", "w2", 0)).ok());
  ASSERT_TRUE(store_->RemoveWorker("s", "w1", std::nullopt).ok());
  auto got = store_->GetWorker("s", "w2");
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(got->identity.has_value());
  EXPECT_EQ(got->identity->model_name(), "Org/Model-s");
  auto list = store_->ListWorkers({std::string("s")});
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].worker_id, "w2");
  EXPECT_EQ((*list)[0].model_name, "Org/Model-s");
  // The source goes with its last worker, and comes back with the next publish.
  ASSERT_TRUE(store_->RemoveWorker("s", "w2", std::nullopt).ok());
  EXPECT_TRUE(store_->ListWorkers({})->empty());
  EXPECT_EQ(store_->GetWorker("s", "w2").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->RemoveWorker("s", "w2", std::nullopt).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(store_->Publish(Record("s", "w3", 0)).ok());
  EXPECT_EQ(store_->ListWorkers({})->size(), 1u);
}

TEST_P(StoreConformanceTest, UpdatingOneRankLeavesTheOthers) {
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0, SOURCE_STATUS_INITIALIZING, 1000)).ok());
  ASSERT_TRUE(store_->Publish(Record("s", "w", 1, SOURCE_STATUS_INITIALIZING, 1000)).ok());
  ASSERT_TRUE(store_->UpdateStatus({"s", "w", 1u, SOURCE_STATUS_READY, 555, {}}).ok());
  auto list = store_->ListWorkers({});
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  const WorkerSummary& s = (*list)[0];
  EXPECT_EQ(s.worker_rank, 1u);
  EXPECT_EQ(s.status, SOURCE_STATUS_READY);
  EXPECT_EQ(s.updated_at, 555);
  EXPECT_EQ(s.status_mask, (1u << SOURCE_STATUS_READY) | (1u << SOURCE_STATUS_INITIALIZING));
  auto got = store_->GetWorker("s", "w");  // rank 0, untouched
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->worker.worker_rank(), 0u);
  EXPECT_EQ(got->worker.status(), SOURCE_STATUS_INITIALIZING);
  EXPECT_EQ(got->worker.updated_at(), 1000);
}

TEST_P(StoreConformanceTest, RepublishInvalidatesCompareAndSetTokens) {
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0)).ok());
  auto before = store_->GetWorker("s", "w");
  ASSERT_TRUE(before.ok());
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0)).ok());  // the worker came back meanwhile
  auto after = store_->GetWorker("s", "w");
  ASSERT_TRUE(after.ok());
  EXPECT_NE(before->version, after->version);
  EXPECT_EQ(store_->UpdateStatus({"s", "w", std::nullopt, SOURCE_STATUS_STALE, 9, before->version})
                .code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(store_->RemoveWorker("s", "w", before->version).code(), absl::StatusCode::kAborted);
  EXPECT_TRUE(store_->RemoveWorker("s", "w", after->version).ok());
}

TEST_P(StoreConformanceTest, MillisecondClocksRoundTripExactly) {
  const int64_t t = 1751234567891;  // past 2^32 and past float precision
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0, SOURCE_STATUS_READY, t)).ok());
  EXPECT_EQ(store_->GetWorker("s", "w")->worker.updated_at(), t);
  ASSERT_TRUE(store_->UpdateStatus({"s", "w", 0u, SOURCE_STATUS_READY, t + 7, {}}).ok());
  EXPECT_EQ(store_->GetWorker("s", "w")->worker.updated_at(), t + 7);
  auto list = store_->ListWorkers({});
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].updated_at, t + 7);
}

TEST_P(StoreConformanceTest, IdsWithSeparatorsDoNotCollide) {
  PublishRecord a = Record("a:b", "c", 0);
  a.worker.set_agent_name("first");
  PublishRecord b = Record("a", "b:c", 0);
  b.worker.set_agent_name("second");
  ASSERT_TRUE(store_->Publish(a).ok());
  ASSERT_TRUE(store_->Publish(b).ok());
  EXPECT_EQ(store_->GetWorker("a:b", "c")->worker.agent_name(), "first");
  EXPECT_EQ(store_->GetWorker("a", "b:c")->worker.agent_name(), "second");
  EXPECT_EQ(store_->ListWorkers({})->size(), 2u);
  ASSERT_TRUE(store_->RemoveWorker("a", "b:c", std::nullopt).ok());
  EXPECT_EQ(store_->GetWorker("a:b", "c")->worker.agent_name(), "first");
}

// ModelExpress 0.7.0 (contract 16): the representative rank's topology and its last reported
// load come back on the summary; a rank's heartbeat replaces its load (none clears it), the
// reaper's every-rank update leaves loads alone, and a re-publish starts without one.
TEST_P(StoreConformanceTest, TopologyAndSourceLoadReachTheSummary) {
  PublishRecord r = Record("s", "w", 0);
  (*r.worker.mutable_topology())["rack"] = "r3";
  (*r.worker.mutable_topology())["block"] = "b1";
  ASSERT_TRUE(store_->Publish(r).ok());
  auto summary = [&]() -> WorkerSummary {
    auto list = store_->ListWorkers({});
    EXPECT_TRUE(list.ok()) << list.status();
    if (!list.ok() || list->size() != 1) return {};
    return (*list)[0];
  };
  const std::map<std::string, std::string> topology = {{"block", "b1"}, {"rack", "r3"}};
  EXPECT_EQ(summary().topology, topology);
  EXPECT_FALSE(summary().source_load.has_value());

  StatusUpdate beat{"s", "w", 0u, SOURCE_STATUS_READY, 2000, std::nullopt};
  beat.source_load = 0.625f;
  ASSERT_TRUE(store_->UpdateStatus(beat).ok());
  EXPECT_EQ(summary().source_load, std::optional<float>(0.625f));
  beat.source_load = 0.1f;  // not exact in binary: must still come back as the same float
  ASSERT_TRUE(store_->UpdateStatus(beat).ok());
  EXPECT_EQ(summary().source_load, std::optional<float>(0.1f));
  EXPECT_EQ(summary().topology, topology);

  ASSERT_TRUE(store_->UpdateStatus({"s", "w", std::nullopt, SOURCE_STATUS_STALE, 3000, {}}).ok());
  EXPECT_EQ(summary().source_load, std::optional<float>(0.1f));
  beat.source_load.reset();
  ASSERT_TRUE(store_->UpdateStatus(beat).ok());
  EXPECT_FALSE(summary().source_load.has_value());
  beat.source_load = std::numeric_limits<float>::infinity();  // no reading, never corrupt
  ASSERT_TRUE(store_->UpdateStatus(beat).ok());
  EXPECT_FALSE(summary().source_load.has_value());

  beat.source_load = 0.5f;
  ASSERT_TRUE(store_->UpdateStatus(beat).ok());
  ASSERT_TRUE(store_->Publish(Record("s", "w", 0)).ok());
  EXPECT_FALSE(summary().source_load.has_value());
  EXPECT_TRUE(summary().topology.empty());
  auto got = store_->GetWorker("s", "w");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(got->worker.topology().empty());
}

// Fields a newer contract adds (unknown to ferry) are kept exactly, in the record, in its
// nested messages and in the identity.
google::protobuf::UnknownFieldSet* MutableUnknown(google::protobuf::Message* m) {
  return m->GetReflection()->MutableUnknownFields(m);
}

// The serialized unknown fields of `m`.
std::string UnknownBytes(const google::protobuf::Message& m) {
  std::string out;
  EXPECT_TRUE(m.GetReflection()->GetUnknownFields(m).SerializeToString(&out));
  return out;
}

TEST_P(StoreConformanceTest, UnknownFieldsRoundTripExactly) {
  PublishRecord r = Record("s", "w", 0);
  auto* tensor = r.worker.mutable_tensor_source()->add_tensors();
  tensor->set_name("t");
  MutableUnknown(tensor)->AddLengthDelimited(60, "hello");
  MutableUnknown(&r.worker)->AddVarint(1001, 42);
  MutableUnknown(&r.worker)->AddFixed32(1002, 0xaabbccdd);
  MutableUnknown(&r.identity)->AddLengthDelimited(500, "id");
  ASSERT_FALSE(UnknownBytes(r.worker).empty());
  ASSERT_TRUE(store_->Publish(r).ok());
  auto got = store_->GetWorker("s", "w");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(UnknownBytes(got->worker), UnknownBytes(r.worker));
  ASSERT_EQ(got->worker.tensor_source().tensors_size(), 1);
  EXPECT_EQ(UnknownBytes(got->worker.tensor_source().tensors(0)), UnknownBytes(*tensor));
  ASSERT_TRUE(got->identity.has_value());
  EXPECT_EQ(UnknownBytes(*got->identity), UnknownBytes(r.identity));
}

TEST_P(StoreConformanceTest, PingSucceeds) { EXPECT_TRUE(store_->Ping().ok()); }

}  // namespace
}  // namespace ferry::store
