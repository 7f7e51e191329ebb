// The `ferry` binary against a real ferry-server child process.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/hashing.h"
#include "common/testing/test_certs.h"
#include "ferry/metadata_client.h"
#include "nlohmann/json.hpp"
#include "server_client_test.h"
#include "server_process.h"

namespace ferry {
namespace {

namespace p2p = ::model_express::p2p;
using ::ferry::testing::BinaryPath;
using ::ferry::testing::CommandResult;
using ::ferry::testing::RunCommand;
using ::ferry::testing::ServerProcess;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr absl::Duration kCommandTimeout = absl::Seconds(60);

// Server-address and credential variables are blanked for every command (an empty value counts
// as unset), so the caller's shell cannot change what the tests see.
const std::vector<std::string> kCleanEnv = {
    "FERRY_SERVER=", "MX_SERVER_ADDRESS=", "FERRY_TOKEN_FILE=",      "MX_AUTH_TOKEN_PATH=",
    "FERRY_TOKEN=",  "FERRY_TLS_CA=",      "FERRY_TLS_CLIENT_CERT=", "FERRY_TLS_CLIENT_KEY="};

// Runs the ferry binary with kCleanEnv, overridden by `env` ("NAME=value").
CommandResult Ferry(const std::vector<std::string>& args,
                    const std::vector<std::string>& env = {}) {
  std::vector<std::string> argv = {BinaryPath("ferry")};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<std::string> merged = kCleanEnv;
  for (const std::string& e : env) {
    const std::string name = e.substr(0, e.find('=') + 1);
    std::erase_if(merged, [&](const std::string& m) { return m.starts_with(name); });
    merged.push_back(e);
  }
  auto r = RunCommand(argv, kCommandTimeout, merged);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : CommandResult{};
}

// For failure messages.
std::string Describe(const CommandResult& r) {
  return absl::StrCat("exit ", r.exit_code, "\nstdout:\n", r.out, "\nstderr:\n", r.err);
}

class CliTest : public ::ferry::testing::ServerClientTest {
 protected:
  // Publishes rank 0 of "cli/model" with two tensors and marks it READY.
  void PublishReady(const std::string& worker_id) {
    PublishMetadataRequest r;
    r.mutable_identity()->set_model_name("cli/model");
    r.mutable_identity()->set_dtype("bfloat16");
    r.set_worker_id(worker_id);
    r.mutable_worker()->set_worker_grpc_endpoint("10.1.2.3:6555");
    r.mutable_worker()->set_accelerator("cuda");
    for (const char* name : {"embed.weight", "lm_head.weight"}) {
      TensorDescriptor* t = r.mutable_worker()->mutable_tensor_source()->add_tensors();
      t->set_name(name);
      t->set_size(1 << 20);
      t->set_dtype("torch.bfloat16");
    }
    auto published = client_->Publish(r);
    ASSERT_TRUE(published.ok()) << published.status();
    source_id_ = published->mx_source_id;
    ASSERT_TRUE(client_->UpdateStatus(source_id_, worker_id, 0, p2p::SOURCE_STATUS_READY).ok());
  }

  std::vector<std::string> WithServer(std::vector<std::string> args) {
    args.insert(args.begin(), {"--server", server_->address()});
    return args;
  }

