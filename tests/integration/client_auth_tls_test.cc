// MetadataClient and Publisher against a real ferry-server that requires bearer tokens
// (--auth-tokens), serves TLS (--tls-cert/--tls-key), or both, and requires client
// certificates (--tls-client-ca).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/testing/test_certs.h"
#include "ferry/metadata_client.h"
#include "ferry/publisher.h"
#include "ferry/source_identity.h"
#include "server_process.h"

namespace ferry {
namespace {

namespace p2p = ::model_express::p2p;
using ::ferry::testing::MakeTestCerts;
using ::ferry::testing::ServerProcess;
using ::ferry::testing::TempDir;
using ::ferry::testing::TestCerts;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kAliceToken[] = "alice-token-0123456789abcdef";
constexpr char kBobToken[] = "bob-token-0123456789abcdef";
constexpr char kUnknownToken[] = "unknown-token-0123456789abcdef";

SourceIdentity TestIdentity() {
  SourceIdentity id;
  id.set_model_name("auth/model");
  id.set_backend_framework(p2p::BACKEND_FRAMEWORK_VLLM);
  id.set_tensor_parallel_size(1);
  id.set_dtype("bfloat16");
  return id;
}

PublishMetadataRequest TestRequest(const std::string& worker_id) {
  PublishMetadataRequest r;
  *r.mutable_identity() = TestIdentity();
  r.set_worker_id(worker_id);
  r.mutable_worker()->set_worker_grpc_endpoint("10.0.0.1:6555");
  TensorDescriptor* t = r.mutable_worker()->mutable_tensor_source()->add_tensors();
  t->set_name("lm_head.weight");
  t->set_size(4096);
  return r;
}

StatusOr<std::unique_ptr<MetadataClient>> Connect(MetadataClientOptions o) {
  return MetadataClient::Create(o);
}

// Starts ferry-server with `args` and stops it at the end, expecting a clean exit.
class ServerTest : public ::testing::Test {
 protected:
  void StartServer(std::vector<std::string> args) {
    auto s = ::ferry::testing::StartServer({.extra_args = std::move(args)});
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(s).value();
  }

  void TearDown() override {
    if (server_ == nullptr || !server_->running()) return;
    Status stopped = server_->Stop();
    EXPECT_TRUE(stopped.ok()) << stopped;
  }

  // Options for this server; callers add credentials.
  MetadataClientOptions Options() const {
    MetadataClientOptions o;
    o.server_address = server_->address();
    o.call_timeout = absl::Seconds(10);
    return o;
  }

  std::unique_ptr<MetadataClient> ClientWith(MetadataClientOptions o) {
    auto c = Connect(std::move(o));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(c).value() : nullptr;
  }

  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
};

// ---------------------------------------------------------------------------------------------
// Bearer tokens over plaintext.

class AuthTest : public ServerTest {
 protected:
  void SetUp() override {
    tokens_ = dir_.Write("tokens", absl::StrCat(kAliceToken, " alice\n", kBobToken, " bob\n"));
    StartServer({"--auth-tokens", tokens_});
  }

  MetadataClientOptions WithTokenFile(const std::string& token) {
    MetadataClientOptions o = Options();
    o.token_file = dir_.Write(absl::StrCat("token-", ++token_files_), token + "\n");
    return o;
  }

  std::string tokens_;
  int token_files_ = 0;
};

TEST_F(AuthTest, TheRightTokenPublishesListsAndGets) {
  auto alice = ClientWith(WithTokenFile(kAliceToken));
  ASSERT_NE(alice, nullptr);
  auto published = alice->Publish(TestRequest("w-alice"));
  ASSERT_TRUE(published.ok()) << published.status();
  ASSERT_TRUE(
      alice->UpdateStatus(published->mx_source_id, "w-alice", 0, p2p::SOURCE_STATUS_READY).ok());
  ListSourcesRequest ready;
  ready.set_status_filter(p2p::SOURCE_STATUS_READY);
  auto refs = alice->ListSources(ready);
  ASSERT_TRUE(refs.ok()) << refs.status();
  ASSERT_EQ(refs->size(), 1u);
  EXPECT_EQ((*refs)[0].worker_id(), "w-alice");
  auto got = alice->GetMetadata(published->mx_source_id, "w-alice");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->worker().status(), p2p::SOURCE_STATUS_READY);

