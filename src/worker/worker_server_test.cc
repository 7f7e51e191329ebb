// WorkerServer and WorkerClient over real gRPC on loopback.
#include "worker/worker_server.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/testing/test_certs.h"
#include "ferry/v1/worker.grpc.pb.h"
#include "model_express/p2p.grpc.pb.h"
#include "worker/held_tensors.h"
#include "worker/worker_client.h"

namespace ferry::worker {
namespace {

using ::testing::HasSubstr;
namespace p2p = ::model_express::p2p;

constexpr char kToken[] = "worker-token-0123456789abcdef";

WorkerManifest MakeManifest(int n) {
  WorkerManifest m;
  m.worker_id = "w-1";
  m.worker_rank = 2;
  m.accelerator = "cpu";
  m.agent_name = "agent-2";
  m.metadata_endpoint = "10.1.1.1:5600";
  m.transfer_blob = "transfer-blob-bytes";
  m.region_base_addresses = {0x7f0000000000ull, 0x7f1000000000ull};
  m.metadata = {{"format", "pt"}};
  const char* dtypes[] = {"BF16", "F32", "I64", "F8_E5M2"};
  for (int i = 0; i < n; ++i) {
    ferry::v1::TensorEntry t;
    t.set_name(absl::StrCat("model.layers.", i, ".weight"));
    t.set_dtype(dtypes[i % 4]);
    t.add_shape(16);
    t.add_shape(i + 1);
    t.set_region(i % 2);
    t.set_offset(static_cast<uint64_t>(i) * 4096);
    t.set_size(1000 + i);
    t.set_checksum(0x9e3779b97f4a7c15ull * (i + 1));
    m.tensors.push_back(t);
  }
  return m;
}

std::unique_ptr<WorkerState> MakeState(int n = 3) {
  auto state = WorkerState::Create(MakeManifest(n));
  EXPECT_TRUE(state.ok()) << state.status();
  return std::move(*state);
}

std::unique_ptr<WorkerServer> StartServer(WorkerServerOptions options) {
  if (options.listen == "0.0.0.0:0") options.listen = "127.0.0.1:0";
  auto server = WorkerServer::Create(std::move(options));
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return nullptr;
  Status s = (*server)->Start();
  EXPECT_TRUE(s.ok()) << s;
  return std::move(*server);
}

std::unique_ptr<WorkerClient> MakeClient(WorkerClientOptions options) {
  auto client = WorkerClient::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? std::move(*client) : nullptr;
}

std::unique_ptr<WorkerClient> ClientFor(const WorkerServer& server, std::string token = "") {
  WorkerClientOptions o;
  o.endpoint = server.endpoint();
  o.token = std::move(token);
  return MakeClient(o);
}

TEST(WorkerServerTest, TensorManifestAnswer) {
  auto state = MakeState();
  auto server = StartServer({.state = state.get()});
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(server->endpoint(), absl::StrCat("127.0.0.1:", server->port()));
  auto client = ClientFor(*server);

  // Before publishing: the answer's mx_source_id is "", an empty request id is accepted.
  auto before = client->GetTensorManifest("", "w-1");
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(before->mx_source_id(), "");

  state->SetMxSourceId("src-abc");
  auto r = client->GetTensorManifest("src-abc", "w-1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->mx_source_id(), "src-abc");
  EXPECT_EQ(r->worker_id(), "w-1");
  EXPECT_EQ(r->worker_rank(), 2u);
  EXPECT_EQ(r->accelerator(), "cpu");
  EXPECT_EQ(r->agent_name(), "agent-2");
  EXPECT_EQ(r->metadata_endpoint(), "10.1.1.1:5600");
  ASSERT_EQ(r->tensors_size(), 3);
  EXPECT_EQ(r->tensors(0).name(), "model.layers.0.weight");
  EXPECT_EQ(r->tensors(0).addr(), 0x7f0000000000ull);
  EXPECT_EQ(r->tensors(0).dtype(), "torch.bfloat16");
  EXPECT_EQ(r->tensors(1).addr(), 0x7f1000000000ull + 4096);
  EXPECT_EQ(r->tensors(1).size(), 1001u);
  EXPECT_EQ(r->tensors(1).dtype(), "torch.float32");
  EXPECT_EQ(r->tensors(2).addr(), 0x7f0000000000ull + 8192);
  EXPECT_EQ(r->tensors(2).dtype(), "torch.int64");
  EXPECT_EQ(r->tensors(2).device_id(), 0u);

  // An empty mx_source_id and no worker_id are not checked.
  auto open = client->GetTensorManifest("", "");
  ASSERT_TRUE(open.ok()) << open.status();
  EXPECT_EQ(open->mx_source_id(), "src-abc");
}

TEST(WorkerServerTest, TransferInfoAnswer) {
  auto state = MakeState();
  state->SetMxSourceId("src-abc");
  auto server = StartServer({.state = state.get()});
  ASSERT_NE(server, nullptr);
  auto r = ClientFor(*server)->GetTransferInfo("src-abc", "w-1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->mx_source_id(), "src-abc");
  EXPECT_EQ(r->worker_id(), "w-1");
  EXPECT_EQ(r->worker_rank(), 2u);
  EXPECT_EQ(r->transfer_blob(), "transfer-blob-bytes");
  EXPECT_EQ(r->checksum_algorithm(), "xxh3-64");
  EXPECT_EQ(r->total_bytes(), 1000u + 1001 + 1002);
  ASSERT_EQ(r->metadata().size(), 1u);
  EXPECT_EQ(r->metadata().at("format"), "pt");
  ASSERT_EQ(r->tensors_size(), 3);
  const WorkerManifest want = MakeManifest(3);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r->tensors(i).SerializeAsString(), want.tensors[i].SerializeAsString()) << i;
  }
  EXPECT_EQ(r->tensors(1).dtype(), "F32");
  EXPECT_EQ(r->tensors(1).region(), 1u);
  EXPECT_EQ(r->tensors(1).checksum(), 0x9e3779b97f4a7c15ull * 2);
}

// A target serving while it pulls: what it holds and what it is filling, as it changes.
TEST(WorkerServerTest, HeldTensorsSayWhatIsHeldAndWhatIsFilling) {
  WorkerManifest manifest = MakeManifest(3);
  auto held = std::make_shared<HeldTensors>(3);
  manifest.held = held;
  auto state = WorkerState::Create(std::move(manifest));
  ASSERT_TRUE(state.ok()) << state.status();
  auto server = StartServer({.state = state->get()});
  ASSERT_NE(server, nullptr);
  auto client = ClientFor(*server);
  using Flags = std::vector<bool>;

  held->Mark(0);
  held->MarkLanding(1);
  held->MarkLanding(0);  // already held: not filling
  auto r = client->GetHeldTensors("", "w-1", 3);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->held, (Flags{true, false, false}));
  EXPECT_EQ(r->landing, (Flags{false, true, false}));

