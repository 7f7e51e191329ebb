// MetadataClient against a real ferry-server child process.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/testing/status_matchers.h"
#include "ferry/metadata_client.h"
#include "ferry/source_identity.h"
#include "server_client_test.h"
#include "server_process.h"

namespace ferry {
namespace {

namespace p2p = ::model_express::p2p;
using ::ferry::testing::IsOk;
using ::ferry::testing::StartServer;
using ::ferry::testing::StatusIs;
using ::testing::HasSubstr;

SourceIdentity TestIdentity(const std::string& model = "test/model") {
  SourceIdentity id;
  id.set_model_name(model);
  id.set_backend_framework(p2p::BACKEND_FRAMEWORK_VLLM);
  id.set_tensor_parallel_size(2);
  id.set_dtype("bfloat16");
  return id;
}

PublishMetadataRequest TestRequest(const std::string& worker_id, uint32_t rank = 0,
                                   const std::string& model = "test/model") {
  PublishMetadataRequest r;
  *r.mutable_identity() = TestIdentity(model);
  r.set_worker_id(worker_id);
  WorkerMetadata* w = r.mutable_worker();
  w->set_worker_rank(rank);
  w->set_metadata_endpoint("10.0.0.1:5555");
  w->set_agent_name(absl::StrCat("agent-", rank));
  w->set_worker_grpc_endpoint("10.0.0.1:6555");
  w->set_accelerator("cuda");
  for (int i = 0; i < 3; ++i) {
    TensorDescriptor* t = w->mutable_tensor_source()->add_tensors();
    t->set_name(absl::StrCat("layer.", i, ".weight"));
    t->set_addr(0x1000 * (i + 1));
    t->set_size(4096);
    t->set_dtype("torch.bfloat16");
  }
  return r;
}

std::unique_ptr<MetadataClient> ClientFor(const std::string& address,
                                          MetadataClientOptions o = {}) {
  o.server_address = address;
  auto c = MetadataClient::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(c).value() : nullptr;
}

using ClientTest = ::ferry::testing::ServerClientTest;

TEST_F(ClientTest, PublishListGetUpdateRoundTrip) {
  const int64_t before_ms = absl::ToUnixMillis(absl::Now());
  auto published = client_->Publish(TestRequest("w1"));
  ASSERT_TRUE(published.ok()) << published.status();
  EXPECT_EQ(published->mx_source_id, *ComputeMxSourceId(TestIdentity()));
  EXPECT_EQ(published->worker_id, "w1");

  // Published with status UNKNOWN: stored as INITIALIZING, so not READY yet.
  auto got = client_->GetMetadata(published->mx_source_id, "w1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->worker().status(), p2p::SOURCE_STATUS_INITIALIZING);
  EXPECT_EQ(got->identity().model_name(), "test/model");
  EXPECT_EQ(got->worker().agent_name(), "agent-0");
  ASSERT_EQ(got->worker().tensor_source().tensors_size(), 3);
  EXPECT_EQ(got->worker().tensor_source().tensors(2).name(), "layer.2.weight");

  auto all = client_->ListSources(ListSourcesRequest());
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].mx_source_id(), published->mx_source_id);
  EXPECT_EQ((*all)[0].worker_id(), "w1");
  EXPECT_EQ((*all)[0].model_name(), "test/model");

  ListSourcesRequest ready_only;
  ready_only.set_status_filter(p2p::SOURCE_STATUS_READY);
  auto ready = client_->ListSources(ready_only);
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_TRUE(ready->empty());

  ASSERT_TRUE(
      client_->UpdateStatus(published->mx_source_id, "w1", 0, p2p::SOURCE_STATUS_READY).ok());
  ready = client_->ListSources(ready_only);
  ASSERT_TRUE(ready.ok()) << ready.status();
  ASSERT_EQ(ready->size(), 1u);
  EXPECT_EQ((*ready)[0].worker_id(), "w1");
  EXPECT_GE((*ready)[0].updated_at(), before_ms);

  got = client_->GetMetadata(published->mx_source_id, "w1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->worker().status(), p2p::SOURCE_STATUS_READY);
  EXPECT_GE(got->worker().updated_at(), before_ms);
}

TEST_F(ClientTest, ListSourcesAppliesFilters) {
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(client_->Publish(TestRequest(absl::StrCat("a", i), i, "model/a")).ok());
  }
  ASSERT_TRUE(client_->Publish(TestRequest("b0", 0, "model/b")).ok());

  ListSourcesRequest by_model;
  by_model.set_model_name_filter("model/b");
  auto refs = client_->ListSources(by_model);
  ASSERT_TRUE(refs.ok()) << refs.status();
  ASSERT_EQ(refs->size(), 1u);
  EXPECT_EQ((*refs)[0].worker_id(), "b0");

