// A real `ferry artifact pull` fed tampered answers: a real ferry-server and a real signed
// `ferry artifact publish` source, with a fault-injecting proxy of the source's worker endpoint
// in between. The proxy forwards every artifact RPC to the real source and rewrites the answer
// (file table, chunk pages, artifact_id, signature, paths); a record published for it under the
// source's identity makes the target dial it. Each tampered answer must be refused with the
// specific message, with the install directory untouched and nothing written beside it.
//
// Also: the source's ModelExpress artifact RPCs called directly with the generated stubs, as a
// ModelExpress target calls them (header selection, paging, leases).
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "artifacts/kinds.h"
#include "artifacts/manifest.h"
#include "artifacts/signing.h"
#include "client/source_selection.h"
#include "common/testing/test_certs.h"
#include "ferry/metadata_client.h"
#include "ferry/publisher.h"
#include "ferry/source_identity.h"
#include "ferry/v1/worker.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model_express/p2p.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "server_process.h"
#include "worker/artifact_state.h"
#include "worker/worker_client.h"

namespace ferry {
namespace {

namespace fs = std::filesystem;
namespace p2p = ::model_express::p2p;
using ::ferry::testing::BinaryPath;
using ::ferry::testing::ChildOptions;
using ::ferry::testing::ChildProcess;
using ::ferry::testing::CommandResult;
using ::ferry::testing::ReadFile;
using ::ferry::testing::RunCommand;
using ::ferry::testing::ServerProcess;
using ::ferry::testing::StartServer;
using ::ferry::testing::TempDir;
using ::ferry::testing::WriteFile;
using ::testing::HasSubstr;

constexpr char kModel[] = "it/tamper";
constexpr char kKind[] = "torch-compile";
constexpr int kChunkSize = 1024;
constexpr int kMaxLeases = 2;

// The caller's shell must not change what the children see.
const std::vector<std::string> kCleanEnv = {"FERRY_SERVER=",
                                            "MX_SERVER_ADDRESS=",
                                            "FERRY_TOKEN_FILE=",
                                            "MX_AUTH_TOKEN_PATH=",
                                            "FERRY_TOKEN=",
                                            "FERRY_TLS_CA=",
                                            "FERRY_TLS_CLIENT_CERT=",
                                            "FERRY_TLS_CLIENT_KEY=",
                                            "FERRY_ARTIFACT_STATE_DIR=",
                                            "FERRY_ARTIFACT_CHUNK_SIZE=",
                                            "MX_ARTIFACT_TRANSFER_CHUNK_SIZE="};

std::string Bytes(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (char& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

// Every entry under `root` (relative path -> contents, "<dir>" for directories), so that a test
// can tell that nothing at all changed there.
std::map<std::string, std::string> Tree(const std::string& root) {
  std::map<std::string, std::string> out;
  if (!fs::exists(root)) return out;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    const std::string rel = fs::relative(e.path(), root).string();
    out[rel] = e.is_directory() ? "<dir>" : ReadFile(e.path().string());
  }
  return out;
}

std::string Describe(const CommandResult& r) {
  return absl::StrCat("exit ", r.exit_code, "\nstdout:\n", r.out, "\nstderr:\n", r.err);
}

// ---- The fault-injecting proxy ----

// How the proxy changes the source's answers. Ids in requests that equal claimed_artifact_id are
// replaced by the real one before forwarding, and the real id in answers by claimed_artifact_id,
// so that a proxy can present a (tampered) manifest under another id consistently. The hooks run
// last, on the answer the target will see.
struct Tamper {
  std::string claimed_artifact_id;  // empty: the real id
  std::function<void(p2p::GetArtifactManifestHeaderResponse&)> header;
  std::function<void(p2p::GetArtifactManifestChunksResponse&)> chunks;
  std::function<void(ferry::v1::GetArtifactTransferInfoResponse&)> transfer_info;
};

// Shared by the two services: the upstream stubs, the tamper and call counters. Thread-safe
// (the tamper is immutable once the proxy starts; counters are atomic).
struct Upstream {
  std::unique_ptr<p2p::WorkerService::Stub> manifest;
  std::unique_ptr<ferry::v1::FerryWorkerService::Stub> transfer;
  std::string real_artifact_id;
  Tamper tamper;
  std::atomic<int> header_calls{0};
  std::atomic<int> chunk_calls{0};
  std::atomic<int> transfer_info_calls{0};
  std::atomic<int> lease_calls{0};

  const std::string& claimed() const {
    return tamper.claimed_artifact_id.empty() ? real_artifact_id : tamper.claimed_artifact_id;
  }
  template <typename Request>
  Request ToUpstream(const Request& in) const {
    Request out = in;
    if (out.artifact_id() == claimed()) out.set_artifact_id(real_artifact_id);
    return out;
  }
  template <typename Response>
  void FromUpstream(Response* r) const {
    if (r->artifact_id() == real_artifact_id) r->set_artifact_id(claimed());
  }
  // A client context for the forwarded call: the caller's bearer token, if any, and a deadline.
  static void Prepare(const grpc::ServerContext& in, grpc::ClientContext* out) {
    auto auth = in.client_metadata().find("authorization");
    if (auth != in.client_metadata().end()) {
      out->AddMetadata("authorization", std::string(auth->second.data(), auth->second.size()));
    }
    out->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }
};

class ManifestProxy final : public p2p::WorkerService::Service {
 public:
  explicit ManifestProxy(Upstream* up) : up_(up) {}

  grpc::Status GetArtifactManifestHeader(
      grpc::ServerContext* context, const p2p::GetArtifactManifestHeaderRequest* request,
      p2p::GetArtifactManifestHeaderResponse* response) override {
    ++up_->header_calls;
    grpc::ClientContext out;
    Upstream::Prepare(*context, &out);
    grpc::Status s =
        up_->manifest->GetArtifactManifestHeader(&out, up_->ToUpstream(*request), response);
    if (!s.ok()) return s;
    up_->FromUpstream(response);
    if (up_->tamper.header) up_->tamper.header(*response);
    return s;
  }

  grpc::Status GetArtifactManifestChunks(
      grpc::ServerContext* context, const p2p::GetArtifactManifestChunksRequest* request,
      p2p::GetArtifactManifestChunksResponse* response) override {
    ++up_->chunk_calls;
    grpc::ClientContext out;
    Upstream::Prepare(*context, &out);
    grpc::Status s =
        up_->manifest->GetArtifactManifestChunks(&out, up_->ToUpstream(*request), response);
    if (!s.ok()) return s;
    up_->FromUpstream(response);
    if (up_->tamper.chunks) up_->tamper.chunks(*response);
    return s;
  }

  grpc::Status PrepareArtifactChunk(grpc::ServerContext* context,
                                    const p2p::PrepareArtifactChunkRequest* request,
                                    p2p::PrepareArtifactChunkResponse* response) override {
    ++up_->lease_calls;
    grpc::ClientContext out;
    Upstream::Prepare(*context, &out);
    grpc::Status s = up_->manifest->PrepareArtifactChunk(&out, up_->ToUpstream(*request), response);
    if (s.ok()) up_->FromUpstream(response);
    return s;
  }

  grpc::Status ReleaseArtifactChunk(grpc::ServerContext* context,
                                    const p2p::ReleaseArtifactChunkRequest* request,
                                    p2p::ReleaseArtifactChunkResponse* response) override {
    ++up_->lease_calls;
    grpc::ClientContext out;
    Upstream::Prepare(*context, &out);
    grpc::Status s = up_->manifest->ReleaseArtifactChunk(&out, up_->ToUpstream(*request), response);
    if (s.ok()) up_->FromUpstream(response);
    return s;
  }

 private:
  Upstream* up_;  // owned by the Proxy
};

class TransferInfoProxy final : public ferry::v1::FerryWorkerService::Service {
 public:
  explicit TransferInfoProxy(Upstream* up) : up_(up) {}

  grpc::Status GetArtifactTransferInfo(
      grpc::ServerContext* context, const ferry::v1::GetArtifactTransferInfoRequest* request,
      ferry::v1::GetArtifactTransferInfoResponse* response) override {
    ++up_->transfer_info_calls;
    grpc::ClientContext out;
    Upstream::Prepare(*context, &out);
    grpc::Status s =
        up_->transfer->GetArtifactTransferInfo(&out, up_->ToUpstream(*request), response);
    if (!s.ok()) return s;
    up_->FromUpstream(response);
    if (up_->tamper.transfer_info) up_->tamper.transfer_info(*response);
    return s;
  }

 private:
  Upstream* up_;  // owned by the Proxy
};

// A gRPC server on a loopback port serving both proxy services (sync API only: gRPC 1.51 must
// not mix callback and sync services in one server). Thread-compatible; its handlers are
// thread-safe.
class Proxy {
 public:
  static std::unique_ptr<Proxy> Start(const std::string& upstream_endpoint,
                                      const std::string& real_artifact_id, Tamper tamper) {
    auto proxy = std::unique_ptr<Proxy>(new Proxy());
    auto channel = grpc::CreateChannel(upstream_endpoint, grpc::InsecureChannelCredentials());
    proxy->up_.manifest = p2p::WorkerService::NewStub(channel);
    proxy->up_.transfer = ferry::v1::FerryWorkerService::NewStub(channel);
    proxy->up_.real_artifact_id = real_artifact_id;
    proxy->up_.tamper = std::move(tamper);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &proxy->port_);
    builder.RegisterService(&proxy->manifest_);
    builder.RegisterService(&proxy->transfer_);
    proxy->server_ = builder.BuildAndStart();
    if (proxy->server_ == nullptr || proxy->port_ == 0) return nullptr;
    return proxy;
  }
  ~Proxy() {
    if (server_ != nullptr) {
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
      server_->Wait();
    }
  }
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  const Upstream& upstream() const { return up_; }

 private:
  Proxy() : manifest_(&up_), transfer_(&up_) {}

  Upstream up_;
  ManifestProxy manifest_;
  TransferInfoProxy transfer_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

// ---- One ferry-server and one signed source for the whole suite ----

struct Shared {
  TempDir dir;
  std::unique_ptr<ServerProcess> server;
  std::unique_ptr<MetadataClient> client;
  std::unique_ptr<ChildProcess> source;
  SourceIdentity identity;
  std::string cache;  // the published directory
  std::string root;   // its canonical path: every manifest path starts with root + "/"
  std::string key_path;
  std::string pub_path;
  std::string mx_source_id;
  std::string worker_id;
  std::string endpoint;
  std::string artifact_id;
  int chunk_count = 0;
  artifacts::Manifest manifest;              // as the source serves it
  std::map<std::string, std::string> files;  // relative path -> contents
};

class ArtifactTamperTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto s = std::make_unique<Shared>();
    setup_error_ = new std::string(StartShared(*s));
    if (setup_error_->empty()) shared_ = s.release();
  }
  static void TearDownTestSuite() {
    if (shared_ != nullptr && shared_->source != nullptr) {
      (void)shared_->source->Terminate(absl::Seconds(20));
    }
    delete shared_;
    shared_ = nullptr;
    delete setup_error_;
    setup_error_ = nullptr;
  }

