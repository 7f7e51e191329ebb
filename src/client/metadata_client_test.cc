#include "ferry/metadata_client.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/metadata_client_internal.h"
#include "common/testing/status_matchers.h"
#include "common/wire_status.h"
#include "model_express/p2p.grpc.pb.h"

namespace ferry {
namespace {

using ::ferry::testing::IsOk;
using ::ferry::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Optional;
using ::testing::StartsWith;

TEST(ResolveServerAddressTest, FlagWinsOverEnvironment) {
  EXPECT_EQ(internal::ResolveServerAddressFrom("flag:1", "env:2"), "flag:1");
}

TEST(ResolveServerAddressTest, EnvironmentWhenNoFlag) {
  EXPECT_EQ(internal::ResolveServerAddressFrom(std::nullopt, "env:2"), "env:2");
  EXPECT_EQ(internal::ResolveServerAddressFrom("", "env:2"), "env:2");
}

TEST(ResolveServerAddressTest, DefaultWhenNeither) {
  EXPECT_EQ(internal::ResolveServerAddressFrom(std::nullopt, std::nullopt), "localhost:8001");
  EXPECT_EQ(internal::ResolveServerAddressFrom("", ""), "localhost:8001");
}

TEST(NormalizeServerAddressTest, StripsSchemePrefixAndTrailingSlash) {
  auto a = internal::NormalizeServerAddress("http://mx-server:8001/");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->target, "mx-server:8001");
  EXPECT_FALSE(a->https_prefix);

  auto b = internal::NormalizeServerAddress("  https://mx.example.com:443 ");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->target, "mx.example.com:443");
  EXPECT_TRUE(b->https_prefix);
}

TEST(NormalizeServerAddressTest, AcceptsHostPortIpv6AndGrpcUris) {
  for (const char* ok : {"localhost:8001", "10.0.0.5:1", "[::1]:8001", "dns:///mx:8001",
                         "unix:/tmp/ferry.sock", "ipv4:127.0.0.1:5"}) {
    auto a = internal::NormalizeServerAddress(ok);
    ASSERT_TRUE(a.ok()) << ok << ": " << a.status();
    EXPECT_EQ(a->target, ok);
  }
}

TEST(NormalizeServerAddressTest, RejectsBadAddressesNamingTheField) {
  struct Case {
    const char* address;
    const char* why;
  };
  for (const Case& c : {Case{"", "is empty"}, Case{"http://", "is empty"},
                        Case{"localhost", "has no port"}, Case{"localhost:0", "valid port"},
                        Case{"localhost:70000", "valid port"}, Case{"localhost:http", "valid port"},
                        Case{":8001", "has no host"}, Case{"::1:8001", "without brackets"},
                        Case{"[::1]", "has no port"}, Case{"host:1/path", "has a path"}}) {
    auto a = internal::NormalizeServerAddress(c.address, "--server");
    EXPECT_THAT(a, StatusIs(absl::StatusCode::kInvalidArgument,
                            ::testing::AllOf(StartsWith("--server='"), HasSubstr(c.why))))
        << c.address;
  }
}

TEST(ValidateClientOptionsTest, DefaultsAreValid) {
  EXPECT_THAT(internal::ValidateClientOptions(MetadataClientOptions{}), IsOk());
}

TEST(ValidateClientOptionsTest, ErrorsNameTheField) {
  auto expect_error = [](MetadataClientOptions o, const char* field) {
    EXPECT_THAT(internal::ValidateClientOptions(o),
                StatusIs(absl::StatusCode::kInvalidArgument, StartsWith(field)))
        << field;
  };
  MetadataClientOptions o;
  o.server_address = "nohost";
  expect_error(o, "server_address=");
  o = {};
  o.call_timeout = absl::ZeroDuration();
  expect_error(o, "call_timeout=");
  o = {};
  o.connect_timeout = -absl::Seconds(1);
  expect_error(o, "connect_timeout=");
  o = {};
  o.call_timeout = absl::InfiniteDuration();
  expect_error(o, "call_timeout=");
  o = {};
  o.max_attempts = 0;
  expect_error(o, "max_attempts=0");
  o = {};
  o.max_message_size = 0;
  expect_error(o, "max_message_size=0");
  o = {};
  o.retry_initial_backoff = absl::ZeroDuration();
  expect_error(o, "retry_initial_backoff=");
  o = {};
  o.retry_max_backoff = absl::Milliseconds(100);
  expect_error(o, "retry_max_backoff=100ms must not be below");
}

