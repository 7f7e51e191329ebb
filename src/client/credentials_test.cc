#include "client/credentials.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "client/metadata_client_internal.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_certs.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::internal {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

using ::ferry::testing::StatusIs;
using ::ferry::testing::TempDir;

// Sets the modification time of `path` to `age` ago.
void Age(const std::string& path, absl::Duration age) {
  const timespec t = absl::ToTimespec(absl::Now() - age);
  const timespec times[2] = {t, t};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
}

TEST(ValidateTokenTest, AcceptsPrintableAsciiAndNeverEchoesTheToken) {
  EXPECT_TRUE(ValidateToken("abc.DEF-123_~+/=", "token").ok());
  EXPECT_THAT(ValidateToken("", "token (FERRY_TOKEN)"),
              StatusIs(absl::StatusCode::kInvalidArgument, "token (FERRY_TOKEN): is empty"));
  EXPECT_THAT(ValidateToken("secret-part other", "token"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("byte 12 of the token"), Not(HasSubstr("secret")))));
  EXPECT_FALSE(ValidateToken("tab\there", "token").ok());
  EXPECT_FALSE(ValidateToken("caf\xc3\xa9", "token").ok());
}

TEST(TokenSourceTest, FixedToken) {
  auto source = TokenSource::FromToken("fixed-token-123");
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->Get(), "fixed-token-123");
  EXPECT_EQ((*source)->Origin(), "the token in MetadataClientOptions.token (FERRY_TOKEN)");
  auto bad = TokenSource::FromToken("two words");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), StartsWith("token (FERRY_TOKEN): holds"));
}

TEST(TokenSourceTest, FileErrorsNameTheFileAndTheFlag) {
  TempDir dir;
  EXPECT_THAT(
      TokenSource::FromFile(dir.path() + "/nope"),
      StatusIs(absl::StatusCode::kInvalidArgument,
               absl::StrCat("token_file (--token-file, FERRY_TOKEN_FILE, "
                            "MX_AUTH_TOKEN_PATH): ",
                            dir.path(), "/nope cannot be read: No such file or directory")));
  auto empty = TokenSource::FromFile(dir.Write("empty", " \n\n"));
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(std::string(empty.status().message()), HasSubstr("/empty holds no token"));
  auto two = TokenSource::FromFile(dir.Write("two", "secret-one secret-two\n"));
  ASSERT_FALSE(two.ok());
  EXPECT_THAT(std::string(two.status().message()), HasSubstr("cannot be sent in a header"));
  EXPECT_THAT(std::string(two.status().message()), Not(HasSubstr("secret")));
  auto directory = TokenSource::FromFile(dir.path());
  ASSERT_FALSE(directory.ok());
  EXPECT_THAT(std::string(directory.status().message()), HasSubstr("is not a regular file"));
  auto big = TokenSource::FromFile(dir.Write("big", std::string(70000, 'x')));
  ASSERT_FALSE(big.ok());
  EXPECT_THAT(std::string(big.status().message()), HasSubstr("70000 bytes"));
}

TEST(TokenSourceTest, FileIsTrimmedAndReReadWhenItChanges) {
  TempDir dir;
  const std::string path = dir.Write("token", "  first-token-aaaa\n");
  auto source = TokenSource::FromFile(path);
  ASSERT_TRUE(source.ok()) << source.status();
  TokenSource& s = **source;
  EXPECT_EQ(s.Get(), "first-token-aaaa");
  EXPECT_THAT(s.Origin(), HasSubstr(path));

  // A rewrite (same size, within the same timestamp tick) is seen on the next call: a file
  // changed less than a second ago is not trusted by its stamp.
  dir.Write("token", "  other-token-bbbb\n");
  EXPECT_EQ(s.Get(), "other-token-bbbb");

  // Once settled, the stamp decides: same mtime, size and inode means no re-read...
  Age(path, absl::Seconds(10));
  EXPECT_EQ(s.Get(), "other-token-bbbb");
  const timespec old_mtime = [&] {
    struct stat st;
    ::stat(path.c_str(), &st);
    return st.st_mtim;
  }();
  dir.Write("token", "  third-token-cccc\n");
  const timespec times[2] = {old_mtime, old_mtime};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  EXPECT_EQ(s.Get(), "other-token-bbbb");
  // ...and a new mtime means a re-read.
  Age(path, absl::Seconds(5));
  EXPECT_EQ(s.Get(), "third-token-cccc");
}

TEST(TokenSourceTest, ABrokenRewriteKeepsThePreviousToken) {
  TempDir dir;
  const std::string path = dir.Write("token", "good-token-aaaa\n");
  auto source = TokenSource::FromFile(path);
  ASSERT_TRUE(source.ok()) << source.status();
  TokenSource& s = **source;
  dir.Write("token", "");  // half-way through a non-atomic rewrite
  EXPECT_EQ(s.Get(), "good-token-aaaa");
  ASSERT_EQ(::unlink(path.c_str()), 0);  // removed during a rotation
  EXPECT_EQ(s.Get(), "good-token-aaaa");
  dir.Write("token", "new-token-bbbb");
  EXPECT_EQ(s.Get(), "new-token-bbbb");
}