  // Starts everything; returns "" or what failed.
  static std::string StartShared(Shared& s) {
    auto server = StartServer({});
    if (!server.ok()) return server.status().ToString();
    s.server = *std::move(server);
    MetadataClientOptions options;
    options.server_address = s.server->address();
    auto client = MetadataClient::Create(options);
    if (!client.ok()) return client.status().ToString();
    s.client = *std::move(client);

    auto keys = artifacts::WriteKeyPair(s.dir.path() + "/keys");
    if (!keys.ok()) return keys.status().ToString();
    s.key_path = keys->private_key_path;
    s.pub_path = keys->public_key_path;

    s.cache = s.dir.path() + "/cache";
    s.files = {{"a.bin", Bytes(2500, 1)},
               {"empty", ""},
               {"sub/b.txt", "hello triton\n"},
               {"sub/deep/c.so", Bytes(5000, 2)}};
    for (const auto& [rel, data] : s.files) WriteFile(s.cache + "/" + rel, data);

    const std::string ready = s.dir.path() + "/source.ready";
    std::vector<std::string> argv = {BinaryPath("ferry"),
                                     "artifact",
                                     "publish",
                                     s.cache,
                                     "--kind",
                                     kKind,
                                     "--model",
                                     kModel,
                                     "--server",
                                     s.server->address(),
                                     "--signing-key",
                                     s.key_path,
                                     "--chunk-size",
                                     std::to_string(kChunkSize),
                                     "--max-leases",
                                     std::to_string(kMaxLeases),
                                     "--transport",
                                     "tcp",
                                     "--data-listen",
                                     "127.0.0.1:0",
                                     "--worker-listen",
                                     "127.0.0.1:0",
                                     "--worker-id",
                                     "real-source",
                                     "--ready-file",
                                     ready};
    std::vector<std::string> env_remove;
    for (const std::string& e : kCleanEnv) env_remove.push_back(e.substr(0, e.size() - 1));
    auto child = ChildProcess::Start(ChildOptions{
        .argv = argv, .log_file = s.dir.path() + "/source.log", .env_remove = env_remove});
    if (!child.ok()) return child.status().ToString();
    s.source = *std::move(child);
    auto json = s.source->WaitForReadyFile(ready, "worker_port", absl::Seconds(60));
    if (!json.ok()) return json.status().ToString();
    s.mx_source_id = (*json)["mx_source_id"];
    s.worker_id = (*json)["worker_id"];
    s.endpoint = (*json)["worker_endpoint"];
    s.artifact_id = (*json)["artifact_id"];
    s.root = (*json)["root"];
    s.chunk_count = (*json)["chunks"];

    // The identity `ferry artifact publish --model kModel --kind kKind` publishes under (checked
    // below against the mx_source_id it printed).
    auto kind = artifacts::ParseArtifactKind(kKind);
    if (!kind.ok()) return kind.status().ToString();
    SourceIdentity base;
    base.set_model_name(kModel);
    base.set_tensor_parallel_size(1);
    base.set_pipeline_parallel_size(1);
    base.set_expert_parallel_size(1);
    s.identity = artifacts::ArtifactIdentity(base, *kind, {});
    auto mx = ComputeMxSourceId(s.identity);
    if (!mx.ok() || *mx != s.mx_source_id) {
      return absl::StrCat("the test's identity gives mx_source_id ",
                          mx.ok() ? *mx : mx.status().ToString(), ", the source's is ",
                          s.mx_source_id);
    }

    worker::WorkerClientOptions wo;
    wo.endpoint = s.endpoint;
    auto wc = worker::WorkerClient::Create(wo);
    if (!wc.ok()) return wc.status().ToString();
    auto fetched = (*wc)->GetArtifactManifest(s.mx_source_id, s.artifact_id, 1 << 20);
    if (!fetched.ok()) return fetched.status().ToString();
    s.manifest = fetched->manifest;
    if (artifacts::ArtifactId(s.manifest) != s.artifact_id) return "the source's manifest id";
    return "";
  }

