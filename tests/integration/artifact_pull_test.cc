// End to end: real `ferry artifact publish` and `ferry artifact pull` processes moving a
// compile-cache tree through a real ferry-server over loopback. Covers a signed round trip
// (byte-identical tree, symlinks skipped, the source retiring STALE), the publish-time snapshot,
// merging into an existing cache, trust decisions (unsigned, untrusted key), a corrupted source
// byte and the node's failure marker, two concurrent pulls into one directory, a pull killed
// before its atomic install, a source killed mid-transfer, no source at all, and bad input.
// Faults come from test code, never from flags of the shipped binary: a corrupted source is
// tests/tools/ferry_fault_source (publishes like `ferry artifact publish`, then flips one served
// byte), and a pull is kept under way by the source's real upload cap (--max-upload-rate).
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/source_selection.h"
#include "common/testing/test_certs.h"
#include "ferry/metadata_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server_process.h"

namespace ferry {
namespace {

namespace fs = std::filesystem;

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
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr char kKind[] = "torch-compile";
constexpr uint64_t kBinaryBytes = 3ull << 20;  // spans 4 chunks of 1 MiB

void AppendFile(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary | std::ios::app) << data;
}

std::string RandomBytes(uint64_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(gen() & 0xff);
  return out;
}

// What a directory holds, without following symlinks: regular files (path relative to the
// root -> contents) and every other kind of entry (symlinks, sockets, ...) by relative path.
struct Tree {
  std::map<std::string, std::string> files;
  std::vector<std::string> others;
};

Tree ReadTree(const std::string& root) {
  Tree tree;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    const fs::file_status st = it->symlink_status();
    const std::string rel = it->path().lexically_relative(root).string();
    if (fs::is_regular_file(st)) {
      tree.files[rel] = ReadFile(it->path().string());
    } else if (!fs::is_directory(st)) {
      tree.others.push_back(rel);
    }
  }
  EXPECT_FALSE(ec) << root << ": " << ec.message();
  return tree;
}

// Entries of `dir` whose name starts with `prefix`.
std::vector<std::string> EntriesStartingWith(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) == 0) out.push_back(name);
  }
  return out;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

class ArtifactPullTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = StartServer({.extra_args = {"--heartbeat-timeout", "30s"}});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    state_dir_ = Path("state");
  }

  std::string Path(const std::string& name) const { return dir_.path() + "/" + name; }

  // A compile-cache-like tree under Path(name): nested directories, small .py/.json files, an
  // empty file, a 3 MiB binary and a symlink (never transferred). Returns its path.
  std::string MakeCacheTree(const std::string& name, uint32_t seed = 1) {
    const std::string root = Path(name);
    WriteFile(root + "/top.json", absl::StrCat("{\"version\": 1, \"seed\": ", seed, "}\n"));
    WriteFile(root + "/inductor/ab/cabc123.py",
              "import torch\n\ndef call(args):\n    return args[0] + 1\n");
    WriteFile(root + "/inductor/ab/cabc123.json", "{\"graph\": \"g0\", \"hash\": \"abc123\"}\n");
    WriteFile(root + "/triton/KEY1/kernel.json", "{\"name\": \"triton_poi_fused_add_0\"}\n");
    WriteFile(root + "/triton/KEY1/kernel.cubin", RandomBytes(kBinaryBytes, seed));
    WriteFile(root + "/triton/KEY1/empty.lock", "");
    fs::create_symlink("inductor/ab/cabc123.py", root + "/link.py");
    return root;
  }

  struct Keys {
    std::string private_key;
    std::string public_key;
    std::string fingerprint;
  };

  // `ferry artifact keygen Path(name) --json`.
  Keys Keygen(const std::string& name) {
    auto r = RunCommand({BinaryPath("ferry"), "artifact", "keygen", Path(name), "--json"},
                        absl::Seconds(30));
    EXPECT_TRUE(r.ok()) << r.status();
    Keys keys;
    if (!r.ok()) return keys;
    EXPECT_EQ(r->exit_code, 0) << r->err;
    nlohmann::json j = nlohmann::json::parse(r->out, nullptr, false);
    EXPECT_TRUE(j.is_object()) << r->out;
    if (!j.is_object()) return keys;
    keys.private_key = j["private_key"];
    keys.public_key = j["public_key"];
    keys.fingerprint = j["fingerprint"];
    return keys;
  }

  struct Source {
    std::unique_ptr<ChildProcess> process;
    nlohmann::json ready;
    std::string worker_id() const { return ready.value("worker_id", ""); }
    std::string mx_source_id() const { return ready.value("mx_source_id", ""); }
    std::string artifact_id() const { return ready.value("artifact_id", ""); }
  };

  std::vector<std::string> PublishArgs(const std::string& dir, const std::string& model,
                                       const std::string& ready) const {
    return {BinaryPath("ferry"),
            "artifact",
            "publish",
            dir,
            "--kind",
            kKind,
            "--model",
            model,
            "--server",
            server_->address(),
            "--chunk-size",
            "1MiB",
            "--transport",
            "auto",
            "--ucx-net-devices",
            "lo",
            "--data-listen",
            "127.0.0.1:0",
            "--worker-listen",
            "127.0.0.1:0",
            "--heartbeat-interval",
            "1",
            "--ready-file",
            ready};
  }

  // Starts `ferry artifact publish DIR` and waits until it is READY. With `corrupt_byte`, the
  // source is tests/tools/ferry_fault_source instead, which takes the same flags and serves
  // the snapshot byte at that offset flipped (after sealing and signing).
  Source Publish(const std::string& dir, const std::string& model,
                 std::vector<std::string> extra = {},
                 std::optional<uint64_t> corrupt_byte = std::nullopt) {
    const std::string tag = absl::StrCat("publish-", ++children_);
    const std::string ready = Path(tag + ".ready");
    std::vector<std::string> argv = PublishArgs(dir, model, ready);
    if (corrupt_byte.has_value()) {
      // {ferry, artifact, publish, DIR, ...} -> {ferry_fault_source, artifact, DIR, ...}.
      argv.erase(argv.begin() + 2);
      argv[0] = BinaryPath("ferry_fault_source");
      argv.push_back("--corrupt-byte");
      argv.push_back(std::to_string(*corrupt_byte));
    }
    argv.insert(argv.end(), extra.begin(), extra.end());
    Source source;
    auto child = ChildProcess::Start({.argv = argv, .log_file = Path(tag + ".log")});
    EXPECT_TRUE(child.ok()) << child.status();
    if (!child.ok()) return source;
    source.process = *std::move(child);
    auto json = source.process->WaitForReadyFile(ready, "worker_port", absl::Seconds(60));
    EXPECT_TRUE(json.ok()) << json.status();
    if (!json.ok()) {
      source.process.reset();
      return source;
    }
    source.ready = *std::move(json);
    return source;
  }

  std::vector<std::string> PullArgs(const std::string& model, const std::string& into,
                                    const std::vector<std::string>& extra) const {
    std::vector<std::string> argv = {BinaryPath("ferry"),
                                     "artifact",
                                     "pull",
                                     "--kind",
                                     kKind,
                                     "--model",
                                     model,
                                     "--into",
                                     into,
                                     "--json",
                                     "--server",
                                     server_->address(),
                                     "--state-dir",
                                     state_dir_,
                                     "--ucx-net-devices",
                                     "lo"};
    // Shared memory (the same-host default) unless the test names a transport.
    if (std::find(extra.begin(), extra.end(), "--transport") == extra.end()) {
      argv.push_back("--transport");
      argv.push_back("shm");
    }
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  }

  CommandResult Pull(const std::string& model, const std::string& into,
                     const std::vector<std::string>& extra) {
    auto r = RunCommand(PullArgs(model, into, extra), absl::Seconds(60));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : CommandResult{};
  }

  // Starts a pull in the background: stdout to Path(tag + ".json"), stderr to Path(tag +
  // ".log").
  std::unique_ptr<ChildProcess> StartPull(const std::string& tag, const std::string& model,
                                          const std::string& into,
                                          const std::vector<std::string>& extra) {
    auto child = ChildProcess::Start({.argv = PullArgs(model, into, extra),
                                      .log_file = Path(tag + ".log"),
                                      .stdout_file = Path(tag + ".json")});
    EXPECT_TRUE(child.ok()) << child.status();
    return child.ok() ? *std::move(child) : nullptr;
  }

  nlohmann::json ChildJson(const std::string& tag) {
    nlohmann::json j = nlohmann::json::parse(ReadFile(Path(tag + ".json")), nullptr, false);
    EXPECT_TRUE(j.is_object()) << "stdout: " << ReadFile(Path(tag + ".json"))
                               << "\nstderr: " << ReadFile(Path(tag + ".log"));
    return j;
  }

  static nlohmann::json Json(const CommandResult& r) {
    nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
    EXPECT_TRUE(j.is_object()) << "stdout: " << r.out << "\nstderr: " << r.err;
    return j;
  }

  // A --target-worker-id for which `first` is the rendezvous favourite among `sources` (the
  // puller orders the READY sources it lists with the same OrderCandidates).
  static std::string TargetIdPreferring(const std::string& model,
                                        const std::vector<const Source*>& sources,
                                        const std::string& first) {
    std::vector<SourceInstanceRef> refs;
    for (const Source* s : sources) {
      SourceInstanceRef& ref = refs.emplace_back();
      ref.set_mx_source_id(s->mx_source_id());
      ref.set_worker_id(s->worker_id());
      ref.set_model_name(model);
      ref.set_worker_rank(0);
    }
    for (int i = 0; i < 1000; ++i) {
      SourceSelection selection;
      selection.model_name = model;
      selection.match_rank = false;
      selection.target_worker_id = absl::StrCat("target-", i);
      auto order = OrderCandidates(refs, selection);
      if (!order.empty() && order.front().worker_id() == first) {
        return selection.target_worker_id;
      }
    }
    ADD_FAILURE() << "no target id prefers " << first;
    return "";
  }

  // Waits until a pull's stage appears beside Path("target/cache"): its source's manifest is
  // trusted and its transfer starts. False after `timeout`.
  bool WaitForStage(absl::Duration timeout) const {
    const absl::Time deadline = absl::Now() + timeout;
    while (EntriesStartingWith(Path("target"), ".cache.ferry-stage.").empty()) {
      if (absl::Now() >= deadline) return false;
      absl::SleepFor(absl::Milliseconds(10));  // polling the condition, not waiting for time
    }
    return true;
  }

  // Waits until process `pid`'s TCP sockets have received `bytes` more than when called (the
  // kernel's count, `ss -tinp` bytes_received: data arriving, whether or not read yet). False
  // after `timeout`, or when ss cannot be run.
  static bool WaitForBytesReceived(pid_t pid, uint64_t bytes, absl::Duration timeout) {
    const std::string owner = absl::StrCat("pid=", pid, ",");
    auto received = [&owner]() -> std::optional<uint64_t> {
      auto r = RunCommand({"/usr/bin/ss", "-HtinpO"}, absl::Seconds(10));
      if (!r.ok() || r->exit_code != 0) return std::nullopt;
      uint64_t total = 0;
      std::istringstream lines(r->out);
      for (std::string line; std::getline(lines, line);) {
        if (line.find(owner) == std::string::npos) continue;
        const size_t at = line.find("bytes_received:");
        if (at != std::string::npos) total += std::stoull(line.substr(at + 15));
      }
      return total;
    };
    const std::optional<uint64_t> base = received();
    if (!base.has_value()) return false;
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      const std::optional<uint64_t> now = received();
      if (!now.has_value() || absl::Now() >= deadline) return false;
      if (*now >= *base + bytes) return true;
      absl::SleepFor(absl::Milliseconds(10));  // polling the condition, not waiting for time
    }
  }

  // The failure markers in the state directory.
  std::vector<std::string> FailureMarkers() const {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(state_dir_, ec)) {
      if (e.path().extension() == ".failed") out.push_back(e.path().filename().string());
    }
    return out;
  }

  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::string state_dir_;
  int children_ = 0;
};