TEST(MetadataClientTest, CreateRejectsInvalidOptions) {
  MetadataClientOptions o;
  o.max_attempts = -1;
  EXPECT_THAT(MetadataClient::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_attempts")));
}

TEST(MetadataClientTest, CreateDoesNotConnectAndNormalizesTheAddress) {
  MetadataClientOptions o;
  o.server_address = "http://127.0.0.1:1";
  auto c = MetadataClient::Create(o);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->server_address(), "127.0.0.1:1");
}

TEST(MetadataClientTest, GetMetadataRejectsEmptyIdsWithoutCalling) {
  MetadataClientOptions o;
  o.server_address = "127.0.0.1:1";
  auto c = MetadataClient::Create(o);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT((*c)->GetMetadata("", "w"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mx_source_id is required")));
  EXPECT_THAT((*c)->GetMetadata("s", ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("worker_id is required")));
}

TEST(RetryBackoffTest, DoublesFromInitialUpToMax) {
  const absl::Duration initial = absl::Milliseconds(200);
  const absl::Duration max = absl::Seconds(1);
  EXPECT_EQ(internal::RetryBackoff(1, initial, max), absl::Milliseconds(200));
  EXPECT_EQ(internal::RetryBackoff(2, initial, max), absl::Milliseconds(400));
  EXPECT_EQ(internal::RetryBackoff(3, initial, max), absl::Milliseconds(800));
  EXPECT_EQ(internal::RetryBackoff(4, initial, max), absl::Seconds(1));
  EXPECT_EQ(internal::RetryBackoff(1000, initial, max), absl::Seconds(1));
}

TEST(RetryBackoffTest, OnlyTransportFailuresAreRetried) {
  EXPECT_TRUE(internal::IsRetryableCode(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(internal::IsRetryableCode(absl::StatusCode::kDeadlineExceeded));
  EXPECT_FALSE(internal::IsRetryableCode(absl::StatusCode::kInvalidArgument));
  EXPECT_FALSE(internal::IsRetryableCode(absl::StatusCode::kNotFound));
  EXPECT_FALSE(internal::IsRetryableCode(absl::StatusCode::kUnauthenticated));
  EXPECT_FALSE(internal::IsRetryableCode(absl::StatusCode::kResourceExhausted));
}

TEST(RpcErrorTest, NamesRpcAddressCodeDetailsAndWhatToCheck) {
  Status s = internal::RpcError("ListSources", "localhost:8001", absl::StatusCode::kUnavailable,
                                "failed to connect to all addresses", 3);
  // (Not "Connection refused", so a plaintext client is also told about TLS.)
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnavailable,
                          "ListSources to localhost:8001 failed: UNAVAILABLE: failed to "
                          "connect to all addresses (3 attempts); check "
                          "--server/FERRY_SERVER or start ferry-server; if the server uses TLS, "
                          "pass --tls-ca/FERRY_TLS_CA (or --tls for a certificate the system "
                          "trusts)"));
}

TEST(RpcErrorTest, UnavailableWithoutARefusedConnectionMentionsTls) {
  Status plain =
      internal::RpcError("ListSources", "h:1", absl::StatusCode::kUnavailable, "Socket closed", 1);
  EXPECT_THAT(std::string(plain.message()),
              HasSubstr("start ferry-server; if the server uses TLS, pass --tls-ca/FERRY_TLS_CA"));
  Status tls = internal::RpcError("ListSources", "h:1", absl::StatusCode::kUnavailable,
                                  "Ssl handshake failed", 1, {.tls = true});
  EXPECT_THAT(std::string(tls.message()), HasSubstr("; with TLS, check --tls-ca/FERRY_TLS_CA"));
  Status refused = internal::RpcError("ListSources", "h:1", absl::StatusCode::kUnavailable,
                                      "connect: Connection refused", 1);
  EXPECT_THAT(std::string(refused.message()), Not(HasSubstr("TLS")));
}

TEST(RpcErrorTest, AuthErrorsSayWhatToDoAboutTheToken) {
  Status none = internal::RpcError("ListSources", "h:1", absl::StatusCode::kUnauthenticated,
                                   "missing authorization header", 1);
  EXPECT_THAT(none,
              StatusIs(absl::StatusCode::kUnauthenticated,
                       "ListSources to h:1 failed: UNAUTHENTICATED: missing authorization "
                       "header; the server requires a bearer token and this client sends none: "
                       "pass --token-file FILE or set FERRY_TOKEN_FILE (ModelExpress: "
                       "MX_AUTH_TOKEN_PATH)"));
  Status refused = internal::RpcError("ListSources", "h:1", absl::StatusCode::kUnauthenticated,
                                      "unknown token", 1, {.token_origin = "the token in /t"});
  EXPECT_THAT(std::string(refused.message()),
              HasSubstr("unknown token; the server did not accept the token in /t: check "
                        "--token-file/FERRY_TOKEN_FILE"));
  Status denied = internal::RpcError("UpdateStatus", "h:1", absl::StatusCode::kPermissionDenied,
                                     "belongs to principal 'alice'", 1);
  EXPECT_THAT(std::string(denied.message()),
              HasSubstr("alice'; only the principal that published a record"));
}

TEST(RpcErrorTest, NoHintForNonTransportErrors) {
  Status s = internal::RpcError("PublishMetadata", "h:1", absl::StatusCode::kResourceExhausted,
                                "message too large", 1);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kResourceExhausted,
                          "PublishMetadata to h:1 failed: RESOURCE_EXHAUSTED: message too "
                          "large"));
}