  ListSourcesRequest by_rank;
  by_rank.set_worker_rank_filter(2);
  refs = client_->ListSources(by_rank);
  ASSERT_TRUE(refs.ok()) << refs.status();
  ASSERT_EQ(refs->size(), 1u);
  EXPECT_EQ((*refs)[0].worker_id(), "a2");

  ListSourcesRequest limited;
  limited.set_limit(2);
  refs = client_->ListSources(limited);
  ASSERT_TRUE(refs.ok()) << refs.status();
  EXPECT_EQ(refs->size(), 2u);
}

TEST_F(ClientTest, GetMetadataOfUnknownRecordIsNotFound) {
  auto got = client_->GetMetadata("0123456789abcdef", "nobody");
  ASSERT_THAT(got, StatusIs(absl::StatusCode::kNotFound));
  const std::string msg(got.status().message());
  EXPECT_THAT(msg, HasSubstr(server_->address()));
  EXPECT_THAT(msg, HasSubstr("NOT_FOUND"));
  EXPECT_THAT(msg, HasSubstr("'0123456789abcdef'"));
}

TEST_F(ClientTest, UpdateStatusNeverCreatesAndReportsNotFound) {
  auto published = client_->Publish(TestRequest("w1", 0));
  ASSERT_TRUE(published.ok()) << published.status();
  Status s = client_->UpdateStatus(published->mx_source_id, "w1", 5, p2p::SOURCE_STATUS_READY);
  EXPECT_THAT(
      s, StatusIs(absl::StatusCode::kNotFound,
                  ::testing::AllOf(HasSubstr("not found"),
                                   HasSubstr(absl::StrCat("UpdateStatus to ", server_->address(),
                                                          " failed: NOT_FOUND")))));

  s = client_->UpdateStatus(published->mx_source_id, "ghost", 0, p2p::SOURCE_STATUS_READY);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(client_->GetMetadata(published->mx_source_id, "ghost"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(ClientTest, PublishRejectionIsInvalidArgumentWithServerMessage) {
  PublishMetadataRequest r = TestRequest("w1");
  r.mutable_identity()->clear_model_name();
  auto published = client_->Publish(r);
  EXPECT_THAT(published, StatusIs(absl::StatusCode::kInvalidArgument,
                                  ::testing::AllOf(HasSubstr("model_name is required"),
                                                   HasSubstr(server_->address()))));

  r = TestRequest("");
  published = client_->Publish(r);
  EXPECT_THAT(published,
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("worker_id is required")));

  // ferry's own limits on request fields, which no message text marks as such.
  r = TestRequest(std::string(300, 'w'));
  EXPECT_THAT(client_->Publish(r),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("worker_id is 300 bytes")));
  r = TestRequest("w1");
  r.mutable_worker()->set_status(static_cast<SourceStatus>(42));
  EXPECT_THAT(client_->Publish(r),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("worker.status=42")));
}

// Regression: ferry-server's own size-limit refusals reached the client as FAILED_PRECONDITION
// (guessed from the message) although the header promises INVALID_ARGUMENT; the code now
// travels as trailing metadata, and a full quota is RESOURCE_EXHAUSTED.
TEST(ClientLimitsTest, ServerLimitsArriveWithTheServersCode) {
  auto server = StartServer({.extra_args = {"--max-record-bytes", "4096", "--max-record-tensors",
                                            "3", "--max-workers-per-principal", "2"}});
  ASSERT_THAT(server, IsOk());
  auto client = ClientFor((*server)->address());
  ASSERT_NE(client, nullptr);

  PublishMetadataRequest many = TestRequest("many");
  many.mutable_worker()->mutable_tensor_source()->add_tensors()->set_name("fourth");
  EXPECT_THAT(client->Publish(many),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("worker has 4 tensors; the limit is 3 tensors per record "
                                 "(ferry-server --max-record-tensors)")));

  PublishMetadataRequest fat = TestRequest("fat");
  fat.mutable_worker()->set_nixl_metadata(std::string(8192, 'x'));
  EXPECT_THAT(client->Publish(fat),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("the limit is 4096 bytes (ferry-server --max-record-bytes)")));

  EXPECT_THAT(client->Publish(TestRequest("w1")), IsOk());
  EXPECT_THAT(client->Publish(TestRequest("w2")), IsOk());
  EXPECT_THAT(client->Publish(TestRequest("w3")),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("already owns 2 workers, the limit (ferry-server "
                                 "--max-workers-per-principal)")));
  EXPECT_THAT(client->Publish(TestRequest("w1")), IsOk());  // an existing worker is no new one
  EXPECT_THAT((*server)->Stop(), IsOk()) << (*server)->LogTail();  // OK only for exit status 0
}