TEST_F(ArtifactPullTest, SignedPublishTrustedPullInstallsTheTreeByteForByte) {
  const std::string src = MakeCacheTree("cache");
  const Keys keys = Keygen("keys");
  Source source = Publish(src, "it/signed", {"--signing-key", keys.private_key});
  ASSERT_NE(source.process, nullptr);
  EXPECT_EQ(source.ready["signer"], keys.fingerprint);
  EXPECT_EQ(source.ready["files"], 6);  // the symlink is not part of the artifact
  uint64_t bytes = 0;
  for (const auto& [path, contents] : ReadTree(src).files) bytes += contents.size();
  EXPECT_EQ(source.ready["bytes"], bytes);
  // The id the source serves is the one `ferry artifact seal` computes for the same tree.
  auto seal = RunCommand({BinaryPath("ferry"), "artifact", "seal", src, "--chunk-size", "1MiB",
                          "--kind", kKind, "--json"},
                         absl::Seconds(30));
  ASSERT_TRUE(seal.ok()) << seal.status();
  ASSERT_EQ(seal->exit_code, 0) << seal->err;
  EXPECT_EQ(nlohmann::json::parse(seal->out)["artifact_id"], source.artifact_id());

  const std::string into = Path("target/cache");
  CommandResult r = Pull("it/signed", into, {"--trust", keys.public_key});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = Json(r);
  EXPECT_EQ(j["installed"], true);
  EXPECT_EQ(j["into"], fs::canonical(into).string());
  EXPECT_EQ(j["trust"], "trusted");
  EXPECT_EQ(j["signer"], source.ready["signer"]);
  EXPECT_EQ(j["artifact_id"], source.artifact_id());
  EXPECT_EQ(j["files"], source.ready["files"]);
  EXPECT_EQ(j["bytes"], source.ready["bytes"]);
  EXPECT_EQ(j["verified"], true);
  EXPECT_EQ(j["transport"], "shm");
  EXPECT_EQ(j["source"]["worker_id"], source.worker_id());
  EXPECT_EQ(j["source"]["endpoint"], source.ready["worker_endpoint"]);
  ASSERT_EQ(j["attempts"].size(), 1u) << j.dump(2);
  EXPECT_EQ(j["attempts"][0]["ok"], true);

  const Tree want = ReadTree(src);
  const Tree got = ReadTree(into);
  EXPECT_THAT(want.others, ElementsAre("link.py"));
  EXPECT_THAT(got.others, IsEmpty());
  EXPECT_FALSE(Exists(into + "/link.py"));
  EXPECT_EQ(got.files.size(), 6u);
  EXPECT_TRUE(got.files == want.files) << "the installed tree differs from the source tree";
  EXPECT_EQ(got.files.at("triton/KEY1/kernel.cubin").size(), kBinaryBytes);
  EXPECT_EQ(got.files.at("triton/KEY1/empty.lock"), "");
  EXPECT_THAT(EntriesStartingWith(Path("target"), ".cache.ferry-"), IsEmpty());

  // SIGTERM: the publisher exits 0 and its record is STALE.
  ASSERT_TRUE(source.process->Terminate(absl::Seconds(20)).ok());
  auto get = RunCommand({BinaryPath("ferry"), "sources", "get", source.mx_source_id(),
                         source.worker_id(), "--json", "--server", server_->address()},
                        absl::Seconds(30));
  ASSERT_TRUE(get.ok()) << get.status();
  ASSERT_EQ(get->exit_code, 0) << get->err;
  nlohmann::json record = nlohmann::json::parse(get->out, nullptr, false);
  ASSERT_TRUE(record.is_object()) << get->out;
  EXPECT_EQ(record["worker"]["status"], "SOURCE_STATUS_STALE") << get->out;
}