// The fallback for servers that send no code (ModelExpress's): the code is guessed from the text.
TEST(ServerRejectionTest, MapsServerMessagesToCodes) {
  EXPECT_THAT(internal::ServerRejection("UpdateStatus", "h:1",
                                        "Failed to update status: update_status: rank 0 not "
                                        "found in source 'S' worker 'W'"),
              StatusIs(absl::StatusCode::kNotFound,
                       "UpdateStatus to h:1 failed: NOT_FOUND: Failed to update status: "
                       "update_status: rank 0 not found in source 'S' worker 'W'"));
  EXPECT_THAT(internal::ServerRejection("UpdateStatus", "h:1",
                                        "worker rank 3 not found in 'mx:source:S:W'"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(
      internal::ServerRejection("PublishMetadata", "h:1", "identity.model_name is required"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("identity.model_name is required")));
  EXPECT_THAT(internal::ServerRejection("UpdateStatus", "h:1", "invalid status value: 7"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(internal::ServerRejection("PublishMetadata", "h:1",
                                        "Failed to publish metadata: redis unreachable"),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(
      internal::ServerRejection("PublishMetadata", "h:1", ""),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("success=false with no message")));
  // With no code, a size limit reads as FAILED_PRECONDITION: why ferry-server sends one.
  EXPECT_THAT(internal::ServerRejection("PublishMetadata", "h:1",
                                        "worker record is 9 bytes; the limit is 8 bytes"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(ServerRejectionTest, TheCodeFromTheWireWinsOverTheText) {
  EXPECT_THAT(internal::ServerRejection("PublishMetadata", "h:1",
                                        "worker record is 9 bytes; the limit is 8 bytes",
                                        absl::StatusCode::kInvalidArgument),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "PublishMetadata to h:1 failed: INVALID_ARGUMENT: worker record is 9 "
                       "bytes; the limit is 8 bytes"));
  // Even where the text alone would say otherwise.
  EXPECT_THAT(internal::ServerRejection("PublishMetadata", "h:1", "worker w not found",
                                        absl::StatusCode::kResourceExhausted),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(
      internal::ServerRejection("PublishMetadata", "h:1", "", absl::StatusCode::kInvalidArgument),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("success=false with no message")));
}

TEST(WireStatusCodeTest, ReadsOneValueOfTheKeyFromTheTrailers) {
  using Trailers = std::multimap<grpc::string_ref, grpc::string_ref>;
  EXPECT_EQ(internal::WireStatusCode(Trailers{}), std::nullopt);
  EXPECT_EQ(internal::WireStatusCode(Trailers{{"other-key", "3"}}), std::nullopt);
  EXPECT_THAT(internal::WireStatusCode(Trailers{{"other-key", "5"}, {"ferry-status-code", "3"}}),
              Optional(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(internal::WireStatusCode(Trailers{{"ferry-status-code", "x"}}), std::nullopt);
  // Sent twice: not trusted, even when the values agree.
  EXPECT_EQ(
      internal::WireStatusCode(Trailers{{"ferry-status-code", "3"}, {"ferry-status-code", "3"}}),
      std::nullopt);
}

// A P2P server that refuses every Publish and UpdateStatus with success=false, a fixed message
// and whatever trailing metadata the test sets: a server that is not ferry's, or a hostile one.
class RefusingServer final : public ::model_express::p2p::P2pService::Service {
 public:
  RefusingServer() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~RefusingServer() override { server_->Shutdown(); }

  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

  void Answer(std::string message, std::vector<std::pair<std::string, std::string>> trailers) {
    absl::MutexLock lock(&mu_);
    message_ = std::move(message);
    trailers_ = std::move(trailers);
  }

  grpc::Status PublishMetadata(grpc::ServerContext* context,
                               const ::model_express::p2p::PublishMetadataRequest*,
                               ::model_express::p2p::PublishMetadataResponse* response) override {
    response->set_success(false);
    response->set_message(Refuse(context));
    return grpc::Status::OK;
  }
  grpc::Status UpdateStatus(grpc::ServerContext* context,
                            const ::model_express::p2p::UpdateStatusRequest*,
                            ::model_express::p2p::UpdateStatusResponse* response) override {
    response->set_success(false);
    response->set_message(Refuse(context));
    return grpc::Status::OK;
  }

 private:
  std::string Refuse(grpc::ServerContext* context) {
    absl::MutexLock lock(&mu_);
    for (const auto& [key, value] : trailers_) context->AddTrailingMetadata(key, value);
    return message_;
  }

  int port_ = 0;
  absl::Mutex mu_;
  std::string message_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::string, std::string>> trailers_ ABSL_GUARDED_BY(mu_);
  // Last, so that it is destroyed first: its destructor joins the handler threads that use mu_.
  std::unique_ptr<grpc::Server> server_;
};

TEST(ServerRejectionTest, ClientUsesAValidCodeAndFallsBackToTheTextOtherwise) {
  RefusingServer server;
  MetadataClientOptions o;
  o.server_address = server.address();
  auto client = MetadataClient::Create(o);
  ASSERT_THAT(client, IsOk());
  PublishMetadataRequest request;
  request.mutable_identity()->set_model_name("m");
  request.set_worker_id("w");

  // A code that travels: used, whatever the text says.
  server.Answer("the limit is 8 bytes", {{internal::kStatusCodeMetadataKey, "3"}});
  EXPECT_THAT((*client)->Publish(request),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       absl::StrCat("PublishMetadata to ", server.address(),
                                    " failed: INVALID_ARGUMENT: the limit is 8 bytes")));
  server.Answer("quota", {{internal::kStatusCodeMetadataKey, "8"}});
  EXPECT_THAT((*client)->UpdateStatus("s", "w", 0, ::model_express::p2p::SOURCE_STATUS_READY),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("quota")));

  // No code, or one that cannot be trusted: the text decides ("not found" -> NOT_FOUND).
  const std::vector<std::vector<std::pair<std::string, std::string>>> untrusted = {
      {},
      {{internal::kStatusCodeMetadataKey, "0"}},
      {{internal::kStatusCodeMetadataKey, "17"}},
      {{internal::kStatusCodeMetadataKey, "-1"}},
      {{internal::kStatusCodeMetadataKey, "NOT_FOUND"}},
      {{internal::kStatusCodeMetadataKey, std::string(1000, '9')}},
      {{internal::kStatusCodeMetadataKey, "3"}, {internal::kStatusCodeMetadataKey, "8"}},
  };
  for (const auto& trailers : untrusted) {
    server.Answer("worker w not found", trailers);
    EXPECT_THAT((*client)->Publish(request),
                StatusIs(absl::StatusCode::kNotFound, HasSubstr("worker w not found")))
        << (trailers.empty() ? "(none)" : trailers[0].second.substr(0, 20));
  }
}

}  // namespace
}  // namespace ferry