  void SetUp() override {
    ASSERT_NE(shared_, nullptr) << "suite setup failed: "
                                << (setup_error_ != nullptr ? *setup_error_ : "?");
    s_ = shared_;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    base_ = s_->dir.path() + "/" + info->name();
    fs::create_directories(base_);
  }

  void TearDown() override {
    if (HasFailure() && s_ != nullptr && s_->source != nullptr) {
      std::cerr << "source log:\n" << s_->source->LogTail(20) << "\n";
    }
  }

  // A proxy of the real source with its own READY record (worker id "proxy-N") claiming
  // `tamper.claimed_artifact_id` (or the real id), and a target worker id whose rendezvous order
  // puts that record first.
  struct Faked {
    std::unique_ptr<Proxy> proxy;
    std::unique_ptr<Publisher> publisher;
    std::string worker_id;
    std::string target_worker_id;
  };

  Faked StartProxy(Tamper tamper) {
    Faked f;
    const std::string claimed =
        tamper.claimed_artifact_id.empty() ? s_->artifact_id : tamper.claimed_artifact_id;
    f.proxy = Proxy::Start(s_->endpoint, s_->artifact_id, std::move(tamper));
    EXPECT_NE(f.proxy, nullptr) << "the proxy did not start";
    if (f.proxy == nullptr) return f;
    f.worker_id = absl::StrCat("proxy-", ++proxies_);

    // The source's own record, re-published under another worker id that points at the proxy.
    auto record = s_->client->GetMetadata(s_->mx_source_id, s_->worker_id);
    EXPECT_TRUE(record.ok() && record->found()) << record.status();
    if (!record.ok()) return f;
    PublisherOptions options;
    options.client = s_->client.get();
    options.identity = s_->identity;
    options.worker_id = f.worker_id;
    options.worker = record->worker();
    options.worker.set_worker_grpc_endpoint(f.proxy->address());
    options.worker.mutable_artifact_source()->set_artifact_id(claimed);
    options.heartbeat_interval = absl::Seconds(10);
    auto publisher = Publisher::Create(std::move(options));
    EXPECT_TRUE(publisher.ok()) << publisher.status();
    if (!publisher.ok()) return f;
    f.publisher = *std::move(publisher);
    Status started = f.publisher->Start();
    EXPECT_TRUE(started.ok()) << started;
    EXPECT_EQ(f.publisher->mx_source_id(), s_->mx_source_id);

    // Which READY source a pull tries first: the real source is READY too, and must not be
    // chosen. Rather than racing its heartbeats (marking it STALE holds only until its next
    // heartbeat), pick a --target-worker-id whose rendezvous order puts the proxy first: the
    // order is a pure function of the ids (SHA-256 over model, target id and each candidate's
    // ids), computed here with the target's own OrderCandidates over the same READY listing.
    // With --max-sources 1 the target then tries the proxy and nothing else, and every pull's
    // error names the proxy's worker id, which the tests check.
    ListSourcesRequest request;
    *request.mutable_identity() = s_->identity;
    request.set_status_filter(p2p::SOURCE_STATUS_READY);
    auto refs = s_->client->ListSources(request);
    EXPECT_TRUE(refs.ok()) << refs.status();
    if (!refs.ok()) return f;
    bool real_listed = false;
    for (const auto& r : *refs) real_listed |= r.worker_id() == s_->worker_id;
    EXPECT_TRUE(real_listed) << "the real source should compete with the proxy";
    for (int i = 0; i < 1000 && f.target_worker_id.empty(); ++i) {
      SourceSelection selection;
      selection.model_name = kModel;
      selection.match_rank = false;
      selection.target_worker_id = absl::StrCat("target-", i);
      auto order = OrderCandidates(*refs, selection);
      if (!order.empty() && order.front().worker_id() == f.worker_id) {
        f.target_worker_id = selection.target_worker_id;
      }
    }
    EXPECT_FALSE(f.target_worker_id.empty()) << "no target id prefers " << f.worker_id;
    return f;
  }