  std::string source_id_;
};

TEST_F(CliTest, Health) {
  CommandResult r = Ferry(WithServer({"health"}));
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_THAT(r.out, HasSubstr("status   ok"));
  EXPECT_THAT(r.out, HasSubstr(server_->address()));
}

TEST_F(CliTest, HealthJson) {
  CommandResult r = Ferry(WithServer({"health", "--json"}));
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["status"], "ok");
  EXPECT_EQ(j["server"], server_->address());
  EXPECT_TRUE(j["uptime_seconds"].is_number_unsigned());
}

TEST_F(CliTest, ServerFlagAfterTheSubcommand) {
  CommandResult r = Ferry({"health", "--server", server_->address()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
}

TEST_F(CliTest, SourcesListJson) {
  PublishReady("w-json");
  CommandResult r = Ferry(WithServer({"sources", "list", "--json"}));
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  nlohmann::json j = nlohmann::json::parse(r.out);
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["mx_source_id"], source_id_);
  EXPECT_EQ(j[0]["worker_id"], "w-json");
  EXPECT_EQ(j[0]["model_name"], "cli/model");
  EXPECT_EQ(j[0]["worker_rank"], 0);
  EXPECT_EQ(j[0]["accelerator"], "cuda");
}

TEST_F(CliTest, SourcesListTableAndFilters) {
  PublishReady("w-table");
  CommandResult r = Ferry(WithServer({"sources", "list", "--status", "READY"}));
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_THAT(r.out, StartsWith("MX_SOURCE_ID"));
  EXPECT_THAT(r.out, HasSubstr(source_id_));
  EXPECT_THAT(r.out, HasSubstr("w-table"));
  EXPECT_THAT(r.out, HasSubstr("cli/model"));

  r = Ferry(WithServer({"sources", "list", "--status", "stale"}));
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_THAT(r.out, HasSubstr("no sources match"));

  r = Ferry(WithServer({"sources", "list", "--model", "other/model", "--json"}));
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(nlohmann::json::parse(r.out), nlohmann::json::array());

  r = Ferry(WithServer({"sources", "list", "--rank", "0", "--limit", "1", "--json"}));
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(nlohmann::json::parse(r.out).size(), 1u);
}

TEST_F(CliTest, SourcesGetJson) {
  PublishReady("w-get");
  CommandResult r = Ferry(WithServer({"sources", "get", source_id_, "w-get", "--json"}));
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["found"], true);
  EXPECT_EQ(j["mx_source_id"], source_id_);
  EXPECT_EQ(j["identity"]["model_name"], "cli/model");
  EXPECT_EQ(j["worker"]["status"], "SOURCE_STATUS_READY");
  ASSERT_EQ(j["worker"]["tensor_source"]["tensors"].size(), 2u);
  EXPECT_EQ(j["worker"]["tensor_source"]["tensors"][1]["name"], "lm_head.weight");
}

TEST_F(CliTest, SourcesGetText) {
  PublishReady("w-text");
  CommandResult r = Ferry(WithServer({"sources", "get", source_id_, "w-text"}));
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_THAT(r.out, HasSubstr("model_name: \"cli/model\""));
  EXPECT_THAT(r.out, HasSubstr("status                READY"));
  EXPECT_THAT(r.out, HasSubstr("worker_grpc_endpoint  10.1.2.3:6555"));
  EXPECT_THAT(r.out, HasSubstr("tensors               2 (2.0 MiB)"));
  EXPECT_THAT(r.out, HasSubstr("lm_head.weight"));
}

TEST_F(CliTest, SourcesGetUnknownIsAnError) {
  CommandResult r = Ferry(WithServer({"sources", "get", "0123456789abcdef", "ghost"}));
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err,
              StartsWith("ferry: GetMetadata to " + server_->address() + " failed: NOT_FOUND"));
  EXPECT_EQ(r.out, "");
}

TEST_F(CliTest, BadStatusIsAUsageErrorListingValidNames) {
  CommandResult r = Ferry(WithServer({"sources", "list", "--status", "bogus"}));
  EXPECT_EQ(r.exit_code, 2) << Describe(r);
  EXPECT_THAT(r.err, StartsWith("ferry: --status: 'bogus' is not a source status"));
  EXPECT_THAT(r.err, HasSubstr("unknown, initializing, ready, stale"));
}

