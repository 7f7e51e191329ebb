#include "ferry/metadata_client.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "client/metadata_client_internal.h"

namespace ferry {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
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
    ASSERT_FALSE(a.ok()) << c.address;
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(a.status().message()), StartsWith("--server='"));
    EXPECT_THAT(std::string(a.status().message()), HasSubstr(c.why)) << c.address;
  }
}

TEST(ValidateClientOptionsTest, DefaultsAreValid) {
  EXPECT_TRUE(internal::ValidateClientOptions(MetadataClientOptions{}).ok());
}

TEST(ValidateClientOptionsTest, ErrorsNameTheField) {
  auto expect_error = [](MetadataClientOptions o, const char* field) {
    Status s = internal::ValidateClientOptions(o);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(std::string(s.message()), StartsWith(field));
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
  auto c = MetadataClient::Create(o);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("max_attempts"));
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
  auto r = (*c)->GetMetadata("", "w");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("mx_source_id is required"));
  r = (*c)->GetMetadata("s", "");
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("worker_id is required"));
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
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.message(),
            "ListSources to localhost:8001 failed: UNAVAILABLE: failed to "
            "connect to all addresses (3 attempts); check "
            "--server/FERRY_SERVER or start ferry-server; if the server uses TLS, pass "
            "--tls-ca/FERRY_TLS_CA (or --tls for a certificate the system trusts)");
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
  EXPECT_EQ(none.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(none.message(),
            "ListSources to h:1 failed: UNAUTHENTICATED: missing authorization header; the "
            "server requires a bearer token and this client sends none: pass --token-file FILE "
            "or set FERRY_TOKEN_FILE (ModelExpress: MX_AUTH_TOKEN_PATH)");
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
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(),
            "PublishMetadata to h:1 failed: RESOURCE_EXHAUSTED: message too "
            "large");
}

TEST(ServerRejectionTest, MapsServerMessagesToCodes) {
  Status s = internal::ServerRejection(
      "UpdateStatus", "h:1",
      "Failed to update status: update_status: rank 0 not found in source "
      "'S' worker 'W'");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(),
            "UpdateStatus to h:1 failed: NOT_FOUND: Failed to update status: "
            "update_status: rank 0 not found in source 'S' worker 'W'");

  s = internal::ServerRejection("UpdateStatus", "h:1",
                                "worker rank 3 not found in 'mx:source:S:W'");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);

  s = internal::ServerRejection("PublishMetadata", "h:1", "identity.model_name is required");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("identity.model_name is required"));

  s = internal::ServerRejection("UpdateStatus", "h:1", "invalid status value: 7");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);

  s = internal::ServerRejection("PublishMetadata", "h:1",
                                "Failed to publish metadata: redis unreachable");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);

  s = internal::ServerRejection("PublishMetadata", "h:1", "");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("success=false with no message"));
}

}  // namespace
}  // namespace ferry