TEST_F(ArtifactPullTest, PullInstallsTheTreeAsItWasAtPublishTime) {
  const std::string src = MakeCacheTree("cache", 2);
  const Keys keys = Keygen("keys");
  const Tree at_publish = ReadTree(src);
  Source source = Publish(src, "it/snapshot", {"--signing-key", keys.private_key});
  ASSERT_NE(source.process, nullptr);
  // The live cache keeps changing after the source is READY.
  WriteFile(src + "/inductor/ab/cabc123.py", "rewritten after publish\n");
  AppendFile(src + "/top.json", "appended after publish\n");
  WriteFile(src + "/inductor/cd/cnew.py", "a new entry\n");

  const std::string into = Path("target/cache");
  CommandResult r = Pull("it/snapshot", into, {"--trust", keys.public_key});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Json(r)["artifact_id"], source.artifact_id());
  const Tree got = ReadTree(into);
  EXPECT_TRUE(got.files == at_publish.files) << "the install is not the publish-time snapshot";
  EXPECT_FALSE(Exists(into + "/inductor/cd/cnew.py"));
  EXPECT_EQ(got.files.at("top.json"), "{\"version\": 1, \"seed\": 2}\n");
}

TEST_F(ArtifactPullTest, PullMergesIntoAnExistingCacheReplacingOnlyTheArtifactsFiles) {
  const std::string src = MakeCacheTree("cache", 3);
  const Keys keys = Keygen("keys");
  Source source = Publish(src, "it/merge", {"--signing-key", keys.private_key});
  ASSERT_NE(source.process, nullptr);
  const std::string into = Path("target/cache");
  WriteFile(into + "/local.txt", "built locally\n");
  WriteFile(into + "/inductor/ab/local_only.py", "# local kernel\n");
  WriteFile(into + "/top.json", "{\"stale\": true, \"much longer than the artifact's\": 1}\n");
  WriteFile(into + "/inductor/ab/cabc123.py", "old\n");

  CommandResult r = Pull("it/merge", into, {"--trust", keys.public_key});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Json(r)["installed"], true);
  std::map<std::string, std::string> want = ReadTree(src).files;
  want["local.txt"] = "built locally\n";
  want["inductor/ab/local_only.py"] = "# local kernel\n";
  const Tree got = ReadTree(into);
  EXPECT_TRUE(got.files == want) << "merge result differs";
  EXPECT_EQ(got.files.at("top.json"), ReadFile(src + "/top.json"));
  EXPECT_EQ(got.files.at("local.txt"), "built locally\n");
}