TEST_F(ClientTest, HealthReportsOk) {
  auto health = client_->Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->status, "ok");
  EXPECT_FALSE(health->version.empty());
}

TEST_F(ClientTest, MaxMessageSizeLimitsWhatIsSent) {
  MetadataClientOptions o;
  o.max_message_size = 1024;
  auto small = ClientFor(server_->address(), o);
  ASSERT_NE(small, nullptr);
  PublishMetadataRequest r = TestRequest("big");
  for (int i = 0; i < 100; ++i) {
    r.mutable_worker()->mutable_tensor_source()->add_tensors()->set_name(
        absl::StrCat("padding.tensor.", i));
  }
  auto published = small->Publish(r);
  EXPECT_EQ(published.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(published.status().message()), HasSubstr("RESOURCE_EXHAUSTED"));
}

TEST_F(ClientTest, ConcurrentCallsShareOneClient) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 25;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        if (!client_->Publish(TestRequest(absl::StrCat("t", t, "-", i))).ok()) {
          ++failures;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  auto refs = client_->ListSources(ListSourcesRequest());
  ASSERT_TRUE(refs.ok()) << refs.status();
  EXPECT_EQ(refs->size(), static_cast<size_t>(kThreads * kPerThread));
}

TEST_F(ClientTest, RecoversAfterServerRestartWithoutANewClient) {
  ASSERT_TRUE(client_->Health().ok());
  server_->Kill();
  auto down = client_->Health();
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable);

  ASSERT_TRUE(server_->Restart().ok());
  const absl::Time back = absl::Now();
  StatusOr<HealthInfo> up = client_->Health();
  while (!up.ok() && absl::Now() < back + absl::Seconds(10)) {
    absl::SleepFor(absl::Milliseconds(50));
    up = client_->Health();
  }
  EXPECT_TRUE(up.ok()) << up.status();
  // The channel is in TRANSIENT_FAILURE after the failed calls; the client watches it between
  // attempts, so it notices the server at once rather than at gRPC's 5 s backup poll.
  EXPECT_LT(absl::Now() - back, absl::Seconds(3));
}

// Nothing listens: every attempt is refused at once, so the whole call (3 attempts, 200 ms and
// 400 ms apart) fails in well under a second; 10 s leaves room for a loaded machine.
TEST(ClientUnreachableTest, RefusedConnectionFailsFastWithUnavailable) {
  const int port = testing::UnusedLoopbackPort();
  ASSERT_GT(port, 0);
  const std::string address = absl::StrCat("127.0.0.1:", port);
  auto client = ClientFor(address);
  ASSERT_NE(client, nullptr);
  const absl::Time start = absl::Now();
  auto refs = client->ListSources(ListSourcesRequest());
  const absl::Duration elapsed = absl::Now() - start;
  ASSERT_FALSE(refs.ok());
  EXPECT_EQ(refs.status().code(), absl::StatusCode::kUnavailable);
  const std::string msg(refs.status().message());
  EXPECT_THAT(msg, HasSubstr(absl::StrCat("ListSources to ", address, " failed: UNAVAILABLE")));
  EXPECT_THAT(msg, HasSubstr("(3 attempts)"));
  EXPECT_THAT(msg, HasSubstr("check --server/FERRY_SERVER or start ferry-server"));
  EXPECT_LT(elapsed, absl::Seconds(10));
  EXPECT_GE(elapsed, absl::Milliseconds(400));  // 0.8 * (200 + 400) ms of backoff
}

// The TCP connection succeeds (the kernel completes the handshake for a listening socket) but
// nothing ever answers HTTP/2. Without a connect bound the call would wait for its 30 s
// deadline; connect_timeout ends each attempt after about a second.
TEST(ClientUnreachableTest, SilentServerIsBoundedByConnectTimeout) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 16), 0);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string address = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));

  MetadataClientOptions o;
  o.connect_timeout = absl::Seconds(1);
  o.max_attempts = 2;
  auto client = ClientFor(address, o);
  ASSERT_NE(client, nullptr);
  const absl::Time start = absl::Now();
  auto health = client->Health();
  const absl::Duration elapsed = absl::Now() - start;
  close(fd);
  ASSERT_FALSE(health.ok());
  EXPECT_THAT(health.status().code(), ::testing::AnyOf(absl::StatusCode::kUnavailable,
                                                       absl::StatusCode::kDeadlineExceeded));
  EXPECT_THAT(std::string(health.status().message()), HasSubstr(address));
  EXPECT_LT(elapsed, absl::Seconds(10));
}

}  // namespace
}  // namespace ferry