  // A literal token works the same way; health needs no token at all.
  MetadataClientOptions literal = Options();
  literal.token = kBobToken;
  auto bob = ClientWith(literal);
  ASSERT_NE(bob, nullptr);
  EXPECT_TRUE(bob->ListSources({}).ok());
  auto anonymous = ClientWith(Options());
  ASSERT_NE(anonymous, nullptr);
  EXPECT_TRUE(anonymous->Health().ok());
}

TEST_F(AuthTest, NoTokenIsUnauthenticatedAndNotRetried) {
  MetadataClientOptions o = Options();
  o.max_attempts = 5;
  o.retry_initial_backoff = absl::Seconds(2);  // a single retry would take 2 s
  auto client = ClientWith(o);
  ASSERT_NE(client, nullptr);
  const absl::Time start = absl::Now();
  auto refs = client->ListSources({});
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  ASSERT_FALSE(refs.ok());
  EXPECT_EQ(refs.status().code(), absl::StatusCode::kUnauthenticated);
  const std::string msg(refs.status().message());
  EXPECT_THAT(msg, HasSubstr(absl::StrCat("ListSources to ", server_->address(),
                                          " failed: UNAUTHENTICATED")));
  EXPECT_THAT(msg, HasSubstr("this client sends none: pass --token-file FILE or set "
                             "FERRY_TOKEN_FILE"));
  EXPECT_THAT(msg, Not(HasSubstr("attempts")));

  auto published = client->Publish(TestRequest("w"));
  EXPECT_EQ(published.status().code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(AuthTest, AWrongTokenIsUnauthenticatedAndNotEchoed) {
  MetadataClientOptions o = WithTokenFile(kUnknownToken);
  const std::string token_file = o.token_file;
  auto client = ClientWith(o);
  ASSERT_NE(client, nullptr);
  auto published = client->Publish(TestRequest("w"));
  ASSERT_FALSE(published.ok());
  EXPECT_EQ(published.status().code(), absl::StatusCode::kUnauthenticated);
  const std::string msg(published.status().message());
  EXPECT_THAT(msg, HasSubstr(absl::StrCat("the server did not accept the token in ", token_file)));
  EXPECT_THAT(msg, Not(HasSubstr(kUnknownToken)));

  o = Options();
  o.token = kUnknownToken;
  client = ClientWith(o);
  ASSERT_NE(client, nullptr);
  auto refs = client->ListSources({});
  EXPECT_EQ(refs.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(refs.status().message()),
              HasSubstr("did not accept the token in MetadataClientOptions.token"));
}

TEST_F(AuthTest, AnotherPrincipalCannotChangeARecordAndItsPublisherKeepsWorking) {
  auto alice = ClientWith(WithTokenFile(kAliceToken));
  auto bob = ClientWith(WithTokenFile(kBobToken));
  ASSERT_NE(alice, nullptr);
  ASSERT_NE(bob, nullptr);

  PublisherOptions p;
  p.client = alice.get();
  p.identity = TestIdentity();
  p.worker_id = "w-alice";
  p.worker = TestRequest("w-alice").worker();
  p.heartbeat_interval = absl::Milliseconds(100);
  auto publisher = Publisher::Create(std::move(p));
  ASSERT_TRUE(publisher.ok()) << publisher.status();
  ASSERT_TRUE((*publisher)->Start().ok());
  const std::string source = (*publisher)->mx_source_id();

  // Bob can read alice's record but neither change its status nor publish over it.
  Status update = bob->UpdateStatus(source, "w-alice", 0, p2p::SOURCE_STATUS_STALE);
  EXPECT_EQ(update.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(update.message()), HasSubstr("alice"));
  EXPECT_THAT(std::string(update.message()),
              HasSubstr("only the principal that published a record, or an admin principal"));
  auto over = bob->Publish(TestRequest("w-alice"));
  EXPECT_EQ(over.status().code(), absl::StatusCode::kPermissionDenied);
  auto read = bob->GetMetadata(source, "w-alice");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->worker().status(), p2p::SOURCE_STATUS_READY);

  // Alice's heartbeats go on.
  const int before = (*publisher)->heartbeat_count();
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while ((*publisher)->heartbeat_count() < before + 3 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_GE((*publisher)->heartbeat_count(), before + 3);
  EXPECT_EQ((*publisher)->failed_heartbeat_count(), 0);
  EXPECT_EQ((*publisher)->republish_count(), 0);

  // And Stop() marks it STALE under alice's token.
  (*publisher)->Stop();
  read = bob->GetMetadata(source, "w-alice");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->worker().status(), p2p::SOURCE_STATUS_STALE);
}

TEST_F(AuthTest, ARotatedTokenFileIsUsedOnTheNextCall) {
  MetadataClientOptions o = Options();
  o.token_file = dir_.Write("rotating", absl::StrCat(kAliceToken, "\n"));
  auto client = ClientWith(o);
  ASSERT_NE(client, nullptr);
  auto published = client->Publish(TestRequest("w-rot"));
  ASSERT_TRUE(published.ok()) << published.status();
  const std::string source = published->mx_source_id;

  // Rewritten in place with a token the server does not know: refused on the next call.
  dir_.Write("rotating", absl::StrCat(kUnknownToken, "\n"));
  EXPECT_EQ(client->ListSources({}).status().code(), absl::StatusCode::kUnauthenticated);

  // Replaced by rename with bob's: the server sees bob, who does not own the record.
  dir_.Replace("rotating", absl::StrCat(kBobToken, "\n"));
  EXPECT_TRUE(client->ListSources({}).ok());
  EXPECT_EQ(client->UpdateStatus(source, "w-rot", 0, p2p::SOURCE_STATUS_READY).code(),
            absl::StatusCode::kPermissionDenied);

  // Back to alice, who does.
  dir_.Replace("rotating", absl::StrCat(kAliceToken, "\n"));
  EXPECT_TRUE(client->UpdateStatus(source, "w-rot", 0, p2p::SOURCE_STATUS_READY).ok());

  // A file that disappears keeps the last token in force.
  ASSERT_EQ(std::remove(o.token_file.c_str()), 0);
  EXPECT_TRUE(client->UpdateStatus(source, "w-rot", 0, p2p::SOURCE_STATUS_READY).ok());
}

TEST_F(AuthTest, AMissingTokenFileFailsCreateNamingTheFile) {
  MetadataClientOptions o = Options();
  o.token_file = dir_.path() + "/no-such-token";
  auto client = Connect(o);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(client.status().message()),
              HasSubstr(absl::StrCat("--token-file, FERRY_TOKEN_FILE, MX_AUTH_TOKEN_PATH): ",
                                     o.token_file, " cannot be read")));
}

// ---------------------------------------------------------------------------------------------
// TLS and mutual TLS.

class TlsTest : public ServerTest {
 protected:
  void SetUp() override {
    auto certs = MakeTestCerts(dir_.path());
    ASSERT_TRUE(certs.ok()) << certs.status();
    certs_ = *certs;
  }