TEST_F(ArtifactPullTest, UnsignedSourceIsRefusedUnlessAllowed) {
  const std::string src = MakeCacheTree("cache", 4);
  const Keys keys = Keygen("keys");
  Source source = Publish(src, "it/unsigned");
  ASSERT_NE(source.process, nullptr);
  EXPECT_EQ(source.ready["signer"], "");

  const std::string into = Path("target/cache");
  CommandResult refused = Pull("it/unsigned", into, {"--trust", keys.public_key});
  EXPECT_EQ(refused.exit_code, 1) << refused.err;
  EXPECT_THAT(refused.err, HasSubstr("unsigned"));
  EXPECT_THAT(refused.err, HasSubstr("--allow-unsigned"));
  EXPECT_THAT(refused.err, HasSubstr(source.worker_id()));
  EXPECT_FALSE(Exists(into));

  // A trust refusal leaves no failure marker (see
  // AcceptingUnsignedAfterATrustRefusalIsNotBlockedByAMarker below): no --force needed.
  CommandResult accepted =
      Pull("it/unsigned", into, {"--trust", keys.public_key, "--allow-unsigned"});
  ASSERT_EQ(accepted.exit_code, 0) << accepted.err;
  nlohmann::json j = Json(accepted);
  EXPECT_EQ(j["installed"], true);
  EXPECT_EQ(j["trust"], "unsigned-accepted");
  EXPECT_EQ(j["signer"], "");
  EXPECT_THAT(accepted.err, HasSubstr("UNSIGNED"));
  EXPECT_TRUE(ReadTree(into).files == ReadTree(src).files);

  // --allow-unsigned alone (no --trust) is enough for a fresh directory.
  const std::string into2 = Path("target/cache2");
  CommandResult alone = Pull("it/unsigned", into2, {"--allow-unsigned"});
  ASSERT_EQ(alone.exit_code, 0) << alone.err;
  EXPECT_EQ(Json(alone)["trust"], "unsigned-accepted");
  EXPECT_TRUE(ReadTree(into2).files == ReadTree(src).files);
}

// A pull refused only by this target's trust policy (unsigned, or an untrusted key) writes no
// failure marker: the refusal tells the user to pass --allow-unsigned, and doing so must work
// at once, not after --failure-ttl.
TEST_F(ArtifactPullTest, AcceptingUnsignedAfterATrustRefusalIsNotBlockedByAMarker) {
  const std::string src = MakeCacheTree("cache", 11);
  const Keys keys = Keygen("keys");
  Source source = Publish(src, "it/unsigned-then-allowed");
  ASSERT_NE(source.process, nullptr);
  const std::string into = Path("target/cache");
  CommandResult refused = Pull("it/unsigned-then-allowed", into, {"--trust", keys.public_key});
  ASSERT_EQ(refused.exit_code, 1) << refused.err;
  ASSERT_THAT(refused.err, HasSubstr("or --allow-unsigned to accept it"));
  // Following that advice (no --force) installs it.
  CommandResult accepted = Pull("it/unsigned-then-allowed", into, {"--allow-unsigned"});
  ASSERT_EQ(accepted.exit_code, 0) << accepted.err;
  EXPECT_EQ(Json(accepted)["trust"], "unsigned-accepted");
  EXPECT_TRUE(ReadTree(into).files == ReadTree(src).files);
}

TEST_F(ArtifactPullTest, KeyTheTargetDoesNotTrustIsRefusedNamingItsFingerprint) {
  const std::string src = MakeCacheTree("cache", 5);
  const Keys a = Keygen("keys-a");
  const Keys b = Keygen("keys-b");
  ASSERT_NE(a.fingerprint, b.fingerprint);
  Source source = Publish(src, "it/untrusted", {"--signing-key", a.private_key});
  ASSERT_NE(source.process, nullptr);
  const std::string into = Path("target/cache");
  CommandResult r = Pull("it/untrusted", into, {"--trust", b.public_key});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr(absl::StrCat("signed by key ", a.fingerprint)));
  EXPECT_THAT(r.err, HasSubstr("does not trust"));
  EXPECT_THAT(r.err, Not(HasSubstr(b.fingerprint)));
  EXPECT_FALSE(Exists(into));
  EXPECT_THAT(EntriesStartingWith(Path("target"), ".cache.ferry-"), IsEmpty());

  // Trusting both keys installs it, signed by A.
  const std::string into2 = Path("target/cache2");
  CommandResult ok =
      Pull("it/untrusted", into2, {"--trust", b.public_key, "--trust", a.public_key});
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(Json(ok)["trust"], "trusted");
  EXPECT_EQ(Json(ok)["signer"], a.fingerprint);
}

