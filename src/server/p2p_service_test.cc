// P2pService over real gRPC on loopback, checked against the contract's section 5 and the
// fixes of section 14.
#include "server/p2p_service.h"

#include "absl/strings/str_cat.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/test_server.h"

namespace ferry::server {
namespace {

namespace p2p = ::model_express::p2p;
using ::ferry::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Optional;
constexpr absl::StatusCode kInvalidArgument = absl::StatusCode::kInvalidArgument;
constexpr absl::StatusCode kNotFound = absl::StatusCode::kNotFound;

p2p::SourceIdentity BaseIdentity() {
  p2p::SourceIdentity id;
  id.set_mx_version("0.5.0");
  id.set_model_name("deepseek-ai/DeepSeek-V3");
  id.set_backend_framework(p2p::BACKEND_FRAMEWORK_VLLM);
  id.set_tensor_parallel_size(8);
  id.set_pipeline_parallel_size(1);
  id.set_dtype("bfloat16");
  return id;
}
constexpr char kBaseId[] = "5a5f555570065064";

class P2pServiceTest : public ::testing::Test {
 protected:
  p2p::PublishMetadataResponse Publish(const p2p::PublishMetadataRequest& req,
                                       grpc::Status* status_out = nullptr) {
    grpc::ClientContext ctx;
    p2p::PublishMetadataResponse resp;
    grpc::Status st = s_.p2p->PublishMetadata(&ctx, req, &resp);
    code_ = WireCode(ctx);
    if (status_out != nullptr) {
      *status_out = st;
    } else {
      EXPECT_TRUE(st.ok()) << st.error_message();
    }
    return resp;
  }
  p2p::PublishMetadataRequest Request(const std::string& worker_id, uint32_t rank = 0,
                                      p2p::SourceIdentity id = BaseIdentity()) {
    p2p::PublishMetadataRequest req;
    *req.mutable_identity() = id;
    req.set_worker_id(worker_id);
    req.mutable_worker()->set_worker_rank(rank);
    req.mutable_worker()->set_worker_grpc_endpoint("10.1.1.1:6555");
    req.mutable_worker()->set_accelerator("cuda");
    return req;
  }
  p2p::UpdateStatusResponse Update(const std::string& source, const std::string& worker,
                                   uint32_t rank, int status) {
    grpc::ClientContext ctx;
    p2p::UpdateStatusRequest req;
    req.set_mx_source_id(source);
    req.set_worker_id(worker);
    req.set_worker_rank(rank);
    req.set_status(static_cast<p2p::SourceStatus>(status));
    p2p::UpdateStatusResponse resp;
    EXPECT_TRUE(s_.p2p->UpdateStatus(&ctx, req, &resp).ok());
    code_ = WireCode(ctx);
    return resp;
  }
  p2p::GetMetadataResponse Get(const std::string& source, const std::string& worker,
                               grpc::Status* status_out = nullptr) {
    grpc::ClientContext ctx;
    p2p::GetMetadataRequest req;
    req.set_mx_source_id(source);
    req.set_worker_id(worker);
    p2p::GetMetadataResponse resp;
    grpc::Status st = s_.p2p->GetMetadata(&ctx, req, &resp);
    code_ = WireCode(ctx);
    if (status_out != nullptr) {
      *status_out = st;
    } else {
      EXPECT_TRUE(st.ok()) << st.error_message();
    }
    return resp;
  }
  std::vector<p2p::SourceInstanceRef> List(const p2p::ListSourcesRequest& req,
                                           grpc::Status* status_out = nullptr) {
    grpc::ClientContext ctx;
    p2p::ListSourcesResponse resp;
    grpc::Status st = s_.p2p->ListSources(&ctx, req, &resp);
    code_ = WireCode(ctx);
    if (status_out != nullptr) {
      *status_out = st;
    } else {
      EXPECT_TRUE(st.ok()) << st.error_message();
    }
    return {resp.instances().begin(), resp.instances().end()};
  }
  std::vector<std::string> Workers(const std::vector<p2p::SourceInstanceRef>& refs) {
    std::vector<std::string> out;
    for (const auto& r : refs) out.push_back(r.worker_id());
    return out;
  }