  void StartTlsServer(bool mutual, bool auth) {
    std::vector<std::string> args = {"--tls-cert", certs_.server_cert, "--tls-key",
                                     certs_.server_key};
    if (mutual) args.insert(args.end(), {"--tls-client-ca", certs_.ca});
    if (auth) {
      args.insert(args.end(),
                  {"--auth-tokens", dir_.Write("tokens", absl::StrCat(kAliceToken, " alice\n"))});
    }
    StartServer(std::move(args));
  }

  MetadataClientOptions WithCa() const {
    MetadataClientOptions o = Options();
    o.tls_ca_file = certs_.ca;
    return o;
  }

  // Options for a call that is expected to fail to connect: one attempt, no retries.
  static MetadataClientOptions Once(MetadataClientOptions o) {
    o.max_attempts = 1;
    return o;
  }

  TestCerts certs_;
};

TEST_F(TlsTest, AClientWithTheCaConnects) {
  StartTlsServer(/*mutual=*/false, /*auth=*/false);
  auto client = ClientWith(WithCa());
  ASSERT_NE(client, nullptr);
  auto health = client->Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->status, "ok");
  auto published = client->Publish(TestRequest("w-tls"));
  ASSERT_TRUE(published.ok()) << published.status();

  // By host name too (the certificate names localhost and 127.0.0.1).
  MetadataClientOptions by_name = WithCa();
  by_name.server_address = absl::StrCat("localhost:", server_->grpc_port());
  client = ClientWith(by_name);
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(client->ListSources({}).ok());
}

