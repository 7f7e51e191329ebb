#include "server/auth.h"

#include <fstream>

#include "common/testing/status_matchers.h"
#include "common/testing/test_certs.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/test_server.h"

namespace ferry::server {
namespace {

namespace p2p = ::model_express::p2p;
using ::ferry::testing::IsOk;
using ::ferry::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Optional;
constexpr absl::StatusCode kUnauthenticated = absl::StatusCode::kUnauthenticated;
constexpr absl::StatusCode kPermissionDenied = absl::StatusCode::kPermissionDenied;

constexpr char kAliceToken[] = "alice-token-0123456789abcdef";
constexpr char kBobToken[] = "bob-token-0123456789abcdef";
constexpr char kRootToken[] = "root-token-0123456789abcdef";

using ::ferry::testing::TempDir;

std::string TokensText() {
  return absl::StrCat("# deployment tokens\n", kAliceToken, " alice\n\n", kBobToken,
                      "   bob  # trailing comment\n", kRootToken, "\troot\n");
}

TEST(TokenFileTest, ParsesPairsAndCommentsAndNamesBadLines) {
  auto ok = TokenAuthenticator::Parse(TokensText(), "t.txt");
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_EQ(ok->size(), 3u);
  EXPECT_EQ((*ok)[1].principal, "bob");
  auto three = TokenAuthenticator::Parse("# x\nabcdefghijklmnopq alice extra\n", "t.txt");
  EXPECT_THAT(three, StatusIs(absl::StatusCode::kInvalidArgument,
                              HasSubstr("t.txt:2: expected 'TOKEN PRINCIPAL'")));
  auto short_token = TokenAuthenticator::Parse("abc alice\n", "t.txt");
  EXPECT_THAT(std::string(short_token.status().message()), HasSubstr("shorter than 16"));
  EXPECT_FALSE(TokenAuthenticator::Parse("# nothing\n", "t.txt").ok());
}

TEST(TokenAuthenticatorTest, HeaderRulesAndPrincipals) {
  TempDir dir;
  auto auth = TokenAuthenticator::Create({dir.Write("tokens", TokensText()), {"root"}}, nullptr);
  ASSERT_TRUE(auth.ok()) << auth.status();
  auto& a = **auth;
  EXPECT_THAT(a.AuthenticateHeader(""), StatusIs(kUnauthenticated));
  EXPECT_THAT(a.AuthenticateHeader("Basic abc"), StatusIs(kUnauthenticated));
  EXPECT_THAT(a.AuthenticateHeader("Bearer "), StatusIs(kUnauthenticated));
  EXPECT_THAT(a.AuthenticateHeader("Bearer nope-nope-nope-nope"), StatusIs(kUnauthenticated));
  auto alice = a.AuthenticateHeader(absl::StrCat("BEARER ", kAliceToken));
  ASSERT_THAT(alice, IsOk());
  EXPECT_EQ(alice->name, "alice");
  EXPECT_FALSE(alice->admin);
  auto root = a.AuthenticateHeader(absl::StrCat("Bearer ", kRootToken));
  ASSERT_TRUE(root.ok());
  EXPECT_TRUE(root->admin);
}

TEST(TokenAuthenticatorTest, ReloadsWhenTheFileChangesAndKeepsTokensOnABadFile) {
  TempDir dir;
  const std::string path = dir.Write("tokens", absl::StrCat(kAliceToken, " alice\n"));
  auto auth = TokenAuthenticator::Create({path, {}, absl::ZeroDuration()}, nullptr);
  ASSERT_TRUE(auth.ok());
  EXPECT_TRUE((*auth)->AuthenticateHeader(absl::StrCat("Bearer ", kAliceToken)).ok());
  dir.Write("tokens", absl::StrCat(kBobToken, " bob\n"));
  EXPECT_EQ((*auth)->AuthenticateHeader(absl::StrCat("Bearer ", kBobToken))->name, "bob");
  EXPECT_FALSE((*auth)->AuthenticateHeader(absl::StrCat("Bearer ", kAliceToken)).ok());
  dir.Write("tokens", "garbage line with too many fields\n");
  EXPECT_EQ((*auth)->AuthenticateHeader(absl::StrCat("Bearer ", kBobToken))->name, "bob");
}

class AuthServerTest : public ::testing::Test {
 protected:
  static ServerOptions Options(const TempDir& dir) {
    ServerOptions o;
    o.auth_tokens_file = dir.Write("tokens", TokensText());
    o.admin_principals = {"root"};
    return o;
  }
  grpc::Status Publish(const char* token, const std::string& worker_id,
                       p2p::PublishMetadataResponse* resp, const std::string& model = "m") {
    grpc::ClientContext ctx;
    if (token != nullptr) ctx.AddMetadata("authorization", absl::StrCat("Bearer ", token));
    p2p::PublishMetadataRequest req;
    req.mutable_identity()->set_model_name(model);
    req.set_worker_id(worker_id);
    req.mutable_worker();
    grpc::Status status = s_.p2p->PublishMetadata(&ctx, req, resp);
    code_ = WireCode(ctx);
    return status;
  }
  grpc::Status Update(const char* token, const std::string& source, const std::string& worker,
                      p2p::UpdateStatusResponse* resp) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", absl::StrCat("Bearer ", token));
    p2p::UpdateStatusRequest req;
    req.set_mx_source_id(source);
    req.set_worker_id(worker);
    req.set_status(p2p::SOURCE_STATUS_STALE);
    grpc::Status status = s_.p2p->UpdateStatus(&ctx, req, resp);
    code_ = WireCode(ctx);
    return status;
  }