  held->Mark(1);  // verified: held, no longer filling
  r = client->GetHeldTensors("", "w-1", 3);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->held, (Flags{true, true, false}));
  EXPECT_EQ(r->landing, (Flags{false, false, false}));

  held->Mark(2);
  r = client->GetHeldTensors("", "w-1", 3);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->held, (Flags{true, true, true}));
  EXPECT_EQ(r->landing, (Flags{false, false, false}));

  auto miscounted = client->GetHeldTensors("", "w-1", 4);
  EXPECT_EQ(miscounted.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(WorkerServerTest, IdMismatchesAreFailedPrecondition) {
  auto state = MakeState();
  state->SetMxSourceId("src-abc");
  auto server = StartServer({.state = state.get()});
  ASSERT_NE(server, nullptr);
  auto client = ClientFor(*server);

  auto a = client->GetTensorManifest("src-other", "w-1");
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(a.status().message(), HasSubstr("mx_source_id mismatch: expected src-abc, got "
                                              "src-other"));
  auto b = client->GetTransferInfo("src-other", "w-1");
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(b.status().message(), HasSubstr("GetTransferInfo to " + server->endpoint() +
                                              " failed: FAILED_PRECONDITION: mx_source_id "
                                              "mismatch: expected src-abc, got src-other"));

  auto c = client->GetTensorManifest("src-abc", "w-9");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(c.status().message(),
              HasSubstr("worker_id mismatch: this endpoint serves worker w-1, not w-9; the source "
                        "restarted under a new id: re-list sources"));
  auto d = client->GetTransferInfo("", "w-9");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(d.status().message(), HasSubstr("serves worker w-1, not w-9"));
}

TEST(WorkerServerTest, TokenRequired) {
  auto state = MakeState();
  auto server = StartServer({.state = state.get(), .token = kToken});
  ASSERT_NE(server, nullptr);

  auto none = ClientFor(*server)->GetTransferInfo("", "w-1");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(none.status().message(),
              HasSubstr("carried no 'authorization: Bearer <token>' header; pass the "
                        "deployment's token with --token-file or FERRY_TOKEN_FILE"));
  EXPECT_THAT(none.status().message(), HasSubstr("this client sends no token"));

  auto wrong = ClientFor(*server, "not-the-token-0123456789")->GetTensorManifest("", "w-1");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(wrong.status().message(), HasSubstr("did not accept the bearer token"));

  auto right = ClientFor(*server, kToken);
  EXPECT_TRUE(right->GetTensorManifest("", "w-1").ok());
  EXPECT_TRUE(right->GetTransferInfo("", "w-1").ok());

  // A header that is not "Bearer <token>".
  auto channel = grpc::CreateChannel(server->endpoint(), grpc::InsecureChannelCredentials());
  auto stub = ferry::v1::FerryWorkerService::NewStub(channel);
  grpc::ClientContext context;
  context.AddMetadata("authorization", std::string("Basic ") + kToken);
  ferry::v1::GetTransferInfoResponse response;
  grpc::Status s = stub->GetTransferInfo(&context, {}, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(s.error_message(), HasSubstr("is not 'Bearer <token>'"));
}

TEST(WorkerServerTest, RotatedTokenFileIsHonoured) {
  testing::TempDir dir;
  const std::string file = dir.Write("token", "first-token-0123456789\n");
  auto state = MakeState();
  auto server = StartServer({.state = state.get(), .token_file = file});
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(ClientFor(*server, "first-token-0123456789")->GetTransferInfo("", "").ok());

  dir.Replace("token", "second-token-0123456789\n");
  auto old_token = ClientFor(*server, "first-token-0123456789")->GetTransferInfo("", "");
  EXPECT_EQ(old_token.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(ClientFor(*server, "second-token-0123456789")->GetTransferInfo("", "").ok());

  // The client side rotates too.
  WorkerClientOptions o;
  o.endpoint = server->endpoint();
  o.token_file = dir.Write("client-token", "second-token-0123456789");
  auto client = MakeClient(o);
  EXPECT_TRUE(client->GetTensorManifest("", "w-1").ok());
  dir.Replace("client-token", "third-token-0123456789");
  auto stale = client->GetTensorManifest("", "w-1");
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(stale.status().message(),
              HasSubstr("the source did not accept the token in " + o.token_file));
}

TEST(WorkerServerTest, NoTokenIsOpen) {
  auto state = MakeState();
  auto server = StartServer({.state = state.get()});
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(ClientFor(*server)->GetTransferInfo("", "w-1").ok());
  EXPECT_TRUE(ClientFor(*server, kToken)->GetTensorManifest("", "w-1").ok());
}

TEST(WorkerServerTest, BusyWhenTooManyInFlight) {
  auto state = MakeState();
  absl::Notification entered, release;
  auto server = StartServer({.state = state.get(),
                             .max_concurrent_requests = 1,
                             .on_request_for_test = [&](std::string_view method) {
                               if (method == "GetTransferInfo" && !entered.HasBeenNotified()) {
                                 entered.Notify();
                                 release.WaitForNotification();
                               }
                             }});
  ASSERT_NE(server, nullptr);
  auto client = ClientFor(*server);
  StatusOr<ferry::v1::GetTransferInfoResponse> held = absl::UnknownError("not run");
  std::thread first([&] { held = client->GetTransferInfo("", "w-1"); });
  entered.WaitForNotification();
  EXPECT_EQ(server->in_flight(), 1);
  auto busy = client->GetTensorManifest("", "w-1");
  EXPECT_EQ(busy.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(busy.status().message(),
              HasSubstr("worker endpoint busy: 1 requests in flight; retry"));
  release.Notify();
  first.join();
  EXPECT_TRUE(held.ok()) << held.status();
  EXPECT_TRUE(client->GetTensorManifest("", "w-1").ok());
}

TEST(WorkerServerTest, OversizedRequestIsResourceExhausted) {
  auto state = MakeState();
  auto server = StartServer({.state = state.get()});
  ASSERT_NE(server, nullptr);
  auto channel = grpc::CreateChannel(server->endpoint(), grpc::InsecureChannelCredentials());
  auto stub = p2p::WorkerService::NewStub(channel);
  p2p::GetTensorManifestRequest request;
  request.set_mx_source_id(std::string(100 * 1024, 'x'));
  grpc::ClientContext context;
  p2p::GetTensorManifestResponse response;
  grpc::Status s = stub->GetTensorManifest(&context, request, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  // A small request on a fresh call still works.
  grpc::ClientContext again;
  request.set_mx_source_id("");
  EXPECT_TRUE(stub->GetTensorManifest(&again, request, &response).ok());
}

TEST(WorkerServerTest, TenThousandTensors) {
  auto state = MakeState(10000);
  state->SetMxSourceId("big");
  auto server = StartServer({.state = state.get()});
  ASSERT_NE(server, nullptr);
  auto client = ClientFor(*server);
  auto info = client->GetTransferInfo("big", "w-1");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->tensors_size(), 10000);
  EXPECT_EQ(info->tensors(9999).name(), "model.layers.9999.weight");
  EXPECT_EQ(info->tensors(9999).offset(), 9999u * 4096);
  EXPECT_EQ(info->total_bytes(), 10000u * 1000 + 9999u * 10000 / 2);
  auto manifest = client->GetTensorManifest("big", "w-1");
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  ASSERT_EQ(manifest->tensors_size(), 10000);
  EXPECT_EQ(manifest->tensors(9999).addr(), 0x7f1000000000ull + 9999u * 4096);
  EXPECT_EQ(manifest->tensors(9999).dtype(), "torch.float8_e5m2");
}

TEST(WorkerServerTest, TlsAndMutualTls) {
  testing::TempDir dir;
  auto certs = testing::MakeTestCerts(dir.path());
  ASSERT_TRUE(certs.ok()) << certs.status();
  auto state = MakeState();
  auto server = StartServer({.state = state.get(),
                             .tls_cert = certs->server_cert,
                             .tls_key = certs->server_key,
                             .tls_client_ca = certs->ca});
  ASSERT_NE(server, nullptr);
  WorkerClientOptions o;
  o.endpoint = server->endpoint();
  o.tls_ca_file = certs->ca;
  o.tls_cert_file = certs->client_cert;
  o.tls_key_file = certs->client_key;
  auto ok = MakeClient(o)->GetTransferInfo("", "w-1");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->tensors_size(), 3);

  o.tls_cert_file.clear();
  o.tls_key_file.clear();
  auto no_cert = MakeClient(o)->GetTransferInfo("", "w-1");
  EXPECT_EQ(no_cert.status().code(), absl::StatusCode::kUnavailable);

  WorkerClientOptions plain;
  plain.endpoint = server->endpoint();
  auto plaintext = MakeClient(plain)->GetTensorManifest("", "w-1");
  EXPECT_EQ(plaintext.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(plaintext.status().message(),
              HasSubstr("if the source serves TLS, pass --tls-ca/FERRY_TLS_CA"));
}

// A source that answers whatever the test scripted, to show the client's own checks. The test
// edits the answers between calls on its own thread; the handlers read them on gRPC's.
class ScriptedSource final : public ferry::v1::FerryWorkerService::Service,
                             public p2p::WorkerService::Service {
 public:
  struct Answers {
    ferry::v1::GetTransferInfoResponse info;
    p2p::GetTensorManifestResponse manifest;
  };
  void Edit(const std::function<void(Answers&)>& edit) {
    absl::MutexLock lock(&mu_);
    edit(answers_);
  }

  grpc::Status GetTransferInfo(grpc::ServerContext*, const ferry::v1::GetTransferInfoRequest*,
                               ferry::v1::GetTransferInfoResponse* response) override {
    absl::MutexLock lock(&mu_);
    *response = answers_.info;
    return grpc::Status::OK;
  }
  grpc::Status GetTensorManifest(grpc::ServerContext*, const p2p::GetTensorManifestRequest*,
                                 p2p::GetTensorManifestResponse* response) override {
    absl::MutexLock lock(&mu_);
    *response = answers_.manifest;
    return grpc::Status::OK;
  }

 private:
  absl::Mutex mu_;
  Answers answers_ ABSL_GUARDED_BY(mu_);
};

TEST(WorkerClientTest, ChecksTheAnswer) {
  ScriptedSource source;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(static_cast<ferry::v1::FerryWorkerService::Service*>(&source));
  builder.RegisterService(static_cast<p2p::WorkerService::Service*>(&source));
  auto grpc_server = builder.BuildAndStart();
  ASSERT_NE(grpc_server, nullptr);
  WorkerClientOptions o;
  o.endpoint = absl::StrCat("127.0.0.1:", port);
  auto client = MakeClient(o);

  auto state = MakeState();
  source.Edit([&](ScriptedSource::Answers& a) {
    state->FillTransferInfo("", &a.info);
    state->FillTensorManifest("", &a.manifest);
  });
  ASSERT_TRUE(client->GetTransferInfo("", "w-1").ok());
  ASSERT_TRUE(client->GetTensorManifest("", "w-1").ok());

  auto wrong_id = client->GetTransferInfo("", "w-2");
  EXPECT_EQ(wrong_id.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(wrong_id.status().message(),
              HasSubstr("the source answered for worker 'w-1', not 'w-2'"));
  auto wrong_manifest_id = client->GetTensorManifest("", "w-2");
  EXPECT_EQ(wrong_manifest_id.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(wrong_manifest_id.status().message(),
              HasSubstr("the source answered for worker 'w-1', not 'w-2'"));

  source.Edit([](ScriptedSource::Answers& a) { a.info.set_total_bytes(1); });
  auto total = client->GetTransferInfo("", "w-1");
  EXPECT_EQ(total.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(total.status().message(),
              HasSubstr("tensor sizes add up to 3003 bytes but total_bytes is 1"));

  source.Edit([](ScriptedSource::Answers& a) {
    a.info.set_total_bytes(3003);
    a.info.mutable_tensors(2)->set_name("model.layers.0.weight");
  });
  auto dup = client->GetTransferInfo("", "w-1");
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(dup.status().message(), HasSubstr("'model.layers.0.weight' appears twice"));

  source.Edit([](ScriptedSource::Answers& a) { a.manifest.mutable_tensors(1)->set_name(""); });
  auto empty = client->GetTensorManifest("", "w-1");
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(empty.status().message(), HasSubstr("tensor 1 has an empty name"));

  source.Edit([](ScriptedSource::Answers& a) {
    a.info.mutable_tensors(2)->set_name("c");
    a.info.set_checksum_algorithm("crc32");
  });
  auto algo = client->GetTransferInfo("", "w-1");
  EXPECT_EQ(algo.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(algo.status().message(),
              HasSubstr("unknown checksum algorithm 'crc32'; known: xxh3-64, xxh3-64-tree-64k; "
                        "this ferry cannot verify that source"));
  grpc_server->Shutdown();
}

TEST(WorkerClientTest, UnreachableAndBadOptions) {
  WorkerClientOptions o;
  o.endpoint = "127.0.0.1:1";
  auto gone = MakeClient(o)->GetTransferInfo("", "w-1");
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(gone.status().message(), HasSubstr("GetTransferInfo to 127.0.0.1:1 failed: "
                                                 "UNAVAILABLE"));
  EXPECT_THAT(gone.status().message(), HasSubstr("try another source"));

  o.endpoint = "no-port";
  EXPECT_THAT(WorkerClient::Create(o).status().message(),
              HasSubstr("WorkerClientOptions.endpoint='no-port' has no port"));
  o.endpoint = "h:1";
  o.deadline = absl::ZeroDuration();
  EXPECT_THAT(WorkerClient::Create(o).status().message(),
              HasSubstr("WorkerClientOptions.deadline=0 must be a positive"));
  o.deadline = absl::Seconds(1);
  o.token = "a-token-0123456789";
  o.token_file = "/nonexistent";
  EXPECT_EQ(WorkerClient::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(WorkerServerTest, OptionsAndEndpoint) {
  auto state = MakeState();
  auto bad = [&](WorkerServerOptions o, const std::string& message) {
    auto s = WorkerServer::Create(std::move(o));
    ASSERT_FALSE(s.ok()) << message;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.status().message(), HasSubstr(message));
  };
  bad({}, "WorkerServerOptions.state and .artifacts are both null");
  bad({.state = state.get(), .listen = "7001"}, "WorkerServerOptions.listen='7001' has no");
  bad({.state = state.get(), .listen = "h:70000"}, "has no valid port");
  bad({.state = state.get(), .token = kToken, .token_file = "/x"}, "set at most one");
  bad({.state = state.get(), .max_concurrent_requests = 0},
      "WorkerServerOptions.max_concurrent_requests=0 must be at least 1");
  bad({.state = state.get(), .tls_cert = "/x"}, "tls_cert and tls_key");
  bad({.state = state.get(), .tls_client_ca = "/x"}, "tls_client_ca needs tls_cert");
  bad({.state = state.get(), .token_file = "/nonexistent/token"}, "/nonexistent/token");

  auto advertised = StartServer({.state = state.get(), .advertise_host = "10.2.3.4"});
  ASSERT_NE(advertised, nullptr);
  EXPECT_EQ(advertised->endpoint(), absl::StrCat("10.2.3.4:", advertised->port()));

  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
  auto wildcard = WorkerServer::Create({.state = state.get(), .listen = "0.0.0.0:0"});
  ASSERT_TRUE(wildcard.ok()) << wildcard.status();
  EXPECT_EQ((*wildcard)->endpoint(), "");
  ASSERT_TRUE((*wildcard)->Start().ok());
  EXPECT_EQ((*wildcard)->endpoint(), absl::StrCat(host, ":", (*wildcard)->port()));
  Status again = (*wildcard)->Start();
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.message(), HasSubstr("was already started"));

  // The port is taken: no SO_REUSEPORT sharing.
  auto clash = WorkerServer::Create(
      {.state = state.get(), .listen = absl::StrCat("127.0.0.1:", advertised->port())});
  ASSERT_TRUE(clash.ok());
  Status bind = (*clash)->Start();
  EXPECT_EQ(bind.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(bind.message(), HasSubstr("cannot bind 127.0.0.1:"));

  (*wildcard)->Stop();
  (*wildcard)->Stop();  // idempotent
}

}  // namespace
}  // namespace ferry::worker