TEST_F(ArtifactPullTest, CorruptedChunkFailsVerificationLeavesAMarkerAndTheNextSourceIsUsed) {
  const std::string src = MakeCacheTree("cache", 6);
  const Keys keys = Keygen("keys");
  const std::string model = "it/corrupt";
  Source bad = Publish(src, model, {"--signing-key", keys.private_key, "--worker-id", "w-bad"},
                       /*corrupt_byte=*/5);
  ASSERT_NE(bad.process, nullptr);
  const std::string into = Path("target/cache");
  WriteFile(into + "/local.txt", "local\n");

  // Only the corrupted source: nothing installed, the directory untouched.
  CommandResult first = Pull(model, into, {"--trust", keys.public_key});
  EXPECT_EQ(first.exit_code, 1) << first.err;
  EXPECT_THAT(first.err, HasSubstr("failed verification"));
  EXPECT_THAT(first.err, HasSubstr("w-bad"));
  EXPECT_THAT(first.err, HasSubstr("was left untouched"));
  EXPECT_EQ(ReadTree(into).files, (std::map<std::string, std::string>{{"local.txt", "local\n"}}));
  EXPECT_EQ(FailureMarkers().size(), 1u);

  // The node's failure marker: the next pull fails fast, without a transfer.
  CommandResult marked = Pull(model, into, {"--trust", keys.public_key});
  EXPECT_EQ(marked.exit_code, 1) << marked.err;
  EXPECT_THAT(marked.err, HasSubstr("failed"));
  EXPECT_THAT(marked.err, HasSubstr("--force"));
  EXPECT_THAT(marked.err, HasSubstr("(--failure-ttl)"));
  EXPECT_THAT(marked.err, HasSubstr("on this node, so this one is not repeating it"));

  // --failure-ttl 0: the marker is never active, so the pull tries the source again.
  CommandResult retried = Pull(model, into, {"--trust", keys.public_key, "--failure-ttl", "0"});
  EXPECT_EQ(retried.exit_code, 1) << retried.err;
  EXPECT_THAT(retried.err, HasSubstr("READY source(s) tried"));
  EXPECT_THAT(retried.err, HasSubstr("failed verification"));
  EXPECT_THAT(retried.err, Not(HasSubstr("(--failure-ttl)")));

  // A good source appears; the corrupted one stays first in this target's order.
  Source good = Publish(src, model, {"--signing-key", keys.private_key, "--worker-id", "w-good"});
  ASSERT_NE(good.process, nullptr);
  ASSERT_EQ(good.artifact_id(), bad.artifact_id());
  CommandResult r = Pull(model, into,
                         {"--trust", keys.public_key, "--force", "--target-worker-id",
                          TargetIdPreferring(model, {&bad, &good}, "w-bad")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = Json(r);
  EXPECT_EQ(j["installed"], true);
  ASSERT_EQ(j["attempts"].size(), 2u) << j.dump(2);
  EXPECT_EQ(j["attempts"][0]["worker_id"], "w-bad");
  EXPECT_EQ(j["attempts"][0]["ok"], false);
  EXPECT_THAT(j["attempts"][0]["error"].get<std::string>(), HasSubstr("failed verification"));
  EXPECT_EQ(j["attempts"][1]["worker_id"], "w-good");
  EXPECT_EQ(j["attempts"][1]["ok"], true);
  EXPECT_EQ(j["source"]["worker_id"], "w-good");
  std::map<std::string, std::string> want = ReadTree(src).files;
  want["local.txt"] = "local\n";
  EXPECT_TRUE(ReadTree(into).files == want);
  // Success clears the failure marker.
  EXPECT_THAT(FailureMarkers(), IsEmpty());
}

TEST_F(ArtifactPullTest, ConcurrentPullsIntoOneDirectoryInstallOnce) {
  const std::string src = MakeCacheTree("cache", 7);
  const Keys keys = Keygen("keys");
  // The source serves at most 1 MiB/s (its real upload cap, over TCP): the first pull takes
  // about 3 s, and the second starts while it still holds the node's install lock.
  Source source = Publish(src, "it/concurrent",
                          {"--signing-key", keys.private_key, "--max-upload-rate", "1MiB"});
  ASSERT_NE(source.process, nullptr);
  const std::string into = Path("target/cache");
  std::unique_ptr<ChildProcess> slow =
      StartPull("slow", "it/concurrent", into, {"--trust", keys.public_key, "--transport", "tcp"});
  ASSERT_NE(slow, nullptr);
  // The stage appears under the install lock, once the slow pull has its manifest: it then
  // reads for about 3 s more.
  ASSERT_TRUE(WaitForStage(absl::Seconds(30))) << ReadFile(Path("slow.log"));
  std::unique_ptr<ChildProcess> fast =
      StartPull("fast", "it/concurrent", into, {"--trust", keys.public_key, "--transport", "tcp"});
  ASSERT_NE(fast, nullptr);
  Status slow_done = slow->Wait(absl::Seconds(60));
  Status fast_done = fast->Wait(absl::Seconds(60));
  ASSERT_TRUE(slow_done.ok()) << slow_done << "\nsource:\n" << source.process->LogTail();
  ASSERT_TRUE(fast_done.ok()) << fast_done << "\nsource:\n" << source.process->LogTail();
  nlohmann::json a = ChildJson("slow");
  nlohmann::json b = ChildJson("fast");
  ASSERT_TRUE(a["installed"].is_boolean());
  ASSERT_TRUE(b["installed"].is_boolean());
  EXPECT_NE(a["installed"], b["installed"]) << a.dump(2) << "\n" << b.dump(2);
  const nlohmann::json& waited = a["installed"] == true ? b : a;
  EXPECT_EQ(waited["artifact_id"], source.artifact_id());
  EXPECT_THAT(waited["attempts"], IsEmpty());
  EXPECT_TRUE(ReadTree(into).files == ReadTree(src).files);
  EXPECT_THAT(EntriesStartingWith(Path("target"), ".cache.ferry-"), IsEmpty());
}

TEST_F(ArtifactPullTest, PullKilledBeforeInstallLeavesTheCacheUntouched) {
  const std::string src = MakeCacheTree("cache", 8);
  const Keys keys = Keygen("keys");
  // The source serves at most 1 MiB/s (its real upload cap): the 3 MiB take about 3 s, so the
  // pull is still staging when it is killed.
  Source source =
      Publish(src, "it/killed", {"--signing-key", keys.private_key, "--max-upload-rate", "1MiB"});
  ASSERT_NE(source.process, nullptr);
  const std::string into = Path("target/cache");
  WriteFile(into + "/local.txt", "mine\n");
  std::unique_ptr<ChildProcess> pull =
      StartPull("staging", "it/killed", into, {"--trust", keys.public_key, "--transport", "tcp"});
  ASSERT_NE(pull, nullptr);
  // The files are being staged beside the cache...
  ASSERT_TRUE(WaitForStage(absl::Seconds(30))) << ReadFile(Path("staging.log"));
  ASSERT_EQ(kill(pull->pid(), SIGKILL), 0);
  EXPECT_FALSE(pull->Wait(absl::Seconds(10)).ok());
  // ...and nothing of it reached the cache.
  EXPECT_EQ(ReadTree(into).files, (std::map<std::string, std::string>{{"local.txt", "mine\n"}}));

  CommandResult r = Pull("it/killed", into, {"--trust", keys.public_key, "--transport", "tcp"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Json(r)["installed"], true);
  std::map<std::string, std::string> want = ReadTree(src).files;
  want["local.txt"] = "mine\n";
  EXPECT_TRUE(ReadTree(into).files == want);
  EXPECT_THAT(EntriesStartingWith(Path("target"), ".cache.ferry-"), IsEmpty());
}

TEST_F(ArtifactPullTest, SourceKilledMidTransferTargetCompletesFromTheNext) {
  const std::string src = MakeCacheTree("cache", 9);
  const Keys keys = Keygen("keys");
  const std::string model = "it/source-killed";
  // A serves at most 640 KiB/s (its real upload cap): the 3 MiB take it about 5 s.
  Source a = Publish(
      src, model,
      {"--signing-key", keys.private_key, "--worker-id", "w-a", "--max-upload-rate", "640KiB"});
  Source b = Publish(src, model, {"--signing-key", keys.private_key, "--worker-id", "w-b"});
  ASSERT_NE(a.process, nullptr);
  ASSERT_NE(b.process, nullptr);
  // The same directory gives the same artifact (its id covers the absolute paths).
  ASSERT_EQ(a.artifact_id(), b.artifact_id());
  const std::string into = Path("target/cache");
  // Over one stream from A's capped server: the pull is still reading when A dies.
  std::unique_ptr<ChildProcess> pull = StartPull(
      "slow", model, into,
      {"--trust", keys.public_key, "--transport", "tcp", "--tcp-streams", "1", "--stall-timeout",
       "2", "--target-worker-id", TargetIdPreferring(model, {&a, &b}, "w-a")});
  ASSERT_NE(pull, nullptr);
  // The stage appears once A's manifest is trusted and its data plane connected: the read from
  // A is about to start.
  ASSERT_TRUE(WaitForStage(absl::Seconds(30))) << ReadFile(Path("slow.log"));
  // Kill A once 1 MiB of its data has arrived at the pull: mid-read, with about 3 s of A's
  // 3 MiB still to come.
  ASSERT_TRUE(WaitForBytesReceived(pull->pid(), 1 << 20, absl::Seconds(30)))
      << ReadFile(Path("slow.log"));
  ASSERT_EQ(kill(a.process->pid(), SIGKILL), 0);
  Status done = pull->Wait(absl::Seconds(60));
  ASSERT_TRUE(done.ok()) << done;
  nlohmann::json j = ChildJson("slow");
  EXPECT_EQ(j["installed"], true);
  EXPECT_EQ(j["transport"], "tcp");
  ASSERT_EQ(j["attempts"].size(), 2u) << j.dump(2);
  EXPECT_EQ(j["attempts"][0]["worker_id"], "w-a");
  EXPECT_EQ(j["attempts"][0]["ok"], false);
  EXPECT_NE(j["attempts"][0]["error"], "");
  EXPECT_EQ(j["attempts"][1]["worker_id"], "w-b");
  EXPECT_EQ(j["attempts"][1]["ok"], true);
  EXPECT_EQ(j["source"]["worker_id"], "w-b");
  EXPECT_TRUE(ReadTree(into).files == ReadTree(src).files);
  EXPECT_THAT(EntriesStartingWith(Path("target"), ".cache.ferry-"), IsEmpty());
}

TEST_F(ArtifactPullTest, NoSourceFailsQuicklyAndLeavesNoMarker) {
  const std::string into = Path("target/cache");
  for (int i = 0; i < 2; ++i) {
    CommandResult r = Pull("it/nobody-publishes-this", into, {"--allow-unsigned"});
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_THAT(r.err, HasSubstr("no READY source"));
    EXPECT_THAT(r.err, HasSubstr("it/nobody-publishes-this"));
    EXPECT_THAT(r.err, HasSubstr("ferry artifact publish"));
    EXPECT_THAT(r.err, Not(HasSubstr("--failure-ttl")));
    EXPECT_FALSE(Exists(into));
    EXPECT_THAT(FailureMarkers(), IsEmpty());
  }
}

TEST_F(ArtifactPullTest, BadInputIsRefusedWithAClearMessage) {
  const std::string src = MakeCacheTree("cache", 10);
  const std::string into = Path("target/cache");
  const std::string kinds =
      "torch-compile, triton, deep-gemm, tilelang, cute-dsl, flashinfer, "
      "tvm-ffi";

  std::vector<std::string> argv = PullArgs("it/bad", into, {"--allow-unsigned"});
  argv[std::find(argv.begin(), argv.end(), "--kind") - argv.begin() + 1] = "bogus";
  auto r = RunCommand(argv, absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NE(r->exit_code, 0);
  EXPECT_THAT(r->err, HasSubstr("unknown cache kind 'bogus'"));
  EXPECT_THAT(r->err, HasSubstr(kinds));

  argv = PublishArgs(src, "it/bad", Path("bad.ready"));
  argv[std::find(argv.begin(), argv.end(), "--kind") - argv.begin() + 1] = "bogus";
  r = RunCommand(argv, absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NE(r->exit_code, 0);
  EXPECT_THAT(r->err, HasSubstr("unknown cache kind 'bogus'"));
  EXPECT_THAT(r->err, HasSubstr(kinds));

  // Neither --trust nor --allow-unsigned.
  r = RunCommand(PullArgs("it/bad", into, {}), absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 1);
  EXPECT_THAT(r->err, HasSubstr("--trust"));
  EXPECT_THAT(r->err, HasSubstr("--allow-unsigned"));
  EXPECT_FALSE(Exists(into));

  // A directory with no regular file (only a symlink and an empty subdirectory).
  const std::string empty = Path("empty");
  fs::create_directories(empty + "/sub");
  fs::create_symlink(src + "/top.json", empty + "/link.json");
  r = RunCommand(PublishArgs(empty, "it/bad", Path("empty.ready")), absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 1);
  EXPECT_THAT(r->err, HasSubstr("holds no regular file"));
  EXPECT_FALSE(Exists(Path("empty.ready")));

  argv = PublishArgs(src, "it/bad", Path("chunk.ready"));
  auto chunk_size = std::find(argv.begin(), argv.end(), "--chunk-size") + 1;
  *chunk_size = "0";
  r = RunCommand(argv, absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 1);
  EXPECT_THAT(r->err, HasSubstr("--chunk-size: chunk size 0 is outside 1 B..4 GiB"));
  *chunk_size = "5GiB";
  r = RunCommand(argv, absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 1);
  EXPECT_THAT(r->err, HasSubstr("--chunk-size: chunk size 5368709120 is outside 1 B..4 GiB"));
  EXPECT_FALSE(Exists(Path("chunk.ready")));

  // A missing directory names it.
  r = RunCommand(PublishArgs(Path("missing"), "it/bad", Path("missing.ready")), absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 1);
  EXPECT_THAT(r->err, HasSubstr(Path("missing")));
}

}  // namespace
}  // namespace ferry