  // `ferry artifact pull` into `into` (state under base_), trying only `faked`.
  CommandResult Pull(const Faked& faked, const std::string& into,
                     std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {BinaryPath("ferry"),
                                     "artifact",
                                     "pull",
                                     "--kind",
                                     kKind,
                                     "--model",
                                     kModel,
                                     "--server",
                                     s_->server->address(),
                                     "--into",
                                     into,
                                     "--state-dir",
                                     base_ + "/state",
                                     "--failure-ttl",
                                     "0",
                                     "--max-sources",
                                     "1",
                                     "--target-worker-id",
                                     faked.target_worker_id,
                                     "--transport",
                                     "tcp",
                                     "--json"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto r = RunCommand(argv, absl::Seconds(60), kCleanEnv);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *std::move(r) : CommandResult{};
  }

  // Runs a pull through a proxy with `tamper` into a fresh directory and expects it refused:
  // exit 1, `message` in stderr, the attempt naming the proxy, and the directory around the
  // install target (the target itself, staging, anything a bad path could reach) unchanged.
  // `preexisting`: the target already holds a local file, which must survive untouched.
  void ExpectRefused(const std::string& name, Tamper tamper, const std::string& message,
                     std::vector<std::string> extra = {"--trust"}, bool preexisting = false) {
    ExpectRefused(name, std::move(tamper), std::vector<std::string>{message}, std::move(extra),
                  preexisting);
  }
  void ExpectRefused(const std::string& name, Tamper tamper,
                     const std::vector<std::string>& messages,
                     std::vector<std::string> extra = {"--trust"}, bool preexisting = false) {
    SCOPED_TRACE(name);
    if (!extra.empty() && extra.back() == "--trust") extra.push_back(s_->pub_path);
    Faked faked = StartProxy(std::move(tamper));
    ASSERT_NE(faked.publisher, nullptr);
    const std::string parent = base_ + "/" + name;
    const std::string into = parent + "/cache";
    fs::create_directories(parent);
    if (preexisting) WriteFile(into + "/local/keep.txt", "mine\n");
    const auto before = Tree(parent);
    CommandResult r = Pull(faked, into, extra);
    EXPECT_EQ(r.exit_code, 1) << Describe(r);
    for (const std::string& message : messages) {
      EXPECT_THAT(r.err, HasSubstr(message)) << Describe(r);
    }
    EXPECT_THAT(r.err, HasSubstr(absl::StrCat("[1] worker ", faked.worker_id, " at ",
                                              faked.proxy->address())))
        << Describe(r);
    EXPECT_THAT(r.err, HasSubstr("1 of 2 READY source(s) tried, all failed")) << Describe(r);
    EXPECT_EQ(Tree(parent), before) << "the pull changed " << parent;
    EXPECT_EQ(fs::exists(into), preexisting);
    EXPECT_GE(faked.proxy->upstream().header_calls.load(), 1);
    faked.publisher->Stop();
  }

  // The source's manifest changed by `edit`, its id, and the trusted key's signature over
  // (mx_source_id, that id): a manifest that every manifest and signature check accepts.
  struct Resigned {
    artifacts::Manifest manifest;
    std::string artifact_id;
    std::string signature;
  };
  Resigned Resign(const std::function<void(artifacts::Manifest&)>& edit) {
    Resigned r;
    r.manifest = s_->manifest;
    edit(r.manifest);
    r.artifact_id = artifacts::ArtifactId(r.manifest);
    auto key = artifacts::SigningKey::Load(s_->key_path);
    EXPECT_TRUE(key.ok()) << key.status();
    if (!key.ok()) return r;
    auto sig = key->Sign(artifacts::SignedMessage(s_->mx_source_id, r.artifact_id));
    EXPECT_TRUE(sig.ok()) << sig.status();
    if (sig.ok()) r.signature = *sig;
    return r;
  }
  Resigned ResignPath(size_t index, const std::string& path) {
    return Resign([&](artifacts::Manifest& m) { m.files.at(index).path = path; });
  }

  // A tamper presenting `resigned` consistently: every id, the file table, the chunk pages and
  // the signature agree with it.
  static Tamper Present(const Resigned& resigned) {
    Tamper t;
    t.claimed_artifact_id = resigned.artifact_id;
    t.header = [m = resigned.manifest](p2p::GetArtifactManifestHeaderResponse& h) {
      h.clear_files();
      for (const auto& f : m.files) worker::ManifestFileToProto(f, h.add_files());
    };
    t.chunks = [m = resigned.manifest](p2p::GetArtifactManifestChunksResponse& page) {
      for (auto& c : *page.mutable_chunks()) {
        worker::ManifestChunkToProto(m.chunks.at(c.chunk_index()), &c);
      }
    };
    t.transfer_info = [sig = resigned.signature](ferry::v1::GetArtifactTransferInfoResponse& i) {
      i.set_signature(sig);
    };
    return t;
  }

  static Shared* shared_;
  static std::string* setup_error_;
  Shared* s_ = nullptr;
  std::string base_;  // this test's directory
  int proxies_ = 0;
};

Shared* ArtifactTamperTest::shared_ = nullptr;
std::string* ArtifactTamperTest::setup_error_ = nullptr;

// The harness itself: a proxy that changes nothing serves a pull that installs the tree, and it
// forwards the lease RPCs too.
TEST_F(ArtifactTamperTest, UnchangedProxyServesAVerifiedInstall) {
  Faked faked = StartProxy(Tamper{});
  ASSERT_NE(faked.publisher, nullptr);
  const std::string into = base_ + "/out/cache";
  CommandResult r = Pull(faked, into, {"--trust", s_->pub_path});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << Describe(r);
  EXPECT_EQ(j["installed"], true);
  EXPECT_EQ(j["artifact_id"], s_->artifact_id);
  EXPECT_EQ(j["trust"], "trusted");
  EXPECT_EQ(j["source"]["worker_id"], faked.worker_id);
  EXPECT_EQ(j["source"]["endpoint"], faked.proxy->address());
  ASSERT_EQ(j["attempts"].size(), 1u) << j.dump(2);
  std::map<std::string, std::string> expected;
  for (const auto& [rel, data] : s_->files) {
    expected[rel] = data;
    for (fs::path p = fs::path(rel).parent_path(); !p.empty(); p = p.parent_path()) {
      expected[p.string()] = "<dir>";
    }
  }
  EXPECT_EQ(Tree(into), expected);
  EXPECT_EQ(Tree(base_ + "/out").size(), expected.size() + 1) << "staging left behind";
  const Upstream& up = faked.proxy->upstream();
  EXPECT_EQ(up.header_calls.load(), 1);
  EXPECT_EQ(up.chunk_calls.load(), 1);
  EXPECT_EQ(up.transfer_info_calls.load(), 1);

  // Leases through the proxy reach the source.
  auto channel = grpc::CreateChannel(faked.proxy->address(), grpc::InsecureChannelCredentials());
  auto stub = p2p::WorkerService::NewStub(channel);
  p2p::PrepareArtifactChunkRequest prepare;
  prepare.set_mx_source_id(s_->mx_source_id);
  prepare.set_artifact_id(s_->artifact_id);
  prepare.set_chunk_index(1);
  p2p::PrepareArtifactChunkResponse lease;
  grpc::ClientContext c1;
  ASSERT_TRUE(stub->PrepareArtifactChunk(&c1, prepare, &lease).ok());
  EXPECT_EQ(lease.chunk().chunk_index(), 1u);
  p2p::ReleaseArtifactChunkRequest release;
  release.set_lease_id(lease.lease_id());
  p2p::ReleaseArtifactChunkResponse released;
  grpc::ClientContext c2;
  ASSERT_TRUE(stub->ReleaseArtifactChunk(&c2, release, &released).ok());
  EXPECT_EQ(up.lease_calls.load(), 2);
  faked.publisher->Stop();
}

// What a pull writes stays inside --into even when the live cache holds symlinks that point out
// of it: an artifact directory replaces a local symlink of the same name (its target is never
// written through), and local symlinks the artifact does not name are kept as they are.
TEST_F(ArtifactTamperTest, LocalSymlinksInTheCacheAreNotFollowed) {
  const std::string outside = base_ + "/outside";
  WriteFile(outside + "/precious.txt", "not yours\n");
  const std::string into = base_ + "/out/cache";
  fs::create_directories(into);
  fs::create_directory_symlink(outside, into + "/sub");
  fs::create_symlink(outside + "/precious.txt", into + "/a.bin.link");
  const auto outside_before = Tree(outside);

  Faked faked = StartProxy(Tamper{});
  ASSERT_NE(faked.publisher, nullptr);
  CommandResult r = Pull(faked, into, {"--trust", s_->pub_path});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(Tree(outside), outside_before);
  EXPECT_FALSE(fs::is_symlink(into + "/sub"));
  EXPECT_EQ(ReadFile(into + "/sub/b.txt"), s_->files.at("sub/b.txt"));
  EXPECT_EQ(ReadFile(into + "/sub/deep/c.so"), s_->files.at("sub/deep/c.so"));
  EXPECT_TRUE(fs::is_symlink(into + "/a.bin.link"));
  EXPECT_EQ(fs::read_symlink(into + "/a.bin.link"), outside + "/precious.txt");
  EXPECT_EQ(ReadFile(into + "/a.bin"), s_->files.at("a.bin"));
  std::vector<std::string> beside;
  for (const auto& e : fs::directory_iterator(base_ + "/out")) {
    beside.push_back(e.path().filename());
  }
  EXPECT_EQ(beside, std::vector<std::string>{"cache"}) << "staging or old trees left behind";
}

TEST_F(ArtifactTamperTest, TamperedFileTableIsRefused) {
  const auto& f = s_->manifest.files[3];  // sub/deep/c.so
  {
    Tamper t;
    t.header = [](p2p::GetArtifactManifestHeaderResponse& h) {
      h.mutable_files(3)->set_checksum("00000000");
    };
    ExpectRefused("checksum", std::move(t),
                  absl::StrCat("artifact manifest rejected: artifact_id mismatch: the source "
                               "claims ",
                               s_->artifact_id, " but the manifest hashes to "));
  }
  {
    Tamper t;
    t.header = [](p2p::GetArtifactManifestHeaderResponse& h) {
      h.mutable_files(3)->set_size(h.files(3).size() + 1);
    };
    ExpectRefused("size", std::move(t),
                  absl::StrCat("artifact manifest rejected: file 3 ('", f.path, "') has size ",
                               f.size + 1, " but its chunks cover ", f.size, " bytes"));
  }
  {
    // A file dropped from the table: the header's count no longer matches.
    Tamper t;
    t.header = [](p2p::GetArtifactManifestHeaderResponse& h) { h.mutable_files()->RemoveLast(); };
    ExpectRefused("dropped", std::move(t),
                  "artifact manifest rejected: header file_count 4 but 3 files received");
  }
}

TEST_F(ArtifactTamperTest, TamperedChunkTableIsRefused) {
  {
    Tamper t;
    t.chunks = [](p2p::GetArtifactManifestChunksResponse& page) {
      page.mutable_chunks(4)->set_checksum("deadbeef");
    };
    ExpectRefused("checksum", std::move(t),
                  absl::StrCat("artifact manifest rejected: artifact_id mismatch: the source "
                               "claims ",
                               s_->artifact_id, " but the manifest hashes to "));
  }
  {
    Tamper t;
    t.chunks = [](p2p::GetArtifactManifestChunksResponse& page) {
      page.mutable_chunks(1)->set_file_offset(page.chunks(1).file_offset() + 1);
    };
    ExpectRefused(
        "offset", std::move(t),
        absl::StrCat("artifact manifest rejected: chunk 1 of file 0 ('", s_->manifest.files[0].path,
                     "') starts at offset ", kChunkSize + 1, ", expected ", kChunkSize));
  }
}

TEST_F(ArtifactTamperTest, WrongArtifactIdIsRefused) {
  const std::string other(64, 'e');
  {
    // The header answers for another artifact than the record announced.
    Tamper t;
    t.header = [other](p2p::GetArtifactManifestHeaderResponse& h) { h.set_artifact_id(other); };
    ExpectRefused("header", std::move(t),
                  absl::StrCat("the source answered for artifact ", other, ", not ",
                               s_->artifact_id, "; re-list sources"));
  }
  {
    // Record, header, pages and transfer info all claim `other`; the tables are intact, so the
    // recomputed id gives the lie away.
    Tamper t;
    t.claimed_artifact_id = other;
    ExpectRefused("everywhere", std::move(t),
                  absl::StrCat("artifact manifest rejected: artifact_id mismatch: the source "
                               "claims ",
                               other, " but the manifest hashes to ", s_->artifact_id));
  }
  {
    Tamper t;
    t.transfer_info = [other](ferry::v1::GetArtifactTransferInfoResponse& info) {
      info.set_artifact_id(other);
    };
    ExpectRefused("transfer-info", std::move(t),
                  absl::StrCat(": the source answered for artifact ", other, ", not ",
                               s_->artifact_id, "; re-list sources"));
  }
}

TEST_F(ArtifactTamperTest, BadSignatureIsRefusedEvenWithAllowUnsigned) {
  const std::string fingerprint =
      artifacts::KeyFingerprint(*artifacts::LoadPublicKey(s_->pub_path));
  const std::string does_not_verify =
      absl::StrCat(" carries a signature by trusted key ", fingerprint, " (", s_->pub_path,
                   ") that does not verify for model ", s_->mx_source_id,
                   ": the artifact was tampered with, or was signed for another model or "
                   "artifact; refusing it even with --allow-unsigned");
  {
    Tamper t;
    t.transfer_info = [](ferry::v1::GetArtifactTransferInfoResponse& info) {
      std::string sig = info.signature();
      sig[17] = static_cast<char>(sig[17] ^ 0x01);
      info.set_signature(sig);
    };
    ExpectRefused("flipped", std::move(t), does_not_verify, {"--allow-unsigned", "--trust"});
  }
  {
    // A genuine signature by the trusted key, but for another artifact: a replay.
    auto key = artifacts::SigningKey::Load(s_->key_path);
    ASSERT_TRUE(key.ok()) << key.status();
    auto replayed = key->Sign(artifacts::SignedMessage(s_->mx_source_id, std::string(64, 'a')));
    ASSERT_TRUE(replayed.ok()) << replayed.status();
    Tamper t;
    t.transfer_info = [sig = *replayed](ferry::v1::GetArtifactTransferInfoResponse& info) {
      info.set_signature(sig);
    };
    ExpectRefused("replayed", std::move(t), does_not_verify, {"--allow-unsigned", "--trust"});
  }
  {
    // A genuine signature by the trusted key over this artifact, but for another model.
    auto key = artifacts::SigningKey::Load(s_->key_path);
    ASSERT_TRUE(key.ok()) << key.status();
    auto replayed = key->Sign(artifacts::SignedMessage(std::string(16, '0'), s_->artifact_id));
    ASSERT_TRUE(replayed.ok()) << replayed.status();
    Tamper t;
    t.transfer_info = [sig = *replayed](ferry::v1::GetArtifactTransferInfoResponse& info) {
      info.set_signature(sig);
    };
    ExpectRefused("other-model", std::move(t), does_not_verify, {"--allow-unsigned", "--trust"});
  }
  {
    // Re-signed by a key the target does not trust: refused without --allow-unsigned.
    auto foreign = artifacts::SigningKey::Generate();
    ASSERT_TRUE(foreign.ok()) << foreign.status();
    auto sig = foreign->Sign(artifacts::SignedMessage(s_->mx_source_id, s_->artifact_id));
    ASSERT_TRUE(sig.ok()) << sig.status();
    Tamper t;
    t.transfer_info = [sig = *sig,
                       pub = foreign->public_key()](ferry::v1::GetArtifactTransferInfoResponse& i) {
      i.set_signature(sig);
      i.set_signing_public_key(pub);
    };
    ExpectRefused("foreign-key", std::move(t),
                  absl::StrCat(" is signed by key ", foreign->fingerprint(),
                               ", which this target does not trust (it trusts 1 key)"));
  }
}

TEST_F(ArtifactTamperTest, MissingSignatureIsRefusedWithoutAllowUnsigned) {
  {
    Tamper t;
    t.transfer_info = [](ferry::v1::GetArtifactTransferInfoResponse& info) {
      info.clear_signature();
      info.clear_signing_public_key();
    };
    ExpectRefused("cleared", std::move(t),
                  {absl::StrCat("artifact ", s_->artifact_id, " from worker proxy-"),
                   " is unsigned; pass --trust with the deployment's public key and have the "
                   "source sign with --signing-key, or --allow-unsigned to accept it"});
  }
  {
    // A key without its signature is unsigned too.
    Tamper t;
    t.transfer_info = [](ferry::v1::GetArtifactTransferInfoResponse& info) {
      info.clear_signature();
    };
    ExpectRefused("signature-only", std::move(t), " is unsigned; pass --trust");
  }
  {
    // A signature without its key is malformed, whatever --allow-unsigned says.
    Tamper t;
    t.transfer_info = [](ferry::v1::GetArtifactTransferInfoResponse& info) {
      info.clear_signing_public_key();
    };
    ExpectRefused("key-only", std::move(t),
                  " carries a malformed signature (public key 0 bytes, signature 64 bytes",
                  {"--allow-unsigned", "--trust"});
  }
}

TEST_F(ArtifactTamperTest, HeaderCountsThatDisagreeWithTheTablesAreRefused) {
  {
    Tamper t;
    t.header = [](p2p::GetArtifactManifestHeaderResponse& h) {
      h.set_chunk_count(h.chunk_count() + 1);
    };
    ExpectRefused("one-more", std::move(t),
                  absl::StrCat("artifact manifest rejected: header chunk_count ",
                               s_->chunk_count + 1, " but ", s_->chunk_count, " chunks received"));
  }
  {
    // Past the target's limit (64 chunks per allowed file + 1024): refused before any page.
    Tamper t;
    t.header = [](p2p::GetArtifactManifestHeaderResponse& h) { h.set_chunk_count(4000000000u); };
    ExpectRefused("huge", std::move(t),
                  ": chunk_count 4000000000 exceeds the limit of 64001024; refusing the artifact");
  }
}

// A manifest re-signed by the trusted key after its checksums were changed: trust passes, so the
// bytes themselves must be refused, after staging began; the staged files must go too.
TEST_F(ArtifactTamperTest, SignedManifestWithWrongChecksumsFailsByteVerification) {
  const auto& files = s_->manifest.files;
  {
    const Resigned bad =
        Resign([](artifacts::Manifest& m) { m.chunks.at(5).checksum = "0badc0de"; });
    ExpectRefused("chunk", Present(bad),
                  absl::StrCat("chunk 5 of '", files[3].path,
                               "' (bytes 1024..2048) failed "
                               "verification: CRC32C ",
                               s_->manifest.chunks[5].checksum,
                               " but the manifest says 0badc0de; the source or the transfer is "
                               "corrupt"),
                  {"--trust"}, /*preexisting=*/true);
  }
  {
    const Resigned bad =
        Resign([](artifacts::Manifest& m) { m.files.at(0).checksum = "0badc0de"; });
    ExpectRefused("file", Present(bad),
                  absl::StrCat("file '", files[0].path, "' failed verification: CRC32C ",
                               files[0].checksum, " but the manifest says 0badc0de"));
  }
  {
    const Resigned bad =
        Resign([](artifacts::Manifest& m) { m.files.at(1).checksum = "0badc0de"; });
    ExpectRefused(
        "empty-file", Present(bad),
        absl::StrCat("empty file 1 '", files[1].path, "' has checksum 0badc0de, not 00000000"));
  }
}

// Where the target reads the bytes from is the source's word too (GetArtifactTransferInfo):
// offsets that do not fit the manifest or the region, or that point at other bytes, are refused
// and nothing is installed.
TEST_F(ArtifactTamperTest, TamperedTransferInfoIsRefused) {
  const auto& files = s_->manifest.files;
  {
    Tamper t;
    t.transfer_info = [](ferry::v1::GetArtifactTransferInfoResponse& info) {
      info.mutable_file_offsets()->RemoveLast();
    };
    ExpectRefused("offsets-count", std::move(t), "the source gave 3 file offsets for 4 files");
  }
  {
    // a.bin read from where c.so lies: the chunk checksums catch it, after staging began.
    Tamper t;
    t.transfer_info = [](ferry::v1::GetArtifactTransferInfoResponse& info) {
      info.set_file_offsets(0, info.file_offsets(3));
    };
    ExpectRefused("offsets-swapped", std::move(t),
                  {absl::StrCat("chunk 0 of '", files[0].path,
                                "' (bytes 0..1024) failed verification: CRC32C "),
                   absl::StrCat(" but the manifest says ", s_->manifest.chunks[0].checksum)},
                  {"--trust"}, /*preexisting=*/true);
  }
  {
    // Outside the source's region (7513 bytes, as its blob says): refused before the read.
    Tamper t;
    t.transfer_info = [](ferry::v1::GetArtifactTransferInfoResponse& info) {
      info.set_file_offsets(0, uint64_t{1} << 40);
    };
    ExpectRefused(
        "offsets-outside", std::move(t),
        std::vector<std::string>{" [1099511627776, 1099511630276)) is out of range: region ",
                                 " over tcp has 7513 bytes"});
  }
  {
    Tamper t;
    t.transfer_info = [](ferry::v1::GetArtifactTransferInfoResponse& info) {
      info.set_region(info.region() + 1000);
    };
    ExpectRefused("region", std::move(t),
                  std::vector<std::string>{" [0, 7513)) names a region that ",
                                           " does not export; check the blob"});
  }
  {
    // Another (normalized) root: every path is outside it.
    Tamper t;
    t.transfer_info = [](ferry::v1::GetArtifactTransferInfoResponse& info) {
      info.set_source_root("/var/lib/elsewhere");
    };
    ExpectRefused("other-root", std::move(t),
                  absl::StrCat("artifact file 0 '", files[0].path,
                               "' is outside the source root '/var/lib/elsewhere'; refusing to "
                               "install it"));
  }
}

// Paths rewritten with the artifact_id recomputed and re-signed by the trusted key, so that only
// the install-path check stands between the manifest and the file system.
TEST_F(ArtifactTamperTest, EscapingPathsAreRefusedNamingTheEntry) {
  const std::string root = s_->root;
  ASSERT_FALSE(fs::exists("/etc/ferry-escape"));

  // Control: the same machinery with a harmless new path installs, under the new name.
  {
    const Resigned ok = ResignPath(3, root + "/sub/deep/renamed.so");
    Faked faked = StartProxy(Present(ok));
    ASSERT_NE(faked.publisher, nullptr);
    const std::string into = base_ + "/control/cache";
    CommandResult r = Pull(faked, into, {"--trust", s_->pub_path});
    ASSERT_EQ(r.exit_code, 0) << Describe(r);
    EXPECT_THAT(r.out, HasSubstr(ok.artifact_id));
    EXPECT_EQ(ReadFile(into + "/sub/deep/renamed.so"), s_->files.at("sub/deep/c.so"));
    EXPECT_FALSE(fs::exists(into + "/sub/deep/c.so"));
    faked.publisher->Stop();
  }

  struct Case {
    std::string name;
    size_t index;
    std::string path;
    std::string rule;
  };
  const std::vector<Case> cases = {
      {"outside", 0, "/etc/ferry-escape", absl::StrCat("is outside the source root '", root, "'")},
      {"dotdot", 0, root + "/../escape", "has a '..' path component"},
      {"deep-dotdot", 3, root + "/sub/../../escape", "has a '..' path component"},
      {"dot", 2, root + "/a/./b", "has a '.' path component"},
      {"root-itself", 1, root, "is the source root itself, not a file under it"},
      {"sibling-prefix", 0, root + "2/escape",
       absl::StrCat("is outside the source root '", root, "'")},
      {"empty-component", 2, root + "/sub//b.txt", "has an empty path component"},
      {"nul", 0, root + std::string("/a\0/etc/passwd", 14),
       "contains a NUL byte"},  // shown as \x00 in the message
      {"duplicate", 2, root + "/a.bin", absl::StrCat("maps to the same path 'a.bin' as file 0")},
      {"file-is-a-directory", 0, root + "/sub",
       absl::StrCat("is also a directory of file 2 '", root, "/sub/b.txt'")},
  };
  for (const Case& c : cases) {
    std::string shown = c.path;
    if (const size_t nul = shown.find('\0'); nul != std::string::npos) {
      shown.replace(nul, 1, "\\x00");
    }
    ExpectRefused(c.name, Present(ResignPath(c.index, c.path)),
                  absl::StrCat("artifact file ", c.index, " '", shown, "' ", c.rule,
                               "; refusing to install it"),
                  {"--trust"}, /*preexisting=*/c.name == "dotdot");
    EXPECT_FALSE(fs::exists("/etc/ferry-escape"));
    EXPECT_FALSE(fs::exists(fs::path(root).parent_path() / "escape"));
  }

  // A source root that is not normalized is refused before any path is mapped.
  {
    Tamper t;
    t.transfer_info = [root](ferry::v1::GetArtifactTransferInfoResponse& info) {
      info.set_source_root(root + "/sub/..");
    };
    ExpectRefused("root-dotdot", std::move(t),
                  absl::StrCat("artifact source root '", root,
                               "/sub/..' is not an absolute normalized path"));
  }
}

TEST_F(ArtifactTamperTest, MisbehavingChunkPagesAreRefused) {
  {
    Tamper t;
    t.chunks = [](p2p::GetArtifactManifestChunksResponse& page) {
      page.set_start_chunk_index(page.start_chunk_index() + 1);
    };
    ExpectRefused("off-by-one", std::move(t),
                  ": asked for chunks from 0 but the page starts at 1; try another source");
  }
  {
    // The only page claims more follow, from where it started.
    Tamper t;
    t.chunks = [](p2p::GetArtifactManifestChunksResponse& page) { page.set_next_page_token("0"); };
    ExpectRefused(
        "stuck-token", std::move(t),
        ": next_page_token '0' does not continue from the 9 chunks received (page start 0); "
        "try another source");
  }
  {
    Tamper t;
    t.chunks = [](p2p::GetArtifactManifestChunksResponse& page) {
      page.set_next_page_token("next");
    };
    ExpectRefused("garbage-token", std::move(t),
                  ": next_page_token 'next' does not continue from the 9 chunks received (page "
                  "start 0); try another source");
  }
  {
    Tamper t;
    t.chunks = [](p2p::GetArtifactManifestChunksResponse& page) {
      *page.add_chunks() = page.chunks(0);
    };
    ExpectRefused("extra-chunk", std::move(t),
                  absl::StrCat(": the chunk pages hold more than chunk_count ", s_->chunk_count,
                               " chunks; try another source"));
  }
}

// The source's ModelExpress artifact RPCs, called as a ModelExpress target calls them.
TEST_F(ArtifactTamperTest, ModelExpressArtifactRpcsAgainstTheRealSource) {
  auto channel = grpc::CreateChannel(s_->endpoint, grpc::InsecureChannelCredentials());
  auto stub = p2p::WorkerService::NewStub(channel);
  auto call = [&](auto rpc, const auto& request, auto* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return ((*stub).*rpc)(&context, request, response);
  };

  // Header: empty ids select the only artifact; wrong ids are FAILED_PRECONDITION.
  p2p::GetArtifactManifestHeaderRequest hreq;
  p2p::GetArtifactManifestHeaderResponse header;
  grpc::Status st = call(&p2p::WorkerService::Stub::GetArtifactManifestHeader, hreq, &header);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(header.mx_source_id(), s_->mx_source_id);
  EXPECT_EQ(header.artifact_id(), s_->artifact_id);
  EXPECT_EQ(header.manifest_version(), 1u);
  EXPECT_EQ(header.mx_source_type(), p2p::MX_SOURCE_TYPE_TORCH_COMPILE_CACHE);
  EXPECT_EQ(header.chunk_size(), static_cast<uint64_t>(kChunkSize));
  EXPECT_EQ(header.file_count(), 4u);
  EXPECT_EQ(header.chunk_count(), static_cast<uint32_t>(s_->chunk_count));
  EXPECT_EQ(header.total_size(), 2500u + 13u + 5000u);
  ASSERT_EQ(header.files_size(), 4);
  EXPECT_EQ(header.files(0).path(), s_->root + "/a.bin");
  EXPECT_EQ(header.files(1).path(), s_->root + "/empty");
  EXPECT_EQ(header.files(1).checksum(), "00000000");
  EXPECT_EQ(header.files(3).path(), s_->root + "/sub/deep/c.so");
  {
    p2p::GetArtifactManifestHeaderRequest r;
    r.set_mx_source_id(std::string(64, '0'));
    p2p::GetArtifactManifestHeaderResponse ignored;
    grpc::Status s = call(&p2p::WorkerService::Stub::GetArtifactManifestHeader, r, &ignored);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("mx_source_id mismatch"));
  }
  {
    p2p::GetArtifactManifestHeaderRequest r;
    r.set_mx_source_id(s_->mx_source_id);
    r.set_artifact_id(std::string(64, 'f'));
    p2p::GetArtifactManifestHeaderResponse ignored;
    grpc::Status s = call(&p2p::WorkerService::Stub::GetArtifactManifestHeader, r, &ignored);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
    EXPECT_THAT(s.error_message(),
                HasSubstr(absl::StrCat("unknown artifact_id ", std::string(64, 'f'),
                                       ": this worker serves ", s_->artifact_id)));
  }

