// In-process ferry-server for tests: a real Server on a loopback port, a memory store wrapped
// in a FaultStore, a clock the test sets, and a P2pService stub connected over real gRPC.
#ifndef FERRY_SERVER_TEST_SERVER_H_
#define FERRY_SERVER_TEST_SERVER_H_

#include <atomic>
#include <iterator>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/wire_status.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "model_express/health.grpc.pb.h"
#include "model_express/p2p.grpc.pb.h"
#include "server/server.h"
#include "store/fault_store.h"
#include "store/memory_store.h"

namespace ferry::server {

class TestServer {
 public:
  static constexpr int64_t kStartMs = 1'700'000'000'000;

  explicit TestServer(ServerOptions options = {}) {
    memory_ = store::MemoryStore::Create();
    faults_ = std::make_unique<store::FaultStore>(memory_.get());
    options.listen = "127.0.0.1:0";
    options.admin_listen = "127.0.0.1:0";
    options.store_override = faults_.get();
    options.now_ms = [this] { return now_ms.load(); };
    auto server = Server::Create(options);
    if (!server.ok()) {
      ADD_FAILURE() << server.status();
      std::abort();  // a test server that cannot start makes every later line meaningless
    }
    server_ = std::move(*server);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->grpc_port()),
                                   grpc::InsecureChannelCredentials());
    p2p = model_express::p2p::P2pService::NewStub(channel_);
    health = model_express::health::HealthService::NewStub(channel_);
  }
  ~TestServer() { server_->Stop(); }

  Server& server() { return *server_; }
  store::FaultStore& faults() { return *faults_; }

  std::atomic<int64_t> now_ms{kStartMs};
  std::unique_ptr<model_express::p2p::P2pService::Stub> p2p;
  std::unique_ptr<model_express::health::HealthService::Stub> health;

 private:
  std::unique_ptr<store::MemoryStore> memory_;
  std::unique_ptr<store::FaultStore> faults_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

// A gRPC status as the absl::Status of the same code and message (for StatusIs).
inline absl::Status FromGrpc(const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// The canonical code an answer carried in its trailing metadata (internal::kStatusCodeMetadataKey),
// read from the finished call's `context`; nullopt when it carried none. A repeated key or a value
// that ParseStatusCodeMetadata refuses fails the current test.
inline std::optional<absl::StatusCode> WireCode(const grpc::ClientContext& context) {
  const auto& trailers = context.GetServerTrailingMetadata();
  auto [first, last] = trailers.equal_range(internal::kStatusCodeMetadataKey);
  if (first == last) return std::nullopt;
  EXPECT_EQ(std::distance(first, last), 1) << "the code is sent once";
  const std::string value(first->second.data(), first->second.size());
  std::optional<absl::StatusCode> code = internal::ParseStatusCodeMetadata(value);
  EXPECT_TRUE(code.has_value()) << "unparsable code '" << value << "'";
  return code;
}

}  // namespace ferry::server

#endif  // FERRY_SERVER_TEST_SERVER_H_