  TestServer s_;
  // The code in the trailing metadata of the last answer (WireCode).
  std::optional<absl::StatusCode> code_;
};

TEST_F(P2pServiceTest, PublishValidatesInContractOrder) {
  struct Case {
    std::function<void(p2p::PublishMetadataRequest*)> mutate;
    std::string message;
  } cases[] = {
      {[](auto* r) {
         r->clear_identity();
         r->clear_worker_id();
       },
       "identity is required"},
      {[](auto* r) {
         r->mutable_identity()->clear_model_name();
         r->clear_worker();
       },
       "identity.model_name is required"},
      {[](auto* r) {
         r->clear_worker_id();
         r->clear_worker();
       },
       "worker_id is required"},
      {[](auto* r) { r->clear_worker(); }, "worker is required"},
  };
  for (const auto& c : cases) {
    p2p::PublishMetadataRequest req = Request("w1");
    c.mutate(&req);
    p2p::PublishMetadataResponse resp = Publish(req);
    EXPECT_FALSE(resp.success());
    EXPECT_EQ(resp.message(), c.message);
    EXPECT_EQ(resp.mx_source_id(), "");
    EXPECT_EQ(resp.worker_id(), "");
    EXPECT_THAT(code_, Optional(kInvalidArgument)) << c.message;
  }
}

TEST_F(P2pServiceTest, PublishSucceedsWithServerIdAndStoresInitializingWithServerClock) {
  p2p::PublishMetadataRequest req = Request("abcd1234", 3);
  req.mutable_worker()->set_updated_at(5);  // a client clock the server must ignore
  p2p::PublishMetadataResponse resp = Publish(req);
  ASSERT_TRUE(resp.success()) << resp.message();
  EXPECT_EQ(code_, std::nullopt);  // no code on success
  EXPECT_EQ(resp.mx_source_id(), kBaseId);
  EXPECT_EQ(resp.worker_id(), "abcd1234");
  EXPECT_EQ(resp.message(),
            "Published metadata for 'deepseek-ai/DeepSeek-V3' (source_id=5a5f555570065064, "
            "worker_id=abcd1234, worker_rank=3, 0 tensors)");
  p2p::GetMetadataResponse got = Get(kBaseId, "abcd1234");
  ASSERT_TRUE(got.found());
  EXPECT_EQ(got.worker().status(), p2p::SOURCE_STATUS_INITIALIZING);
  EXPECT_EQ(got.worker().updated_at(), TestServer::kStartMs);
  // A status other than UNKNOWN is kept.
  p2p::PublishMetadataRequest ready = Request("ready1");
  ready.mutable_worker()->set_status(p2p::SOURCE_STATUS_READY);
  ASSERT_TRUE(Publish(ready).success());
  EXPECT_EQ(Get(kBaseId, "ready1").worker().status(), p2p::SOURCE_STATUS_READY);
}

TEST_F(P2pServiceTest, TensorPayloadRules) {
  // tensor_source wins over the legacy list.
  p2p::PublishMetadataRequest a = Request("a");
  a.mutable_worker()->add_tensors()->set_name("legacy");
  a.mutable_worker()->mutable_tensor_source()->add_tensors()->set_name("new");
  EXPECT_THAT(Publish(a).message(), HasSubstr("1 tensors"));
  p2p::GetMetadataResponse ga = Get(kBaseId, "a");
  ASSERT_EQ(ga.worker().tensor_source().tensors_size(), 1);
  EXPECT_EQ(ga.worker().tensor_source().tensors(0).name(), "new");
  ASSERT_EQ(ga.worker().tensors_size(), 1);  // legacy second copy
  EXPECT_EQ(ga.worker().tensors(0).name(), "new");

  // No payload: the legacy list is used, and comes back in both places.
  p2p::PublishMetadataRequest b = Request("b");
  b.mutable_worker()->add_tensors()->set_name("t0");
  b.mutable_worker()->add_tensors()->set_name("t1");
  b.mutable_worker()->set_nixl_metadata(std::string("\x00\x01\xfe", 3));
  EXPECT_THAT(Publish(b).message(), HasSubstr("2 tensors"));
  p2p::GetMetadataResponse gb = Get(kBaseId, "b");
  EXPECT_EQ(gb.worker().source_payload_case(), p2p::WorkerMetadata::kTensorSource);
  EXPECT_EQ(gb.worker().tensor_source().tensors_size(), 2);
  EXPECT_EQ(gb.worker().tensors_size(), 2);
  EXPECT_EQ(gb.worker().nixl_metadata(), std::string("\x00\x01\xfe", 3));

  // P2P mode (endpoints only): source_payload is still set, with no tensors.
  p2p::GetMetadataResponse gp = (Publish(Request("p")), Get(kBaseId, "p"));
  EXPECT_EQ(gp.worker().source_payload_case(), p2p::WorkerMetadata::kTensorSource);
  EXPECT_EQ(gp.worker().tensor_source().tensors_size(), 0);
  EXPECT_EQ(gp.worker().worker_grpc_endpoint(), "10.1.1.1:6555");

  // Artifact payload: no tensors even when legacy ones are sent; the summary round-trips.
  p2p::PublishMetadataRequest c = Request("c");
  c.mutable_worker()->add_tensors()->set_name("ignored");
  auto* art = c.mutable_worker()->mutable_artifact_source();
  art->set_artifact_id(std::string(64, 'a'));
  art->set_total_size(1ull << 40);
  art->set_file_count(42);
  art->set_chunk_count(4096);
  art->set_node_rank(2);
  c.mutable_worker()->set_status(p2p::SOURCE_STATUS_READY);
  EXPECT_THAT(Publish(c).message(), HasSubstr("0 tensors"));
  p2p::GetMetadataResponse gc = Get(kBaseId, "c");
  EXPECT_EQ(gc.worker().tensors_size(), 0);
  EXPECT_EQ(gc.worker().status(), p2p::SOURCE_STATUS_READY);
  EXPECT_EQ(gc.worker().artifact_source().SerializeAsString(), art->SerializeAsString());

  // The TransferEngine session id keeps its oneof choice.
  p2p::PublishMetadataRequest d = Request("d");
  d.mutable_worker()->set_transfer_engine_session_id("10.0.0.9:17000");
  Publish(d);
  p2p::GetMetadataResponse gd = Get(kBaseId, "d");
  EXPECT_EQ(gd.worker().backend_metadata_case(), p2p::WorkerMetadata::kTransferEngineSessionId);
  EXPECT_EQ(gd.worker().transfer_engine_session_id(), "10.0.0.9:17000");
}

// Regression: twelve 85 MB publishes of tiny tensors took the memory store to 7.4 GB; a record's
// tensor count and size are now bounded, with defaults that a real model fits.
TEST_F(P2pServiceTest, RecordTensorCountIsBoundedAndARealModelFits) {
  auto with_tensors = [&](const std::string& worker_id, int n) {
    p2p::PublishMetadataRequest req = Request(worker_id);
    auto* tensors = req.mutable_worker()->mutable_tensor_source()->mutable_tensors();
    tensors->Reserve(n);
    for (int i = 0; i < n; ++i) {
      p2p::TensorDescriptor* t = tensors->Add();
      t->set_name(absl::StrCat("model.layers.", i / 1000, ".mlp.experts.", i % 1000, ".weight"));
      t->set_addr(0x7f0000000000ull + static_cast<uint64_t>(i) * 4096);
      t->set_size(4096);
      t->set_dtype("torch.bfloat16");
    }
    return req;
  };
  p2p::PublishMetadataResponse big = Publish(with_tensors("big", 100000));
  EXPECT_TRUE(big.success()) << big.message();
  EXPECT_THAT(big.message(), HasSubstr("100000 tensors"));
  EXPECT_THAT(Workers(List({})), ::testing::ElementsAre("big"));

  p2p::PublishMetadataResponse huge =
      Publish(with_tensors("huge", static_cast<int>(kDefaultMaxRecordTensors) + 1));
  EXPECT_FALSE(huge.success());
  EXPECT_THAT(huge.message(), HasSubstr("worker has 262145 tensors; the limit is 262144 tensors "
                                        "per record (ferry-server --max-record-tensors)"));
  EXPECT_THAT(code_, Optional(kInvalidArgument));
  EXPECT_FALSE(Get(kBaseId, "huge").found());
  EXPECT_THAT(Workers(List({})), ::testing::ElementsAre("big"));
}

TEST(P2pServiceLimitsTest, RecordBytesAndWorkersPerPrincipalAreBounded) {
  ServerOptions options;
  options.max_record_bytes = 1u << 20;
  options.max_workers_per_principal = 3;
  TestServer s(options);
  std::optional<absl::StatusCode> code;  // of the last answer
  auto publish = [&](const std::string& worker_id, size_t nixl_bytes = 0) {
    grpc::ClientContext ctx;
    p2p::PublishMetadataRequest req;
    *req.mutable_identity() = BaseIdentity();
    req.set_worker_id(worker_id);
    req.mutable_worker()->set_worker_grpc_endpoint("10.1.1.1:6555");
    req.mutable_worker()->set_nixl_metadata(std::string(nixl_bytes, 'x'));
    p2p::PublishMetadataResponse resp;
    grpc::Status st = s.p2p->PublishMetadata(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    code = WireCode(ctx);
    return resp;
  };
  // Too big a record is the request's fault; a full quota is the principal's, and clears.
  p2p::PublishMetadataResponse fat = publish("fat", 2u << 20);
  EXPECT_FALSE(fat.success());
  EXPECT_THAT(fat.message(), HasSubstr("the limit is 1048576 bytes (ferry-server "
                                       "--max-record-bytes)"));
  EXPECT_THAT(code, Optional(kInvalidArgument));
  for (const char* w : {"w1", "w2", "w3"}) {
    p2p::PublishMetadataResponse ok = publish(w, 1000);
    EXPECT_TRUE(ok.success()) << w << ": " << ok.message();
    EXPECT_EQ(code, std::nullopt);
  }
  p2p::PublishMetadataResponse fourth = publish("w4");
  EXPECT_FALSE(fourth.success());
  EXPECT_THAT(fourth.message(), HasSubstr("already owns 3 workers, the limit (ferry-server "
                                          "--max-workers-per-principal)"));
  EXPECT_THAT(code, Optional(absl::StatusCode::kResourceExhausted));
  EXPECT_TRUE(publish("w1").success());  // re-publishing an existing worker is not a new one
}

TEST_F(P2pServiceTest, GetMetadataContract) {
  // Empty ids: found=false and nothing echoed.
  p2p::GetMetadataResponse empty = Get("", "w");
  EXPECT_FALSE(empty.found());
  EXPECT_EQ(empty.mx_source_id(), "");
  EXPECT_FALSE(empty.has_worker());
  EXPECT_THAT(code_, Optional(kInvalidArgument));
  EXPECT_FALSE(Get(kBaseId, "").found());
  EXPECT_THAT(code_, Optional(kInvalidArgument));
  // Not found: ids echoed, no identity.
  p2p::GetMetadataResponse missing = Get(kBaseId, "nobody");
  EXPECT_FALSE(missing.found());
  EXPECT_EQ(missing.mx_source_id(), kBaseId);
  EXPECT_EQ(missing.worker_id(), "nobody");
  EXPECT_FALSE(missing.has_identity());
  EXPECT_THAT(code_, Optional(kNotFound));
  // Found: the lowest rank, the stored identity in its original case.
  for (uint32_t rank : {2u, 0u, 1u}) Publish(Request("multi", rank));
  p2p::GetMetadataResponse got = Get(kBaseId, "multi");
  ASSERT_TRUE(got.found());
  EXPECT_EQ(code_, std::nullopt);
  EXPECT_EQ(got.worker().worker_rank(), 0u);
  EXPECT_EQ(got.identity().SerializeAsString(), BaseIdentity().SerializeAsString());
}

TEST_F(P2pServiceTest, StoreFailuresAreUnavailableAndNameTheStore) {
  s_.faults().SetFailure(store::FaultStore::Op::kAny, absl::UnavailableError("backend down"));
  constexpr absl::StatusCode kUnavailable = absl::StatusCode::kUnavailable;
  grpc::Status st;
  Publish(Request("w"), &st);
  EXPECT_THAT(FromGrpc(st), StatusIs(kUnavailable, HasSubstr("metadata store fault(memory)")));
  EXPECT_THAT(st.error_message(), HasSubstr("backend down"));
  EXPECT_THAT(code_, Optional(kUnavailable));  // errors carry the code too
  Get(kBaseId, "w", &st);
  EXPECT_THAT(FromGrpc(st), StatusIs(kUnavailable));
  EXPECT_THAT(code_, Optional(kUnavailable));
  List({}, &st);
  EXPECT_THAT(FromGrpc(st), StatusIs(kUnavailable));
  EXPECT_THAT(code_, Optional(kUnavailable));
  s_.faults().ClearFailure();
  EXPECT_TRUE(Publish(Request("w")).success());
}

TEST_F(P2pServiceTest, UpdateStatusContract) {
  EXPECT_EQ(Update("", "w", 0, 2).message(), "mx_source_id is required");
  EXPECT_THAT(code_, Optional(kInvalidArgument));
  EXPECT_EQ(Update(kBaseId, "", 0, 2).message(), "worker_id is required");
  EXPECT_THAT(code_, Optional(kInvalidArgument));
  p2p::UpdateStatusResponse bad = Update(kBaseId, "w", 0, 99);
  EXPECT_FALSE(bad.success());
  EXPECT_EQ(bad.message(), "invalid status value: 99");
  EXPECT_THAT(code_, Optional(kInvalidArgument));
  // Never creates a record.
  p2p::UpdateStatusResponse unknown = Update(kBaseId, "w", 0, 2);
  EXPECT_FALSE(unknown.success());
  EXPECT_THAT(unknown.message(), HasSubstr("Failed to update status: "));
  EXPECT_THAT(unknown.message(), HasSubstr("not found"));
  EXPECT_THAT(code_, Optional(kNotFound));
  EXPECT_FALSE(Get(kBaseId, "w").found());

  Publish(Request("w", 3));
  s_.now_ms += 777;
  p2p::UpdateStatusResponse ok = Update(kBaseId, "w", 3, p2p::SOURCE_STATUS_READY);
  EXPECT_TRUE(ok.success());
  EXPECT_EQ(code_, std::nullopt);
  EXPECT_EQ(ok.message(), "Updated status for source '5a5f555570065064' worker_id 'w' rank 3");
  p2p::GetMetadataResponse got = Get(kBaseId, "w");
  EXPECT_EQ(got.worker().status(), p2p::SOURCE_STATUS_READY);
  EXPECT_EQ(got.worker().updated_at(), TestServer::kStartMs + 777);
  // Wrong rank of an existing worker.
  p2p::UpdateStatusResponse wrong = Update(kBaseId, "w", 4, p2p::SOURCE_STATUS_READY);
  EXPECT_FALSE(wrong.success());
  EXPECT_THAT(wrong.message(),
              HasSubstr("rank 4 not found in source '5a5f555570065064' worker 'w'"));
  EXPECT_THAT(code_, Optional(kNotFound));
  // Any transition is allowed.
  EXPECT_TRUE(Update(kBaseId, "w", 3, p2p::SOURCE_STATUS_STALE).success());
  EXPECT_TRUE(Update(kBaseId, "w", 3, p2p::SOURCE_STATUS_READY).success());
}

class ListSourcesTest : public P2pServiceTest {
 protected:
  // Publishes worker `w` of `model` at rank `rank`, then sets `status` at time `at`.
  std::string Add(const std::string& model, const std::string& w, uint32_t rank, int status,
                  int64_t at, std::map<std::string, std::string> extra = {}) {
    p2p::SourceIdentity id = BaseIdentity();
    id.set_model_name(model);
    for (const auto& [k, v] : extra) (*id.mutable_extra_parameters())[k] = v;
    auto resp = Publish(Request(w, rank, id));
    EXPECT_TRUE(resp.success());
    const int64_t saved = s_.now_ms.exchange(at);
    EXPECT_TRUE(Update(resp.mx_source_id(), w, rank, status).success());
    s_.now_ms = saved;
    return resp.mx_source_id();
  }
  p2p::ListSourcesRequest ReadyFor(const std::string& model) {
    p2p::ListSourcesRequest req;
    *req.mutable_identity() = BaseIdentity();
    req.mutable_identity()->set_model_name(model);
    req.set_status_filter(p2p::SOURCE_STATUS_READY);
    return req;
  }
  const int64_t now_ = TestServer::kStartMs;
};

TEST_F(ListSourcesTest, IdentityFilterAndNoFilter) {
  Add("Org/A", "a1", 0, 2, now_ - 10);
  Add("org/a", "a2", 0, 2, now_ - 20);  // same id: names differ only in case
  Add("Org/B", "b1", 0, 2, now_ - 30);
  EXPECT_THAT(Workers(List(ReadyFor("ORG/A"))), ::testing::ElementsAre("a1", "a2"));
  EXPECT_EQ(List({}).size(), 3u);  // no identity: no source filter
  p2p::ListSourcesRequest empty_name;
  empty_name.mutable_identity()->set_dtype("bfloat16");
  EXPECT_EQ(List(empty_name).size(), 3u);  // identity with empty model_name: no filter
}

TEST_F(ListSourcesTest, StatusFilterMatchesAnyRankAndRejectsUnknownValues) {
  const std::string id = Add("m", "w", 0, p2p::SOURCE_STATUS_INITIALIZING, now_ - 5);
  Add("m", "w", 1, p2p::SOURCE_STATUS_READY, now_ - 5);
  for (int st : {p2p::SOURCE_STATUS_READY, p2p::SOURCE_STATUS_INITIALIZING}) {
    p2p::ListSourcesRequest req;
    req.set_status_filter(static_cast<p2p::SourceStatus>(st));
    EXPECT_EQ(List(req).size(), 1u) << st;
  }
  p2p::ListSourcesRequest stale;
  stale.set_status_filter(p2p::SOURCE_STATUS_STALE);
  EXPECT_TRUE(List(stale).empty());
  p2p::ListSourcesRequest invalid;
  invalid.set_status_filter(static_cast<p2p::SourceStatus>(7));
  grpc::Status st;
  List(invalid, &st);
  EXPECT_THAT(FromGrpc(st), StatusIs(kInvalidArgument, HasSubstr("status_filter=7")));
  EXPECT_THAT(code_, Optional(kInvalidArgument));
}

TEST_F(ListSourcesTest, ModelRankStepAndTimeFilters) {
  Add("Org/M", "w1", 1, 2, now_ - 1, {{"training_step", "42"}, {"layout_signature", "L1"}});
  Add("Org/N", "w2", 0, 2, now_ - 2, {{"version", "41"}});
  Add("Org/O", "w3", 1, 2, now_ - 3000);
  p2p::ListSourcesRequest by_name;
  by_name.set_model_name_filter("Org/M");
  auto named = List(by_name);
  ASSERT_EQ(named.size(), 1u);
  EXPECT_EQ(named[0].training_step(), 42u);
  EXPECT_EQ(named[0].layout_signature(), "L1");
  EXPECT_EQ(named[0].accelerator(), "cuda");
  EXPECT_EQ(named[0].worker_rank(), 1u);
  by_name.set_model_name_filter("org/m");  // case-sensitive
  EXPECT_TRUE(List(by_name).empty());

  p2p::ListSourcesRequest by_rank;
  by_rank.set_worker_rank_filter(1);
  EXPECT_THAT(Workers(List(by_rank)), ::testing::ElementsAre("w1", "w3"));

  p2p::ListSourcesRequest by_step;
  by_step.set_min_training_step(41);
  EXPECT_THAT(Workers(List(by_step)), ::testing::ElementsAre("w1", "w2"));
  by_step.set_min_training_step(42);
  EXPECT_THAT(Workers(List(by_step)), ::testing::ElementsAre("w1"));  // no step: dropped

  p2p::ListSourcesRequest by_time;
  by_time.set_min_updated_at(now_ - 2);
  EXPECT_THAT(Workers(List(by_time)), ::testing::ElementsAre("w1", "w2"));

  p2p::ListSourcesRequest limited;
  limited.set_limit(2);
  EXPECT_THAT(Workers(List(limited)), ::testing::ElementsAre("w1", "w2"));
  limited.set_limit(0);  // no cap
  EXPECT_EQ(List(limited).size(), 3u);
}

TEST_F(ListSourcesTest, ReadyFreshnessAppliesBeforeLimitAndTiesAreOrdered) {
  const int64_t timeout = 90'000;
  Add("m", "old", 0, 2, now_ - timeout - 1);  // expired, and the newest before the fix...
  Add("m", "zz", 0, 2, now_ - 10);
  Add("m", "aa", 0, 2, now_ - 10);         // tie with zz: ordered by worker_id
  Add("m", "edge", 0, 2, now_ - timeout);  // exactly at the timeout: still fresh
  Add("m", "stale", 0, 3, now_);
  p2p::ListSourcesRequest req = ReadyFor("m");
  EXPECT_THAT(Workers(List(req)), ::testing::ElementsAre("aa", "zz", "edge"));
  req.set_limit(3);
  EXPECT_EQ(List(req).size(), 3u);  // limit counts only fresh READY workers
  // Without the READY filter nothing is dropped for age, and newest comes first.
  p2p::ListSourcesRequest all;
  EXPECT_THAT(Workers(List(all)), ::testing::ElementsAre("stale", "aa", "zz", "edge", "old"));
}

TEST_F(P2pServiceTest, BadInputIsRefusedAndServerStaysUp) {
  // A million extra_parameters: refused with a message naming the field.
  p2p::PublishMetadataRequest huge = Request("w");
  auto* extra = huge.mutable_identity()->mutable_extra_parameters();
  for (int i = 0; i < 1'000'000; ++i) (*extra)[std::to_string(i)] = "v";
  p2p::PublishMetadataResponse r1 = Publish(huge);
  EXPECT_FALSE(r1.success());
  EXPECT_THAT(r1.message(), HasSubstr("identity.extra_parameters has 1000000 entries"));
  EXPECT_THAT(code_, Optional(kInvalidArgument));
  // Huge strings.
  p2p::PublishMetadataRequest long_name = Request("w");
  long_name.mutable_identity()->set_model_name(std::string(1 << 20, 'm'));
  EXPECT_THAT(Publish(long_name).message(), HasSubstr("identity.model_name is 1048576 bytes"));
  EXPECT_THAT(code_, Optional(kInvalidArgument));
  p2p::PublishMetadataRequest long_worker = Request(std::string(300, 'w'));
  EXPECT_THAT(Publish(long_worker).message(), HasSubstr("worker_id is 300 bytes"));
  EXPECT_THAT(code_, Optional(kInvalidArgument));
  p2p::PublishMetadataRequest many_levels = Request("w");
  for (int i = 0; i < 65; ++i) {
    (*many_levels.mutable_worker()->mutable_topology())[absl::StrCat("l", i)] = "v";
  }
  EXPECT_THAT(Publish(many_levels).message(),
              HasSubstr("worker.topology has 65 entries; the limit is 64"));
  EXPECT_THAT(code_, Optional(kInvalidArgument));
  p2p::PublishMetadataRequest long_level = Request("w");
  (*long_level.mutable_worker()->mutable_topology())["rack"] = std::string(300, 'r');
  EXPECT_THAT(
      Publish(long_level).message(),
      HasSubstr("a worker.topology value is 300 bytes; the limit is 256 bytes (key 'rack')"));
  p2p::PublishMetadataRequest long_endpoint = Request("w");
  long_endpoint.mutable_worker()->set_worker_grpc_endpoint(std::string(5000, 'e'));
  EXPECT_THAT(Publish(long_endpoint).message(), HasSubstr("worker.worker_grpc_endpoint"));
  EXPECT_THAT(code_, Optional(kInvalidArgument));
  grpc::Status st;
  Get(std::string(1000, 's'), "w", &st);
  EXPECT_THAT(FromGrpc(st), StatusIs(kInvalidArgument));
  EXPECT_THAT(code_, Optional(kInvalidArgument));
  // Unknown enum values: a status is refused, identity enums are hashed as integers.
  p2p::PublishMetadataRequest bad_status = Request("w");
  bad_status.mutable_worker()->set_status(static_cast<p2p::SourceStatus>(42));
  EXPECT_THAT(Publish(bad_status).message(), HasSubstr("worker.status=42"));
  EXPECT_THAT(code_, Optional(kInvalidArgument));
  p2p::PublishMetadataRequest odd_type = Request("w");
  odd_type.mutable_identity()->set_mx_source_type(static_cast<p2p::MxSourceType>(42));
  EXPECT_TRUE(Publish(odd_type).success());
  // Oversized message: gRPC refuses it before the handler; the server keeps serving.
  p2p::PublishMetadataRequest oversized = Request("w");
  oversized.mutable_worker()->set_nixl_metadata(std::string(101 << 20, 'x'));
  Publish(oversized, &st);
  EXPECT_THAT(FromGrpc(st), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_TRUE(Publish(Request("after")).success());
}

TEST_F(P2pServiceTest, HealthReportsUptimeAndStore) {
  grpc::ClientContext ctx;
  model_express::health::HealthResponse resp;
  ASSERT_TRUE(s_.health->GetHealth(&ctx, {}, &resp).ok());
  EXPECT_EQ(resp.status(), "ok");
  EXPECT_FALSE(resp.version().empty());
  s_.faults().SetFailure(store::FaultStore::Op::kPing, absl::UnavailableError("gone"));
  grpc::ClientContext ctx2;
  ASSERT_TRUE(s_.health->GetHealth(&ctx2, {}, &resp).ok());
  EXPECT_EQ(resp.status(), "unavailable: gone");
}

}  // namespace
}  // namespace ferry::server