// Test hooks never ship: the flags that once corrupted or paced a transfer for tests are gone
// from the binary (tests/tools/ferry_fault_source and the real upload cap replace them). Passing
// one is a usage error, and no help text mentions them.
TEST_F(CliTest, NoTestOnlyFlagsShip) {
  const std::vector<std::vector<std::string>> commands = {
      {"publish", "/dev/null", "--model", "m", "--corrupt-byte-for-testing", "5"},
      {"artifact", "publish", "/tmp", "--kind", "triton", "--model", "m",
       "--corrupt-byte-for-testing", "5"},
      {"pull", "--model", "m", "--testing-batch-bytes", "65536"},
      {"pull", "--model", "m", "--testing-batch-pause-ms", "50"},
      {"artifact", "pull", "--kind", "triton", "--model", "m", "--into", "/tmp/x",
       "--testing-batch-bytes", "65536"},
      {"artifact", "pull", "--kind", "triton", "--model", "m", "--into", "/tmp/x",
       "--testing-batch-pause-ms", "50"},
      {"artifact", "pull", "--kind", "triton", "--model", "m", "--into", "/tmp/x",
       "--testing-pause-before-install-ms", "50"},
      {"artifact", "pull", "--kind", "triton", "--model", "m", "--into", "/tmp/x",
       "--testing-window-bytes", "65536"},
  };
  for (const std::vector<std::string>& args : commands) {
    CommandResult r = Ferry(args);
    EXPECT_EQ(r.exit_code, 2) << absl::StrJoin(args, " ") << ": " << Describe(r);
    EXPECT_THAT(r.err, HasSubstr("arguments were not expected")) << absl::StrJoin(args, " ");
    EXPECT_THAT(r.err, HasSubstr(args[args.size() - 2])) << absl::StrJoin(args, " ");
  }
  for (const std::vector<std::string>& command : std::vector<std::vector<std::string>>{
           {"publish"}, {"pull"}, {"artifact", "publish"}, {"artifact", "pull"}}) {
    std::vector<std::string> args = command;
    args.push_back("--help");
    CommandResult r = Ferry(args);
    EXPECT_EQ(r.exit_code, 0) << Describe(r);
    EXPECT_THAT(r.out, Not(HasSubstr("testing"))) << absl::StrJoin(args, " ");
    EXPECT_THAT(r.out, Not(HasSubstr("corrupt"))) << absl::StrJoin(args, " ");
  }
}