TEST(ValidateCredentialOptionsTest, ConflictsAndMissingPartsNameTheFields) {
  auto error = [](const MetadataClientOptions& o) {
    Status s = ValidateClientOptions(o);
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
    return std::string(s.message());
  };
  MetadataClientOptions o;
  o.token = "abcdefabcdef";
  o.token_file = "/t";
  EXPECT_EQ(error(o),
            "token (FERRY_TOKEN) and token_file (--token-file, FERRY_TOKEN_FILE, "
            "MX_AUTH_TOKEN_PATH) are both set; set one");
  o = {};
  o.token = "a b";
  EXPECT_THAT(error(o), StartsWith("token (FERRY_TOKEN): holds a character"));
  o = {};
  o.tls_cert_file = "/c.pem";
  EXPECT_EQ(error(o),
            "tls_cert_file (--tls-cert, FERRY_TLS_CLIENT_CERT) is set but tls_key_file "
            "(--tls-key, FERRY_TLS_CLIENT_KEY) is not; a client certificate needs both");
  o = {};
  o.tls_key_file = "/k.pem";
  EXPECT_THAT(error(o), StartsWith("tls_key_file (--tls-key, FERRY_TLS_CLIENT_KEY) is set but"));
  o = {};
  o.tls_server_name = "ferry.internal";
  EXPECT_THAT(error(o), StartsWith("tls_server_name (--tls-server-name)='ferry.internal' needs "
                                   "TLS"));
  o.server_address = "https://10.0.0.1:8001";  // https:// turns TLS on
  EXPECT_TRUE(ValidateClientOptions(o).ok());
  o = {};
  o.credentials = grpc::InsecureChannelCredentials();
  o.tls = true;
  EXPECT_THAT(error(o), StartsWith("credentials and tls / tls_* are both set"));
}

TEST(MakeChannelSecurityTest, PlaintextTlsAndFileErrors) {
  TempDir dir;
  MetadataClientOptions o;
  auto plain = MakeChannelSecurity(o, false);
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->tls);
  EXPECT_NE(plain->credentials, nullptr);

  auto https = MakeChannelSecurity(o, true);
  ASSERT_TRUE(https.ok());
  EXPECT_TRUE(https->tls);

  o.tls = true;
  o.tls_server_name = "ferry.internal";
  auto system_roots = MakeChannelSecurity(o, false);
  ASSERT_TRUE(system_roots.ok()) << system_roots.status();
  EXPECT_TRUE(system_roots->tls);
  EXPECT_EQ(system_roots->server_name, "ferry.internal");

  o = {};
  o.tls_ca_file = dir.path() + "/missing.pem";
  auto missing = MakeChannelSecurity(o, false);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().message(),
            absl::StrCat("tls_ca_file (--tls-ca, FERRY_TLS_CA): ", dir.path(),
                         "/missing.pem cannot be read: No such file or directory"));
  o.tls_ca_file = dir.Write("ca.pem", "not a certificate\n");
  auto not_pem = MakeChannelSecurity(o, false);
  ASSERT_FALSE(not_pem.ok());
  EXPECT_THAT(std::string(not_pem.status().message()), HasSubstr("ca.pem is not a PEM file"));

  o = {};
  o.tls_cert_file = dir.Write("c.pem", "-----BEGIN CERTIFICATE-----\n");
  o.tls_key_file = dir.path() + "/k.pem";
  auto no_key = MakeChannelSecurity(o, false);
  ASSERT_FALSE(no_key.ok());
  EXPECT_THAT(std::string(no_key.status().message()),
              StartsWith("tls_key_file (--tls-key, FERRY_TLS_CLIENT_KEY): "));
}

TEST(FillCredentialsTest, FillsUnsetFieldsFromTheEnvironment) {
  std::map<std::string, std::string, std::less<>> env = {{"FERRY_TOKEN_FILE", "/run/token"},
                                                         {"FERRY_TLS_CA", "/etc/ca.pem"},
                                                         {"FERRY_TLS_CLIENT_CERT", "/etc/c.pem"},
                                                         {"FERRY_TLS_CLIENT_KEY", "/etc/k.pem"}};
  EnvLookup lookup = [&](std::string_view name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
  MetadataClientOptions o;
  ASSERT_TRUE(FillCredentials(&o, lookup).ok());
  EXPECT_EQ(o.token_file, "/run/token");
  EXPECT_EQ(o.token, "");
  EXPECT_EQ(o.tls_ca_file, "/etc/ca.pem");
  EXPECT_EQ(o.tls_cert_file, "/etc/c.pem");
  EXPECT_EQ(o.tls_key_file, "/etc/k.pem");

  // Set fields win; a literal token suppresses the token file variable.
  o = {};
  o.token = "literal-token-0001";
  o.tls_ca_file = "/flag/ca.pem";
  ASSERT_TRUE(FillCredentials(&o, lookup).ok());
  EXPECT_EQ(o.token_file, "");
  EXPECT_EQ(o.tls_ca_file, "/flag/ca.pem");

  // Caller-built credentials: TLS variables are not applied.
  o = {};
  o.credentials = grpc::InsecureChannelCredentials();
  ASSERT_TRUE(FillCredentials(&o, lookup).ok());
  EXPECT_EQ(o.tls_ca_file, "");

  // Nothing set: nothing filled (no default token path).
  o = {};
  ASSERT_TRUE(
      FillCredentials(&o, [&](std::string_view) { return std::optional<std::string>(); }).ok());
  EXPECT_EQ(o.token_file, "");

  env["FERRY_TOKEN"] = "env-token-0001";
  o = {};
  EXPECT_THAT(FillCredentials(&o, lookup),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("FERRY_TOKEN are set")));
}

TEST(MetadataClientCreateTest, AnUnreadableTokenFileFailsCreate) {
  MetadataClientOptions o;
  o.server_address = "127.0.0.1:1";
  o.token_file = "/nonexistent/ferry-token";
  EXPECT_THAT(MetadataClient::Create(o),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("--token-file, FERRY_TOKEN_FILE, MX_AUTH_TOKEN_PATH): "
                                 "/nonexistent/ferry-token cannot be read")));
}

}  // namespace
}  // namespace ferry::internal
