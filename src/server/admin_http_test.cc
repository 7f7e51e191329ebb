#include "server/admin_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <thread>
#include <vector>

#include "common/fd.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "server/test_server.h"

namespace ferry::server {
namespace {

using ::testing::HasSubstr;

TEST(AdminHttpTest, HealthzFollowsTheStoreAndMetricsCountRpcs) {
  TestServer s;
  s.server().Start();
  httplib::Client http("127.0.0.1", s.server().admin_port());
  auto ok = http.Get("/healthz");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);

  grpc::ClientContext ctx;
  model_express::p2p::ListSourcesResponse resp;
  ASSERT_TRUE(s.p2p->ListSources(&ctx, {}, &resp).ok());
  auto metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_THAT(metrics->body, HasSubstr("ferry_build_info{component=\"server\""));
  EXPECT_THAT(metrics->body, HasSubstr("ferry_grpc_requests_total{method=\"ListSources\","
                                       "code=\"OK\",outcome=\"empty\"} 1"));
  EXPECT_THAT(metrics->body,
              HasSubstr("ferry_grpc_request_duration_seconds_count{method=\"ListSources\"} 1"));

  s.faults().SetFailure(store::FaultStore::Op::kPing, absl::UnavailableError("redis gone"));
  auto down = http.Get("/healthz");
  ASSERT_TRUE(down);
  EXPECT_EQ(down->status, 503);
  EXPECT_THAT(down->body, HasSubstr("redis gone"));
}

// Regression: with httplib's defaults (8 threads, 5 s keep-alive timeout) eight idle
// connections held every thread, and /healthz queued behind them for 5 s or more, long enough
// for a liveness probe to restart a healthy server.
TEST(AdminHttpTest, IdleConnectionsDoNotDelayHealthz) {
  TestServer s;
  s.server().Start();
  constexpr int kIdle = 32;
  std::vector<ferry::internal::Fd> idle;
  for (int i = 0; i < kIdle; ++i) {
    ferry::internal::Fd fd(socket(AF_INET, SOCK_STREAM, 0));
    ASSERT_GE(fd.get(), 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(s.server().admin_port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    idle.push_back(std::move(fd));
  }
  // The probe connects after every idle connection, so it is accepted behind all of them.
  httplib::Client http("127.0.0.1", s.server().admin_port());
  http.set_read_timeout(4, 0);
  const absl::Time start = absl::Now();
  auto res = http.Get("/healthz");
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(res) << "no answer to /healthz within 4 s behind " << kIdle
                   << " idle connections: " << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "ok\n");
  EXPECT_LT(took, absl::Seconds(1)) << "behind " << kIdle << " idle connections";
}

TEST(AdminHttpTest, TakenPortFailsCreateNamingTheFlag) {
  TestServer s;
  auto memory = store::MemoryStore::Create();
  Metrics metrics("t", "memory");
  auto second = AdminHttp::Create("127.0.0.1", s.server().admin_port(), memory.get(), &metrics);
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("--admin-listen"));
}

TEST(ServerTest, GrpcHealthFollowsTheStoreAndRecovers) {
  ServerOptions options;
  options.health_check_interval = absl::Milliseconds(20);
  TestServer s(options);
  s.server().Start();
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", s.server().grpc_port()),
                                     grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);
  auto status_is = [&](grpc::health::v1::HealthCheckResponse::ServingStatus want) {
    for (int i = 0; i < 250; ++i) {
      grpc::ClientContext ctx;
      grpc::health::v1::HealthCheckRequest req;
      grpc::health::v1::HealthCheckResponse resp;
      if (health->Check(&ctx, req, &resp).ok() && resp.status() == want) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  };
  EXPECT_TRUE(status_is(grpc::health::v1::HealthCheckResponse::SERVING));
  s.faults().SetFailure(store::FaultStore::Op::kPing, absl::UnavailableError("down"));
  EXPECT_TRUE(status_is(grpc::health::v1::HealthCheckResponse::NOT_SERVING));
  s.faults().ClearFailure();
  EXPECT_TRUE(status_is(grpc::health::v1::HealthCheckResponse::SERVING));
}

TEST(ServerTest, StopDrainsRunningCallsAndDoesNotWaitForIdleConnections) {
  TestServer s;
  s.server().Start();
  // An idle, connected client must not hold shutdown for the drain timeout (5 s).
  grpc::ClientContext warm;
  model_express::health::HealthResponse health;
  ASSERT_TRUE(s.health->GetHealth(&warm, {}, &health).ok());
  // A call in flight when Stop() begins still completes.
  s.faults().SetLatency(absl::Milliseconds(400));
  grpc::Status in_flight;
  model_express::p2p::PublishMetadataResponse resp;
  std::thread caller([&] {
    grpc::ClientContext ctx;
    model_express::p2p::PublishMetadataRequest req;
    req.mutable_identity()->set_model_name("m");
    req.set_worker_id("w");
    req.mutable_worker();
    in_flight = s.p2p->PublishMetadata(&ctx, req, &resp);
  });
  s.faults().AwaitCalls(store::FaultStore::Op::kPublish, 1);  // the call is in its 400 ms
  const absl::Time start = absl::Now();
  s.server().Stop();
  const absl::Duration took = absl::Now() - start;
  caller.join();
  EXPECT_TRUE(in_flight.ok()) << in_flight.error_message();
  EXPECT_TRUE(resp.success());
  EXPECT_LT(took, absl::Seconds(2));
}

TEST(ServerTest, TakenGrpcPortFailsCreateNamingTheFlag) {
  TestServer s;
  auto memory = store::MemoryStore::Create();
  ServerOptions options;
  options.listen = absl::StrCat("127.0.0.1:", s.server().grpc_port());
  options.admin_listen = "";
  options.store_override = memory.get();
  auto second = Server::Create(options);
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("--listen: cannot bind"));
}

}  // namespace
}  // namespace ferry::server