TEST_F(TlsTest, APlaintextClientGetsAClearUnavailable) {
  StartTlsServer(/*mutual=*/false, /*auth=*/false);
  auto client = ClientWith(Once(Options()));
  ASSERT_NE(client, nullptr);
  auto health = client->Health();
  ASSERT_FALSE(health.ok());
  EXPECT_EQ(health.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(health.status().message()),
              HasSubstr("if the server uses TLS, pass --tls-ca/FERRY_TLS_CA"));
}

TEST_F(TlsTest, TheServerCertificateIsVerified) {
  StartTlsServer(/*mutual=*/false, /*auth=*/false);
  // A CA that did not sign the server's certificate.
  MetadataClientOptions o = Once(Options());
  o.tls_ca_file = certs_.other_ca;
  auto client = ClientWith(o);
  ASSERT_NE(client, nullptr);
  auto health = client->Health();
  ASSERT_FALSE(health.ok());
  EXPECT_EQ(health.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(health.status().message()), HasSubstr("with TLS, check --tls-ca"));

  // A name the certificate does not carry, then one it does.
  o = Once(WithCa());
  o.tls_server_name = "wrong.example";
  client = ClientWith(o);
  ASSERT_NE(client, nullptr);
  health = client->Health();
  EXPECT_EQ(health.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(health.status().message()), HasSubstr("wrong.example"));
  o.tls_server_name = "localhost";
  client = ClientWith(o);
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(client->Health().ok());
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificate) {
  StartTlsServer(/*mutual=*/true, /*auth=*/false);
  MetadataClientOptions o = WithCa();
  o.tls_cert_file = certs_.client_cert;
  o.tls_key_file = certs_.client_key;
  auto client = ClientWith(o);
  ASSERT_NE(client, nullptr);
  auto published = client->Publish(TestRequest("w-mtls"));
  ASSERT_TRUE(published.ok()) << published.status();

  client = ClientWith(Once(WithCa()));
  ASSERT_NE(client, nullptr);
  auto refs = client->ListSources({});
  ASSERT_FALSE(refs.ok());
  EXPECT_EQ(refs.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(refs.status().message()),
              HasSubstr("--tls-cert/--tls-key if the server requires client certificates"));
}

TEST_F(TlsTest, TokensOverTls) {
  StartTlsServer(/*mutual=*/false, /*auth=*/true);
  MetadataClientOptions o = WithCa();
  o.token_file = dir_.Write("alice.token", kAliceToken);
  auto client = ClientWith(o);
  ASSERT_NE(client, nullptr);
  auto published = client->Publish(TestRequest("w-both"));
  ASSERT_TRUE(published.ok()) << published.status();

  client = ClientWith(WithCa());
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->ListSources({}).status().code(), absl::StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace ferry