  // Chunk pages of two: decimal next_page_token, "" on the last page; the assembled manifest
  // hashes to the artifact_id.
  artifacts::Manifest m;
  m.manifest_version = header.manifest_version();
  m.mx_source_type = header.mx_source_type();
  m.chunk_size = header.chunk_size();
  for (const auto& f : header.files()) m.files.push_back(worker::ManifestFileFromProto(f));
  uint32_t start = 0;
  int pages = 0;
  for (;;) {
    p2p::GetArtifactManifestChunksRequest r;
    r.set_mx_source_id(s_->mx_source_id);
    r.set_artifact_id(s_->artifact_id);
    r.set_start_chunk_index(start);
    r.set_max_chunks(2);
    p2p::GetArtifactManifestChunksResponse page;
    grpc::Status s = call(&p2p::WorkerService::Stub::GetArtifactManifestChunks, r, &page);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ++pages;
    EXPECT_EQ(page.start_chunk_index(), start);
    EXPECT_EQ(page.artifact_id(), s_->artifact_id);
    const uint32_t left = static_cast<uint32_t>(s_->chunk_count) - start;
    ASSERT_EQ(page.chunks_size(), static_cast<int>(std::min<uint32_t>(2, left)));
    for (const auto& c : page.chunks()) {
      EXPECT_EQ(c.chunk_index(), m.chunks.size());
      m.chunks.push_back(worker::ManifestChunkFromProto(c));
    }
    if (m.chunks.size() == static_cast<size_t>(s_->chunk_count)) {
      EXPECT_EQ(page.next_page_token(), "");
      break;
    }
    EXPECT_EQ(page.next_page_token(), std::to_string(start + 2));
    start += 2;
    ASSERT_LT(pages, 100);
  }
  EXPECT_EQ(pages, (s_->chunk_count + 1) / 2);
  EXPECT_EQ(artifacts::ArtifactId(m), s_->artifact_id);
  {
    p2p::GetArtifactManifestChunksRequest r;
    r.set_start_chunk_index(static_cast<uint32_t>(s_->chunk_count));
    p2p::GetArtifactManifestChunksResponse page;
    grpc::Status s = call(&p2p::WorkerService::Stub::GetArtifactManifestChunks, r, &page);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(page.chunks_size(), 0);
    EXPECT_EQ(page.next_page_token(), "");
    r.set_start_chunk_index(static_cast<uint32_t>(s_->chunk_count) + 1);
    s = call(&p2p::WorkerService::Stub::GetArtifactManifestChunks, r, &page);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_THAT(s.error_message(),
                HasSubstr(absl::StrCat("start_chunk_index ", s_->chunk_count + 1,
                                       " is beyond the artifact's ", s_->chunk_count, " chunks")));
  }