  TempDir dir_;
  TestServer s_{Options(dir_)};
  std::optional<absl::StatusCode> code_;  // in the trailing metadata of the last answer
};

TEST_F(AuthServerTest, UnauthenticatedCallsAreRefusedAndHealthIsExempt) {
  p2p::PublishMetadataResponse resp;
  grpc::Status st = Publish(nullptr, "w", &resp);
  EXPECT_THAT(FromGrpc(st), StatusIs(kUnauthenticated));
  EXPECT_THAT(code_, Optional(kUnauthenticated));
  st = Publish("wrong-token-0123456789", "w", &resp);
  EXPECT_THAT(FromGrpc(st), StatusIs(kUnauthenticated));
  EXPECT_THAT(code_, Optional(kUnauthenticated));
  grpc::ClientContext list_ctx;
  p2p::ListSourcesResponse list;
  EXPECT_THAT(FromGrpc(s_.p2p->ListSources(&list_ctx, {}, &list)), StatusIs(kUnauthenticated));
  EXPECT_THAT(WireCode(list_ctx), Optional(kUnauthenticated));
  grpc::ClientContext health_ctx;
  model_express::health::HealthResponse health;
  EXPECT_TRUE(s_.health->GetHealth(&health_ctx, {}, &health).ok());
}

TEST_F(AuthServerTest, OnlyTheOwnerOrAnAdminChangesARecord) {
  p2p::PublishMetadataResponse resp;
  ASSERT_TRUE(Publish(kAliceToken, "w", &resp).ok());
  ASSERT_TRUE(resp.success()) << resp.message();
  const std::string sid = resp.mx_source_id();
  // Bob can neither re-publish alice's worker nor change its status.
  p2p::PublishMetadataResponse bob_pub;
  grpc::Status st = Publish(kBobToken, "w", &bob_pub);
  EXPECT_THAT(FromGrpc(st), StatusIs(kPermissionDenied, HasSubstr("belongs to principal 'alice'")));
  EXPECT_THAT(code_, Optional(kPermissionDenied));
  p2p::UpdateStatusResponse upd;
  EXPECT_THAT(FromGrpc(Update(kBobToken, sid, "w", &upd)), StatusIs(kPermissionDenied));
  EXPECT_THAT(code_, Optional(kPermissionDenied));
  // Alice and root can.
  EXPECT_TRUE(Update(kAliceToken, sid, "w", &upd).ok());
  EXPECT_TRUE(upd.success());
  EXPECT_TRUE(Update(kRootToken, sid, "w", &upd).ok());
  EXPECT_TRUE(upd.success());
  // Bob's own worker is his (under his own model identity: alice's identity is hers).
  ASSERT_TRUE(Publish(kBobToken, "bobs", &bob_pub, "m-bob").ok());
  EXPECT_TRUE(bob_pub.success());
}

// Regression: any principal could add workers under another's model identity (mx_source_id),
// and targets listing that identity would be sent to them.
TEST_F(AuthServerTest, AnIdentityBelongsToThePrincipalThatFirstPublishedIt) {
  p2p::PublishMetadataResponse resp;
  ASSERT_TRUE(Publish(kAliceToken, "w", &resp).ok());
  ASSERT_TRUE(resp.success()) << resp.message();
  const std::string sid = resp.mx_source_id();
  p2p::PublishMetadataResponse bob_pub;
  grpc::Status st = Publish(kBobToken, "bobs-new-worker", &bob_pub);
  EXPECT_THAT(FromGrpc(st),
              StatusIs(kPermissionDenied,
                       HasSubstr(absl::StrCat("source '", sid, "' belongs to principal 'alice'"))));
  EXPECT_THAT(st.error_message(), HasSubstr("only 'alice' or an admin principal may"));
  // The owner and an admin may add workers.
  ASSERT_TRUE(Publish(kAliceToken, "w2", &resp).ok());
  EXPECT_TRUE(resp.success()) << resp.message();
  ASSERT_TRUE(Publish(kRootToken, "rw", &resp).ok());
  EXPECT_TRUE(resp.success()) << resp.message();
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kAliceToken));
  p2p::ListSourcesResponse list;
  ASSERT_TRUE(s_.p2p->ListSources(&ctx, {}, &list).ok());
  EXPECT_EQ(list.instances_size(), 3);
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto certs = ::ferry::testing::MakeTestCerts(dir_.path());
    ASSERT_TRUE(certs.ok()) << certs.status();
    certs_ = *certs;
  }
  static std::string Read(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  std::shared_ptr<grpc::Channel> Channel(int port, bool client_cert) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = Read(certs_.ca);
    if (client_cert) {
      o.pem_private_key = Read(certs_.client_key);
      o.pem_cert_chain = Read(certs_.client_cert);
    }
    return grpc::CreateChannel(absl::StrCat("localhost:", port), grpc::SslCredentials(o));
  }
  static grpc::Status Health(const std::shared_ptr<grpc::Channel>& ch) {
    auto stub = model_express::health::HealthService::NewStub(ch);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    model_express::health::HealthResponse resp;
    return stub->GetHealth(&ctx, {}, &resp);
  }
  ServerOptions Tls(bool mutual) {
    ServerOptions o;
    o.tls_cert = certs_.server_cert;
    o.tls_key = certs_.server_key;
    if (mutual) o.tls_client_ca = certs_.ca;
    return o;
  }
  TempDir dir_;
  ::ferry::testing::TestCerts certs_;
};

TEST_F(TlsTest, ServesTlsAndRefusesPlainText) {
  TestServer s(Tls(false));
  EXPECT_TRUE(Health(Channel(s.server().grpc_port(), false)).ok());
  auto plain = grpc::CreateChannel(absl::StrCat("127.0.0.1:", s.server().grpc_port()),
                                   grpc::InsecureChannelCredentials());
  EXPECT_THAT(FromGrpc(Health(plain)), StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificate) {
  TestServer s(Tls(true));
  EXPECT_TRUE(Health(Channel(s.server().grpc_port(), true)).ok());
  EXPECT_THAT(FromGrpc(Health(Channel(s.server().grpc_port(), false))),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST(TlsOptionsTest, BadTlsOptionsNameTheFlag) {
  ServerOptions o;
  o.listen = "127.0.0.1:0";
  o.admin_listen = "";
  o.tls_cert = "/nonexistent/cert.pem";
  auto s = Server::Create(o);
  EXPECT_THAT(s,
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--tls-cert and --tls-key")));
  o.tls_key = "/nonexistent/key.pem";
  s = Server::Create(o);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument,
                          HasSubstr("--tls-cert: /nonexistent/cert.pem cannot be read")));
}

}  // namespace
}  // namespace ferry::server
