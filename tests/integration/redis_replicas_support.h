// Test support for redis_replicas_test.cc: ferry-server replicas on one real redis-server, the
// clients a test talks to them through, deterministic records, and the admin HTTP endpoints.
//
// Header-only and test-only; everything here may fail the current GoogleTest test.
#ifndef FERRY_TESTS_INTEGRATION_REDIS_REPLICAS_SUPPORT_H_
#define FERRY_TESTS_INTEGRATION_REDIS_REPLICAS_SUPPORT_H_

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cerrno>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "ferry/metadata_client.h"
#include "ferry/publisher.h"
#include "google/protobuf/util/message_differencer.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "httplib.h"
#include "model_express/health.grpc.pb.h"
#include "model_express/p2p.grpc.pb.h"
#include "server_process.h"
#include "store/testing/redis_server.h"

namespace ferry::testing {

namespace p2p = ::model_express::p2p;
namespace health_v1 = ::grpc::health::v1;

// The deadline of every raw RPC; a server that answers later than this has failed the test.
inline constexpr absl::Duration kRpcDeadline = absl::Seconds(5);
// Publisher heartbeat interval used throughout.
inline constexpr absl::Duration kHeartbeat = absl::Milliseconds(100);

// Polls `done` every 20 ms until it holds or `timeout` passes; returns whether it held.
inline bool WaitFor(const std::function<bool()>& done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

// Collects failure descriptions from several threads; a test asserts it stays empty.
class ErrorLog {
 public:
  void Add(std::string error) {
    absl::MutexLock lock(&mu_);
    if (errors_.size() < 20) errors_.push_back(std::move(error));
    ++count_;
  }
  std::vector<std::string> errors() const {
    absl::MutexLock lock(&mu_);
    return errors_;
  }
  int count() const {
    absl::MutexLock lock(&mu_);
    return count_;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<std::string> errors_ ABSL_GUARDED_BY(mu_);  // the first 20
  int count_ ABSL_GUARDED_BY(mu_) = 0;
};

// ---------------------------------------------------------------------------------------------
// Records

// Mixed case on purpose: the mx_source_id is computed from the lowercased identity, and the
// stored identity must come back in its original case.
inline SourceIdentity Identity(const std::string& model) {
  SourceIdentity id;
  id.set_model_name(model);
  id.set_backend_framework(p2p::BACKEND_FRAMEWORK_VLLM);
  id.set_tensor_parallel_size(2);
  id.set_dtype("BFloat16");
  (*id.mutable_extra_parameters())["Revision-Tag"] = "Main";
  return id;
}

// A worker record whose content is derived from (worker_id, rank), with `tensors` tensors in
// source_payload (the form in which the server stores them).
inline WorkerMetadata Worker(const std::string& worker_id, uint32_t rank, int tensors) {
  WorkerMetadata w;
  w.set_worker_rank(rank);
  w.set_metadata_endpoint(absl::StrCat("10.1.", rank, ".1:5555/", worker_id));
  w.set_agent_name(absl::StrCat("agent-", worker_id, "-", rank));
  w.set_worker_grpc_endpoint(absl::StrCat("10.1.", rank, ".1:6555/", worker_id));
  w.set_accelerator("cuda");
  for (int i = 0; i < tensors; ++i) {
    TensorDescriptor* t = w.mutable_tensor_source()->add_tensors();
    t->set_name(absl::StrCat(worker_id, ".layer.", i, ".weight"));
    t->set_addr(0x10000ull * (i + 1));
    t->set_size(4096 + i);
    t->set_dtype("torch.bfloat16");
  }
  return w;
}

inline PublishMetadataRequest Request(const SourceIdentity& identity, const std::string& worker_id,
                                      uint32_t rank, int tensors) {
  PublishMetadataRequest r;
  *r.mutable_identity() = identity;
  r.set_worker_id(worker_id);
  *r.mutable_worker() = Worker(worker_id, rank, tensors);
  return r;
}

// Differences between the worker GetMetadata returned and `sent` (published with its tensors in
// source_payload), ignoring what the server owns (status, updated_at) and the legacy tensor
// list it fills from source_payload. Empty when they match.
inline std::string WorkerDiff(const WorkerMetadata& got, const WorkerMetadata& sent) {
  WorkerMetadata g = got;
  g.clear_status();
  g.clear_updated_at();
  std::string diff;
  ::google::protobuf::util::MessageDifferencer d;
  d.IgnoreField(WorkerMetadata::descriptor()->FindFieldByName("tensors"));
  d.ReportDifferencesToString(&diff);
  return d.Compare(sent, g) ? "" : diff;
}

inline std::string IdentityDiff(const SourceIdentity& got, const SourceIdentity& sent) {
  std::string diff;
  ::google::protobuf::util::MessageDifferencer d;
  d.ReportDifferencesToString(&diff);
  return d.Compare(sent, got) ? "" : diff;
}

inline bool Contains(const std::vector<SourceInstanceRef>& refs, const std::string& mx_source_id,
                     const std::string& worker_id) {
  for (const SourceInstanceRef& r : refs) {
    if (r.mx_source_id() == mx_source_id && r.worker_id() == worker_id) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Admin HTTP

struct HttpResponse {
  int status = 0;
  std::string body;
};

inline StatusOr<HttpResponse> HttpGet(int port, const std::string& path) {
  httplib::Client http("127.0.0.1", port);
  http.set_connection_timeout(2, 0);
  http.set_read_timeout(5, 0);
  httplib::Result res = http.Get(path.c_str());
  if (!res) {
    return absl::UnavailableError(absl::StrCat("GET http://127.0.0.1:", port, path,
                                               " failed: ", httplib::to_string(res.error())));
  }
  return HttpResponse{res->status, res->body};
}

// The value of the unlabelled counter `name` on the server's /metrics page.
inline StatusOr<int64_t> Counter(int admin_port, absl::string_view name) {
  FERRY_ASSIGN_OR_RETURN(HttpResponse page, HttpGet(admin_port, "/metrics"));
  if (page.status != 200) {
    return absl::UnavailableError(absl::StrCat("/metrics answered ", page.status));
  }
  for (absl::string_view line : absl::StrSplit(page.body, '\n')) {
    std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
    int64_t value = 0;
    if (parts.size() == 2 && parts[0] == name && absl::SimpleAtoi(parts[1], &value)) return value;
  }
  return absl::NotFoundError(absl::StrCat("no counter ", name, " on /metrics"));
}

// ---------------------------------------------------------------------------------------------
// Fixture

// One ferry-server child and what a test talks to it through.
struct Replica {
  std::unique_ptr<ServerProcess> process;
  // One attempt per call (no retries), so that a test sees every outcome.
  std::unique_ptr<MetadataClient> client;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<p2p::P2pService::Stub> p2p;
  std::unique_ptr<health_v1::Health::Stub> health;
  std::unique_ptr<::model_express::health::HealthService::Stub> mx_health;
};

inline std::unique_ptr<grpc::ClientContext> Context() {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(absl::ToChronoTime(absl::Now() + kRpcDeadline));
  return c;
}

// grpc.health.v1 Check of `service` ("" is the whole server); UNKNOWN when the call fails.
inline health_v1::HealthCheckResponse::ServingStatus HealthCheck(Replica& r,
                                                                 const std::string& service = "") {
  health_v1::HealthCheckRequest req;
  req.set_service(service);
  health_v1::HealthCheckResponse resp;
  auto ctx = Context();
  if (!r.health->Check(ctx.get(), req, &resp).ok()) return health_v1::HealthCheckResponse::UNKNOWN;
  return resp.status();
}

inline std::unique_ptr<MetadataClient> NewClient(const std::string& address) {
  MetadataClientOptions o;
  o.server_address = address;
  o.call_timeout = kRpcDeadline;
  o.connect_timeout = absl::Seconds(2);
  o.max_attempts = 1;
  auto c = MetadataClient::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(c).value() : nullptr;
}

inline PublisherOptions PublisherFor(MetadataClient* client, const SourceIdentity& identity,
                                     const std::string& worker_id, uint32_t rank) {
  PublisherOptions o;
  o.client = client;
  o.identity = identity;
  o.worker_id = worker_id;
  o.worker = Worker(worker_id, rank, /*tensors=*/2);
  o.heartbeat_interval = kHeartbeat;
  return o;
}

// A started publisher; nullptr (and a test failure) when it could not start.
inline std::unique_ptr<Publisher> StartPublisher(PublisherOptions options) {
  auto p = Publisher::Create(std::move(options));
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return nullptr;
  Status s = (*p)->Start();
  EXPECT_TRUE(s.ok()) << s;
  return s.ok() ? std::move(p).value() : nullptr;
}

class RedisReplicasTest : public ::testing::Test {
 protected:
  // Starts redis_. Wrap in ASSERT_NO_FATAL_FAILURE.
  void StartRedis(RedisServerOptions options = {}) {
    auto r = RedisServer::Start(std::move(options));
    ASSERT_TRUE(r.ok()) << r.status();
    redis_ = std::move(r).value();
  }

  // Starts a ferry-server on redis_ with `flags` added; nullptr (and a failure) if it does not
  // come up. The caller ASSERTs the result.
  Replica* StartReplica(std::vector<std::string> flags = {}) {
    if (redis_ == nullptr) {
      ADD_FAILURE() << "StartReplica before StartRedis";
      return nullptr;
    }
    flags.insert(flags.begin(), {"--store", redis_->url()});
    auto p = StartServer({.extra_args = flags});
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return nullptr;
    auto r = std::make_unique<Replica>();
    r->process = std::move(p).value();
    r->client = NewClient(r->process->address());
    if (r->client == nullptr) return nullptr;
    r->channel = grpc::CreateChannel(r->process->address(), grpc::InsecureChannelCredentials());
    r->p2p = p2p::P2pService::NewStub(r->channel);
    r->health = health_v1::Health::NewStub(r->channel);
    r->mx_health = ::model_express::health::HealthService::NewStub(r->channel);
    replicas_.push_back(std::move(r));
    return replicas_.back().get();
  }

  // Every replica still running must drain and exit 0 on SIGTERM, whatever its store went
  // through. Then no redis-server or ferry-server child may be left, whether the test passed or
  // failed (a crash of this process is covered by PR_SET_PDEATHSIG in the launcher).
  void TearDown() override {
    for (auto& r : replicas_) {
      if (r->process->running()) {
        Status stopped = r->process->Stop();  // OK only for exit status 0
        EXPECT_TRUE(stopped.ok()) << stopped;
      }
    }
    replicas_.clear();
    redis_.reset();
    errno = 0;
    EXPECT_EQ(waitpid(-1, nullptr, WNOHANG), -1) << "a child process outlived the test";
    EXPECT_EQ(errno, ECHILD);
  }

  std::unique_ptr<RedisServer> redis_;
  std::vector<std::unique_ptr<Replica>> replicas_;
};

}  // namespace ferry::testing

#endif  // FERRY_TESTS_INTEGRATION_REDIS_REPLICAS_SUPPORT_H_
