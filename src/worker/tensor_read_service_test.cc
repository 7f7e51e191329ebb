// PrepareTensorRead / ReleaseTensorRead on a WorkerServer over real gRPC on loopback, called with
// ModelExpress's generated stub (as its target's prepare_tensor_read does).
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "model_express/p2p.grpc.pb.h"
#include "worker/worker_client.h"
#include "worker/worker_server.h"

namespace ferry::worker {
namespace {

using ::testing::HasSubstr;
namespace p2p = ::model_express::p2p;

constexpr char kToken[] = "worker-token-0123456789abcdef";

// A source whose tensors a NIXL agent also serves (metadata_endpoint set), or not.
std::unique_ptr<WorkerState> MakeState(bool nixl = true) {
  WorkerManifest m;
  m.worker_id = "w-1";
  m.worker_rank = 1;
  m.accelerator = "cpu";
  m.agent_name = nixl ? "ferry-nixl-agent" : "ferry-rank1-w-1";
  if (nixl) m.metadata_endpoint = "127.0.0.1:5601";
  m.region_base_addresses = {0x7f0000000000ull};
  for (int i = 0; i < 2; ++i) {
    ferry::v1::TensorEntry& t = m.tensors.emplace_back();
    t.set_name(absl::StrCat("layer.", i, ".weight"));
    t.set_dtype(i == 0 ? "BF16" : "F32");
    t.add_shape(8);
    t.set_offset(i * 64);
    t.set_size(16 << i);
  }
  auto state = WorkerState::Create(std::move(m));
  EXPECT_TRUE(state.ok()) << state.status();
  (*state)->SetMxSourceId("src-1");
  return std::move(*state);
}

struct Served {
  std::unique_ptr<WorkerState> state;
  std::unique_ptr<WorkerServer> server;
  std::unique_ptr<p2p::WorkerService::Stub> stub;
};

Served Serve(WorkerServerOptions options, bool nixl = true) {
  Served s;
  s.state = MakeState(nixl);
  options.state = s.state.get();
  options.listen = "127.0.0.1:0";
  auto server = WorkerServer::Create(std::move(options));
  EXPECT_TRUE(server.ok()) << server.status();
  s.server = std::move(*server);
  Status started = s.server->Start();
  EXPECT_TRUE(started.ok()) << started;
  s.stub = p2p::WorkerService::NewStub(
      grpc::CreateChannel(s.server->endpoint(), grpc::InsecureChannelCredentials()));
  return s;
}

grpc::Status Prepare(Served& s, p2p::PrepareTensorReadResponse* out, const std::string& token = "",
                     const std::string& worker_id = "w-1") {
  grpc::ClientContext context;
  if (!token.empty()) context.AddMetadata("authorization", std::string("Bearer ") + token);
  p2p::PrepareTensorReadRequest request;
  request.set_mx_source_id("src-1");
  request.set_worker_id(worker_id);
  return s.stub->PrepareTensorRead(&context, request, out);
}

grpc::Status Release(Served& s, const std::string& lease_id, const std::string& token = "") {
  grpc::ClientContext context;
  if (!token.empty()) context.AddMetadata("authorization", std::string("Bearer ") + token);
  p2p::ReleaseTensorReadRequest request;
  request.set_mx_source_id("src-1");
  request.set_worker_id("w-1");
  request.set_lease_id(lease_id);
  p2p::ReleaseTensorReadResponse response;
  return s.stub->ReleaseTensorRead(&context, request, &response);
}

TEST(TensorReadServiceTest, PrepareAnswersALeaseAndTheManifestGetTensorManifestServes) {
  Served s = Serve({});
  p2p::PrepareTensorReadResponse prepared;
  grpc::Status ok = Prepare(s, &prepared);
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_EQ(prepared.lease_id().size(), 32u);
  const p2p::GetTensorManifestResponse& m = prepared.manifest();
  EXPECT_EQ(m.mx_source_id(), "src-1");
  EXPECT_EQ(m.worker_id(), "w-1");
  EXPECT_EQ(m.worker_rank(), 1u);
  EXPECT_EQ(m.agent_name(), "ferry-nixl-agent");
  EXPECT_EQ(m.metadata_endpoint(), "127.0.0.1:5601");
  ASSERT_EQ(m.tensors_size(), 2);
  EXPECT_EQ(m.tensors(1).name(), "layer.1.weight");
  EXPECT_EQ(m.tensors(1).addr(), 0x7f0000000000ull + 64);
  EXPECT_EQ(m.tensors(1).size(), 32u);
  EXPECT_EQ(m.tensors(1).device_id(), 0u);
  EXPECT_EQ(m.tensors(1).dtype(), "torch.float32");
  EXPECT_EQ(m.tensors(0).dtype(), "torch.bfloat16");

  // Byte for byte what GetTensorManifest answers.
  grpc::ClientContext context;
  p2p::GetTensorManifestRequest request;
  request.set_mx_source_id("src-1");
  p2p::GetTensorManifestResponse manifest;
  ASSERT_TRUE(s.stub->GetTensorManifest(&context, request, &manifest).ok());
  EXPECT_EQ(m.SerializeAsString(), manifest.SerializeAsString());

  EXPECT_EQ(s.server->outstanding_tensor_read_leases(), 1);
  EXPECT_TRUE(Release(s, prepared.lease_id()).ok());
  EXPECT_EQ(s.server->outstanding_tensor_read_leases(), 0);
  grpc::Status twice = Release(s, prepared.lease_id());
  EXPECT_EQ(twice.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(twice.error_message(),
              HasSubstr("tensor read lease not found or expired: " + prepared.lease_id()));
}

TEST(TensorReadServiceTest, LeasesAreBoundedAndExpireByTheClock) {
  auto seconds = std::make_shared<std::atomic<int64_t>>(1'000'000);
  WorkerServerOptions o;
  o.tensor_read_leases.max_leases = 2;
  o.tensor_read_leases.ttl = absl::Seconds(30);
  o.tensor_read_leases.clock_for_test = [seconds] { return absl::FromUnixSeconds(*seconds); };
  Served s = Serve(std::move(o));
  p2p::PrepareTensorReadResponse a, b, c;
  ASSERT_TRUE(Prepare(s, &a).ok());
  ASSERT_TRUE(Prepare(s, &b).ok());
  grpc::Status full = Prepare(s, &c);
  EXPECT_EQ(full.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(full.error_message(), HasSubstr("all 2 tensor read leases"));

  *seconds += 30;  // both expire
  EXPECT_EQ(s.server->outstanding_tensor_read_leases(), 0);
  grpc::Status expired = Release(s, a.lease_id());
  EXPECT_EQ(expired.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(expired.error_message(), HasSubstr("not found or expired"));
  ASSERT_TRUE(Prepare(s, &c).ok());  // their slots are free again
  EXPECT_TRUE(Release(s, c.lease_id()).ok());
}

TEST(TensorReadServiceTest, ChecksIdsAndLeaseIds) {
  Served s = Serve({});
  p2p::PrepareTensorReadResponse r;
  grpc::Status other = Prepare(s, &r, "", "w-9");
  EXPECT_EQ(other.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(other.error_message(), HasSubstr("worker_id mismatch"));
  EXPECT_EQ(s.server->outstanding_tensor_read_leases(), 0);  // no lease taken for a refusal
  grpc::Status empty = Release(s, "");
  EXPECT_EQ(empty.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(empty.error_message(), HasSubstr("without a lease_id"));
  EXPECT_EQ(Release(s, "0123456789abcdef0123456789abcdef").error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST(TensorReadServiceTest, StopWaitsForOutstandingLeasesToBeReleased) {
  WorkerServerOptions o;
  o.lease_drain_timeout = absl::Seconds(60);  // the release below ends the wait, not this
  Served s = Serve(std::move(o));
  p2p::PrepareTensorReadResponse prepared;
  ASSERT_TRUE(Prepare(s, &prepared).ok());
  absl::Notification stopped;
  std::thread stopper([&] {
    s.server->Stop();
    stopped.Notify();
  });
  // Stopping takes no new lease while it waits for the outstanding one...
  p2p::PrepareTensorReadResponse refused;
  grpc::Status late = Prepare(s, &refused);
  if (!late.ok()) {
    EXPECT_EQ(late.error_code(), grpc::StatusCode::UNAVAILABLE) << late.error_message();
    EXPECT_THAT(late.error_message(), HasSubstr("takes no new read leases"));
  } else {
    // Taken before Stop() closed the table: release it too, or Stop() waits a minute.
    EXPECT_TRUE(Release(s, refused.lease_id()).ok());
  }
  EXPECT_FALSE(stopped.HasBeenNotified());
  // ...and the endpoint still serves the release that ends the wait.
  grpc::Status released = Release(s, prepared.lease_id());
  EXPECT_TRUE(released.ok()) << released.error_message();
  stopped.WaitForNotification();
  stopper.join();
  EXPECT_EQ(s.server->outstanding_tensor_read_leases(), 0);
}

TEST(TensorReadServiceTest, StopGivesUpOnALeaseNobodyReleases) {
  WorkerServerOptions o;
  o.lease_drain_timeout = absl::Milliseconds(200);
  Served s = Serve(std::move(o));
  p2p::PrepareTensorReadResponse prepared;
  ASSERT_TRUE(Prepare(s, &prepared).ok());
  s.server->Stop();  // returns after the drain timeout with the lease still held
  EXPECT_EQ(s.server->outstanding_tensor_read_leases(), 1);
}

TEST(TensorReadServiceTest, ANegativeLeaseDrainTimeoutIsRefused) {
  std::unique_ptr<WorkerState> state = MakeState();
  WorkerServerOptions o;
  o.state = state.get();
  o.listen = "127.0.0.1:0";
  o.lease_drain_timeout = absl::Seconds(-1);
  auto server = WorkerServer::Create(std::move(o));
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(server.status().message(), HasSubstr("WorkerServerOptions.lease_drain_timeout"));
}

TEST(TensorReadServiceTest, FerryOnlySourceAnswersUnimplemented) {
  Served s = Serve({}, /*nixl=*/false);
  p2p::PrepareTensorReadResponse r;
  grpc::Status prepare = Prepare(s, &r);
  EXPECT_EQ(prepare.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_THAT(prepare.error_message(), HasSubstr("with ferry's engine only (no NIXL agent"));
  EXPECT_EQ(Release(s, "x").error_code(), grpc::StatusCode::UNIMPLEMENTED);
  // The manifest is served as before.
  grpc::ClientContext context;
  p2p::GetTensorManifestResponse manifest;
  EXPECT_TRUE(s.stub->GetTensorManifest(&context, {}, &manifest).ok());
}

TEST(TensorReadServiceTest, TheEndpointsTokenAdmitsLeaseCalls) {
  Served s = Serve({.token = kToken});
  p2p::PrepareTensorReadResponse r;
  // ModelExpress's target sends no authorization header (grpc.insecure_channel, no metadata).
  grpc::Status anonymous = Prepare(s, &r);
  EXPECT_EQ(anonymous.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Release(s, "x").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(s.server->outstanding_tensor_read_leases(), 0);
  ASSERT_TRUE(Prepare(s, &r, kToken).ok());
  EXPECT_TRUE(Release(s, r.lease_id(), kToken).ok());
}

TEST(TensorReadServiceTest, ArtifactMethodsSayNoArtifactIsServed) {
  Served s = Serve({});
  grpc::ClientContext context;
  p2p::GetArtifactManifestHeaderResponse header;
  grpc::Status st = s.stub->GetArtifactManifestHeader(&context, {}, &header);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(st.error_message(), HasSubstr("serves no artifact manifests"));
  grpc::ClientContext context2;
  p2p::PrepareArtifactChunkResponse chunk;
  EXPECT_EQ(s.stub->PrepareArtifactChunk(&context2, {}, &chunk).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

// How a ferry target tells a ferry source whose tensors NIXL serves too from a ModelExpress worker
// in P2P metadata mode (their records look alike): ferry's service answers, ModelExpress's
// worker (its generated WorkerService base alone, as on a real one) answers UNIMPLEMENTED.
TEST(TensorReadServiceTest, ServesFerryTellsAFerrySourceFromAModelExpressWorker) {
  Served ferry_source = Serve({.token = kToken});
  WorkerClientOptions o;
  o.endpoint = ferry_source.server->endpoint();
  o.token = kToken;
  auto client = WorkerClient::Create(o);
  ASSERT_TRUE(client.ok()) << client.status();
  auto ferry = (*client)->ServesFerry("src-1", "w-1");
  ASSERT_TRUE(ferry.ok()) << ferry.status();
  EXPECT_TRUE(*ferry);

  p2p::WorkerService::Service
      modelexpress;  // every method UNIMPLEMENTED, FerryWorkerService absent
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&modelexpress);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(port, 0);
  o.endpoint = absl::StrCat("127.0.0.1:", port);
  auto mx_client = WorkerClient::Create(o);
  ASSERT_TRUE(mx_client.ok());
  auto mx = (*mx_client)->ServesFerry("src-1", "w-1");
  ASSERT_TRUE(mx.ok()) << mx.status();
  EXPECT_FALSE(*mx);
  // ferry's engine path against it fails naming the cause.
  auto info = (*mx_client)->GetTransferInfo("src-1", "w-1");
  EXPECT_EQ(info.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(info.status().message(),
              HasSubstr("does not serve ferry's FerryWorkerService (a ModelExpress worker"));
  server->Shutdown();

  // A refusal is not a verdict: a wrong token is UNAUTHENTICATED, not "not ferry".
  o.endpoint = ferry_source.server->endpoint();
  o.token = "not-the-token-0123456789";
  auto wrong = WorkerClient::Create(o);
  ASSERT_TRUE(wrong.ok());
  EXPECT_EQ((*wrong)->ServesFerry("src-1", "w-1").status().code(),
            absl::StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace ferry::worker