TEST_F(CliTest, ServerFromEnvironment) {
  PublishReady("w-env");
  // FERRY_SERVER, then MX_SERVER_ADDRESS (with ModelExpress's http:// prefix).
  CommandResult r =
      Ferry({"health"}, {"FERRY_SERVER=" + server_->address(), "MX_SERVER_ADDRESS=127.0.0.1:1"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  r = Ferry({"health"}, {"FERRY_SERVER=", "MX_SERVER_ADDRESS=http://" + server_->address()});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  // --server wins over both.
  r = Ferry({"--server", server_->address(), "health"},
            {"FERRY_SERVER=127.0.0.1:1", "MX_SERVER_ADDRESS=127.0.0.1:1"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
}

// The publisher library reads no environment: `ferry publish` fills its heartbeat interval from
// --heartbeat-interval, else FERRY_HEARTBEAT_INTERVAL, else MX_HEARTBEAT_INTERVAL_SECS, and a set
// but invalid value is an error naming the variable.
TEST_F(CliTest, PublishReadsTheHeartbeatIntervalVariable) {
  testing::TempDir dir;
  const std::string header = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";
  std::string file_bytes(8, '\0');
  file_bytes[0] = static_cast<char>(header.size());
  const std::string file = dir.Write("m.safetensors", file_bytes + header + "abcd");
  const std::vector<std::string> args =
      WithServer({"publish", file, "--model", "cli/heartbeat", "--worker-listen", "127.0.0.1:0"});
  CommandResult r = Ferry(args, {"FERRY_HEARTBEAT_INTERVAL=soon"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, HasSubstr("FERRY_HEARTBEAT_INTERVAL='soon' is not a duration"));
  r = Ferry(args, {"MX_HEARTBEAT_INTERVAL_SECS=-3"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, HasSubstr("MX_HEARTBEAT_INTERVAL_SECS='-3' must be a positive"));
}

TEST(CliStandaloneTest, UnreachableServerFailsNamingTheAddress) {
  const std::string address = absl::StrCat("127.0.0.1:", testing::UnusedLoopbackPort());
  const absl::Time start = absl::Now();
  CommandResult r = Ferry({"--server", address, "sources", "list"});
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, StartsWith("ferry: ListSources to " + address + " failed: UNAVAILABLE"));
  EXPECT_THAT(r.err, HasSubstr("check --server/FERRY_SERVER or start ferry-server"));
}

TEST(CliStandaloneTest, MalformedServerAddressNamesItsSource) {
  CommandResult r = Ferry({"--server", "nohost", "health"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, StartsWith("ferry: --server='nohost' has no port"));
  r = Ferry({"health"}, {"FERRY_SERVER=", "MX_SERVER_ADDRESS=nohost"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, StartsWith("ferry: MX_SERVER_ADDRESS='nohost' has no port"));
}

TEST(CliStandaloneTest, DemoPullsAModelPeerToPeer) {
  CommandResult r = Ferry({"demo", "--size", "32MiB"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_THAT(r.out, HasSubstr("Started an embedded ferry-server on 127.0.0.1:"));
  EXPECT_THAT(r.out, HasSubstr("Wrote a Llama-shaped bf16 model"));
  EXPECT_THAT(r.out, HasSubstr("Baselines on this machine: memcpy between prepared buffers"));
  EXPECT_THAT(r.out, HasSubstr("Started `ferry publish`"));
  EXPECT_THAT(r.out, HasSubstr("over shm and verified every xxh3-64 checksum"));
  EXPECT_THAT(r.out, HasSubstr("the written file is byte-identical to the model"));
  EXPECT_THAT(r.out, HasSubstr("x memcpy"));
  EXPECT_THAT(r.out, HasSubstr("it marked its worker STALE and exited 0"));
  EXPECT_THAT(r.out, HasSubstr("Stopped the embedded ferry-server"));
  EXPECT_THAT(r.out, HasSubstr("Demo complete."));
}

TEST(CliStandaloneTest, DemoJsonOverTcp) {
  CommandResult r = Ferry({"demo", "--size", "16MiB", "--transport", "tcp", "--json"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j["transport"], "tcp");
  EXPECT_EQ(j["verified"], true);
  EXPECT_EQ(j["identical_file"], true);
  EXPECT_GT(j["bytes"].get<uint64_t>(), 15u << 20);
  EXPECT_GT(j["tensors"].get<int>(), 10);
  EXPECT_GT(j["baseline_memcpy_gbps"].get<double>(), 0);
  EXPECT_GT(j["ratio_to_memcpy"].get<double>(), 0);
}

TEST(CliStandaloneTest, DemoRejectsABadSize) {
  CommandResult r = Ferry({"demo", "--size", "lots"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err,
              HasSubstr("--size='lots' is not a byte size (it does not start with a number)"));
}

TEST(CliStandaloneTest, PullRefusesAnUnwritableOutputBeforeContactingAnything) {
  CommandResult r = Ferry({"pull", "--model", "m", "-o", "/nonexistent/dir/out.safetensors",
                           "--server", "127.0.0.1:1"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, HasSubstr("-o /nonexistent/dir/out.safetensors: cannot write in "
                               "/nonexistent/dir"));
}

TEST(CliStandaloneTest, PullNeedsAnOutputOrThenPublish) {
  CommandResult r = Ferry({"pull", "--model", "m", "--server", "127.0.0.1:1"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, HasSubstr("ferry pull needs -o OUT.safetensors, --device cuda:N (pull into "
                               "GPU memory and verify there) or --then-publish"));
}

TEST(CliStandaloneTest, PublishNamesACorruptFile) {
  testing::TempDir dir;
  const std::string file = dir.Write("bad.safetensors", "not a safetensors file at all");
  CommandResult r = Ferry({"publish", file, "--model", "m", "--server", "127.0.0.1:1"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, HasSubstr("safetensors file " + file));
}

TEST(CliStandaloneTest, ArtifactSealPrintsTheManifestItHashed) {
  testing::TempDir dir;
  std::filesystem::create_directories(dir.path() + "/cache/sub");
  dir.Write("cache/sub.txt", "abcd");
  dir.Write("cache/sub/inner.bin", "hello world");
  CommandResult r = Ferry({"artifact", "seal", dir.path() + "/cache", "--chunk-size", "8", "--kind",
                           "triton", "--json"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(r.out);
  EXPECT_EQ(j["file_count"], 2);
  EXPECT_EQ(j["chunk_count"], 3);  // 4 bytes: one chunk; 11 bytes: two
  EXPECT_EQ(j["total_size"], 15);
  EXPECT_EQ(j["manifest"]["mx_source_type"], 4);
  // '.' sorts before '/': sub.txt is file 0.
  EXPECT_THAT(j["manifest"]["files"][0]["path"].get<std::string>(), HasSubstr("/cache/sub.txt"));
  EXPECT_EQ(j["artifact_id"], internal::Sha256Hex(j["manifest"].dump()));

  r = Ferry({"artifact", "seal", dir.path() + "/cache", "--kind", "cuda-graphs"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, HasSubstr("--kind: unknown cache kind 'cuda-graphs'; use one of"));
  r = Ferry({"artifact", "seal", dir.path() + "/cache", "--chunk-size", "0"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, HasSubstr("--chunk-size"));
}

TEST_F(CliTest, DemoAgainstAGivenServer) {
  CommandResult r = Ferry({"demo", "--size", "16MiB", "--server", server_->address()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_THAT(r.out, HasSubstr("Using the server given by --server"));
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr("embedded")));
  // The demo's worker stays behind as STALE.
  ListSourcesRequest stale;
  stale.set_status_filter(p2p::SOURCE_STATUS_STALE);
  auto refs = client_->ListSources(stale);
  ASSERT_TRUE(refs.ok()) << refs.status();
  ASSERT_EQ(refs->size(), 1u);
  EXPECT_THAT((*refs)[0].model_name(), StartsWith("demo/llama-"));
}

// ---------------------------------------------------------------------------------------------
// Against a server with TLS and bearer tokens.

constexpr char kAliceToken[] = "alice-token-0123456789abcdef";

class CliAuthTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto certs = testing::MakeTestCerts(dir_.path());
    ASSERT_TRUE(certs.ok()) << certs.status();
    certs_ = *certs;
    token_file_ = dir_.Write("alice.token", absl::StrCat(kAliceToken, "\n"));
  }

  void TearDown() override {
    if (server_ == nullptr || !server_->running()) return;
    Status stopped = server_->Stop();
    EXPECT_TRUE(stopped.ok()) << stopped;
  }

  // Starts a TLS server that requires tokens (and, if `mutual`, client certificates), and
  // publishes one READY worker as alice.
  void StartServer(bool mutual) {
    std::vector<std::string> args = {
        "--tls-cert",    certs_.server_cert,
        "--tls-key",     certs_.server_key,
        "--auth-tokens", dir_.Write("tokens", absl::StrCat(kAliceToken, " alice\n"))};
    if (mutual) args.insert(args.end(), {"--tls-client-ca", certs_.ca});
    auto s = ::ferry::testing::StartServer({.extra_args = args});
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(s).value();

    MetadataClientOptions o;
    o.server_address = server_->address();
    o.token_file = token_file_;
    o.tls_ca_file = certs_.ca;
    if (mutual) {
      o.tls_cert_file = certs_.client_cert;
      o.tls_key_file = certs_.client_key;
    }
    auto c = MetadataClient::Create(o);
    ASSERT_TRUE(c.ok()) << c.status();
    PublishMetadataRequest r;
    r.mutable_identity()->set_model_name("cli/secure-model");
    r.set_worker_id("w-secure");
    r.mutable_worker()->set_worker_grpc_endpoint("10.1.2.3:6555");
    auto published = (*c)->Publish(r);
    ASSERT_TRUE(published.ok()) << published.status();
    source_id_ = published->mx_source_id;
    ASSERT_TRUE((*c)->UpdateStatus(source_id_, "w-secure", 0, p2p::SOURCE_STATUS_READY).ok());
  }

  // The one worker alice published, as `sources list --json` prints it.
  void ExpectListsTheWorker(const CommandResult& r) {
    ASSERT_EQ(r.exit_code, 0) << Describe(r);
    nlohmann::json j = nlohmann::json::parse(r.out);
    ASSERT_TRUE(j.is_array());
    ASSERT_EQ(j.size(), 1u);
    EXPECT_EQ(j[0]["mx_source_id"], source_id_);
    EXPECT_EQ(j[0]["worker_id"], "w-secure");
  }

  testing::TempDir dir_;
  testing::TestCerts certs_;
  std::string token_file_;
  std::unique_ptr<ServerProcess> server_;
  std::string source_id_;
};

TEST_F(CliAuthTlsTest, TokenFileAndCaFlags) {
  StartServer(/*mutual=*/false);
  const std::string address = server_->address();
  ExpectListsTheWorker(Ferry({"--server", address, "--token-file", token_file_, "--tls-ca",
                              certs_.ca, "sources", "list", "--json"}));

  CommandResult r = Ferry({"--server", address, "--token-file", token_file_, "--tls-ca", certs_.ca,
                           "sources", "get", source_id_, "w-secure", "--json"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(nlohmann::json::parse(r.out)["worker"]["status"], "SOURCE_STATUS_READY");

  // Health needs TLS but no token.
  r = Ferry({"--server", address, "--tls-ca", certs_.ca, "health"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_THAT(r.out, HasSubstr("status   ok"));
}

TEST_F(CliAuthTlsTest, WithoutTheTokenOneLineErrorAndExit1) {
  StartServer(/*mutual=*/false);
  CommandResult r =
      Ferry({"--server", server_->address(), "--tls-ca", certs_.ca, "sources", "list"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_EQ(r.out, "");
  EXPECT_THAT(r.err, StartsWith("ferry: ListSources to " + server_->address() +
                                " failed: UNAUTHENTICATED"));
  EXPECT_THAT(r.err, HasSubstr("pass --token-file FILE or set FERRY_TOKEN_FILE"));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;

  // A token file that does not exist is named.
  r = Ferry({"--server", server_->address(), "--tls-ca", certs_.ca, "--token-file",
             dir_.path() + "/missing.token", "sources", "list"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, StartsWith("ferry: token_file (--token-file"));
  EXPECT_THAT(r.err, HasSubstr("/missing.token cannot be read: No such file or directory"));
}

TEST_F(CliAuthTlsTest, WithoutTlsOneLineUnavailable) {
  StartServer(/*mutual=*/false);
  CommandResult r = Ferry({"--server", server_->address(), "--token-file", token_file_, "health"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, HasSubstr("failed: UNAVAILABLE"));
  EXPECT_THAT(r.err, HasSubstr("if the server uses TLS, pass --tls-ca/FERRY_TLS_CA"));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

TEST_F(CliAuthTlsTest, CredentialsFromTheEnvironment) {
  StartServer(/*mutual=*/false);
  const std::vector<std::string> args = {"--server", server_->address(), "sources", "list",
                                         "--json"};
  ExpectListsTheWorker(
      Ferry(args, {"FERRY_TOKEN_FILE=" + token_file_, "FERRY_TLS_CA=" + certs_.ca}));
  // ModelExpress's variable as the fallback, and the token itself.
  ExpectListsTheWorker(
      Ferry(args, {"MX_AUTH_TOKEN_PATH=" + token_file_, "FERRY_TLS_CA=" + certs_.ca}));
  ExpectListsTheWorker(
      Ferry(args, {absl::StrCat("FERRY_TOKEN=", kAliceToken), "FERRY_TLS_CA=" + certs_.ca}));
  // The flag wins over the variable.
  ExpectListsTheWorker(Ferry(
      {"--server", server_->address(), "--token-file", token_file_, "sources", "list", "--json"},
      {"FERRY_TOKEN_FILE=" + dir_.path() + "/missing", "FERRY_TLS_CA=" + certs_.ca}));
  // Two token sources in the environment are ambiguous.
  CommandResult r = Ferry(args, {"FERRY_TOKEN_FILE=" + token_file_, "FERRY_TOKEN=x-0123456789",
                                 "FERRY_TLS_CA=" + certs_.ca});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, HasSubstr("FERRY_TOKEN are set"));
}

TEST_F(CliAuthTlsTest, MutualTlsClientCertificateFlags) {
  StartServer(/*mutual=*/true);
  const std::string address = server_->address();
  ExpectListsTheWorker(
      Ferry({"--server", address, "--token-file", token_file_, "--tls-ca", certs_.ca, "--tls-cert",
             certs_.client_cert, "--tls-key", certs_.client_key, "sources", "list", "--json"}));
  ExpectListsTheWorker(Ferry({"--server", address, "sources", "list", "--json"},
                             {"FERRY_TOKEN_FILE=" + token_file_, "FERRY_TLS_CA=" + certs_.ca,
                              "FERRY_TLS_CLIENT_CERT=" + certs_.client_cert,
                              "FERRY_TLS_CLIENT_KEY=" + certs_.client_key}));
  CommandResult r = Ferry(
      {"--server", address, "--token-file", token_file_, "--tls-ca", certs_.ca, "sources", "list"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, HasSubstr("--tls-cert/--tls-key if the server requires client certificates"));
  r = Ferry(
      {"--server", address, "--tls-ca", certs_.ca, "--tls-cert", certs_.client_cert, "health"});
  EXPECT_EQ(r.exit_code, 1) << Describe(r);
  EXPECT_THAT(r.err, StartsWith("ferry: tls_cert_file (--tls-cert, FERRY_TLS_CLIENT_CERT) is set "
                                "but tls_key_file"));
}

TEST(CliStandaloneTest, DemoIgnoresCredentialSettings) {
  // The embedded server needs no token or TLS; settings meant for another server do not break
  // the demo.
  CommandResult r = Ferry({"demo", "--size", "8MiB"}, {"FERRY_TOKEN_FILE=/nonexistent/token",
                                                       "FERRY_TLS_CA=/nonexistent/ca.pem"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_THAT(r.out, HasSubstr("Demo complete."));
}

TEST(CliStandaloneTest, HelpEnvVersionAndUsage) {
  CommandResult r = Ferry({"--help-env"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_THAT(r.out, HasSubstr("FERRY_SERVER"));
  EXPECT_THAT(r.out, HasSubstr("MX_SERVER_ADDRESS"));
  EXPECT_THAT(r.out, HasSubstr("FERRY_TOKEN_FILE"));
  EXPECT_THAT(r.out, HasSubstr("fallback: MX_AUTH_TOKEN_PATH"));
  EXPECT_THAT(r.out, HasSubstr("FERRY_TLS_CLIENT_KEY"));

  r = Ferry({"--version"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_THAT(r.out, StartsWith("ferry "));

  r = Ferry({"--help"});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_THAT(r.out, HasSubstr("sources"));
  EXPECT_THAT(r.out, HasSubstr("demo"));
  EXPECT_THAT(r.out, HasSubstr("--token-file FILE"));
  EXPECT_THAT(r.out, HasSubstr("--tls-ca FILE"));

  r = Ferry({});
  EXPECT_EQ(r.exit_code, 2) << Describe(r);
  EXPECT_THAT(r.err, StartsWith("ferry: "));

  r = Ferry({"sources", "get", "only-one-arg"});
  EXPECT_EQ(r.exit_code, 2) << Describe(r);
}

}  // namespace
}  // namespace ferry