  // Leases: a lease per chunk with its range, at most --max-leases outstanding.
  auto prepare = [&](uint32_t index, p2p::PrepareArtifactChunkResponse* out) {
    p2p::PrepareArtifactChunkRequest r;
    r.set_mx_source_id(s_->mx_source_id);
    r.set_artifact_id(s_->artifact_id);
    r.set_chunk_index(index);
    return call(&p2p::WorkerService::Stub::PrepareArtifactChunk, r, out);
  };
  auto release = [&](const std::string& lease_id, p2p::ReleaseArtifactChunkResponse* out) {
    p2p::ReleaseArtifactChunkRequest r;
    r.set_mx_source_id(s_->mx_source_id);
    r.set_artifact_id(s_->artifact_id);
    r.set_lease_id(lease_id);
    return call(&p2p::WorkerService::Stub::ReleaseArtifactChunk, r, out);
  };
  p2p::PrepareArtifactChunkResponse l0, l1, l2;
  {
    p2p::PrepareArtifactChunkRequest r;
    r.set_artifact_id(std::string(64, 'f'));
    grpc::Status s = call(&p2p::WorkerService::Stub::PrepareArtifactChunk, r, &l0);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  }
  st = prepare(static_cast<uint32_t>(s_->chunk_count), &l0);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_THAT(st.error_message(), HasSubstr("is out of range"));
  st = prepare(0, &l0);
  ASSERT_TRUE(st.ok()) << st.error_message();
  st = prepare(s_->chunk_count - 1, &l1);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(l0.lease_id().empty());
  EXPECT_NE(l0.lease_id(), l1.lease_id());
  EXPECT_EQ(l0.artifact_id(), s_->artifact_id);
  EXPECT_EQ(l0.chunk().chunk_index(), 0u);
  EXPECT_EQ(l0.chunk().checksum(), m.chunks[0].checksum);
  EXPECT_EQ(l0.source().length(), m.chunks[0].length);
  const auto& last = m.chunks.back();
  EXPECT_EQ(l1.chunk().chunk_index(), last.chunk_index);
  EXPECT_EQ(l1.source().length(), last.length);
  EXPECT_LT(l1.source().length(), static_cast<uint64_t>(kChunkSize));  // 5000 % 1024
  // The descriptors address the snapshot as the transfer info lays it out.
  {
    auto transfer = ferry::v1::FerryWorkerService::NewStub(channel);
    ferry::v1::GetArtifactTransferInfoRequest r;
    ferry::v1::GetArtifactTransferInfoResponse info;
    grpc::ClientContext context;
    ASSERT_TRUE(transfer->GetArtifactTransferInfo(&context, r, &info).ok());
    ASSERT_EQ(info.file_offsets_size(), 4);
    EXPECT_EQ(l1.source().addr() - l0.source().addr(),
              info.file_offsets(last.file_index) + last.file_offset - info.file_offsets(0));
    EXPECT_EQ(l0.source_metadata(), info.transfer_blob());
  }
  st = prepare(1, &l2);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_THAT(
      st.error_message(),
      HasSubstr(absl::StrCat("all ", kMaxLeases, " artifact chunk leases are outstanding")));

  p2p::ReleaseArtifactChunkResponse released;
  st = release("no-such-lease", &released);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  st = release(l0.lease_id(), &released);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(released.chunk().chunk_index(), 0u);
  st = release(l0.lease_id(), &released);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << "a lease releases once";
  // The released slot is free again.
  st = prepare(1, &l2);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(l2.chunk().chunk_index(), 1u);
  EXPECT_TRUE(release(l1.lease_id(), &released).ok());
  EXPECT_TRUE(release(l2.lease_id(), &released).ok());
}

}  // namespace
}  // namespace ferry
