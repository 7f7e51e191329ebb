// End to end: real `ferry publish` and `ferry pull` processes moving a model over loopback
// through a real ferry-server, for each transport. Covers one and two ranks, a source killed
// mid-transfer, a corrupted source byte, no source at all, and a restarted source whose old
// coordinates must be refused. Faults come from test code, never from flags of the shipped
// binary: a corrupted source is tests/tools/ferry_fault_source (publishes like `ferry publish`,
// then flips one served byte), and a pull is kept under way by the source's real upload cap
// (--max-upload-rate, over TCP).
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/source_selection.h"
#include "common/testing/test_certs.h"
#include "ferry/metadata_client.h"
#include "ferry/source_identity.h"
#include "ferry/transfer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server_process.h"
#include "weights/llama_model.h"
#include "weights/tensor_checksum.h"
#include "worker/worker_client.h"

namespace ferry {
namespace {

using ::ferry::testing::BinaryPath;
using ::ferry::testing::ChildOptions;
using ::ferry::testing::ChildProcess;
using ::ferry::testing::CommandResult;
using ::ferry::testing::ReadFile;
using ::ferry::testing::RunCommand;
using ::ferry::testing::ServerProcess;
using ::ferry::testing::StartServer;
using ::ferry::testing::TempDir;
using ::testing::HasSubstr;

constexpr uint64_t kModelBytes = 24ull << 20;

class P2pPullTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto server = StartServer({.extra_args = {"--heartbeat-timeout", "30s"}});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    MetadataClientOptions options;
    options.server_address = server_->address();
    auto client = MetadataClient::Create(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  std::string transport() const { return GetParam(); }

  // Writes a Llama-shaped model and returns its path.
  std::string Model(const std::string& name, uint64_t bytes, uint64_t seed) {
    const std::string path = dir_.path() + "/" + name;
    Status s = weights::WriteLlamaModel(path, bytes, seed);
    EXPECT_TRUE(s.ok()) << s;
    return path;
  }

  std::vector<std::string> Identity(const std::string& model, int tp = 1) const {
    return {"--model", model,      "--tp",     std::to_string(tp),
            "--dtype", "bfloat16", "--server", server_->address()};
  }

  std::vector<std::string> EngineArgs() const {
    return {"--transport", transport(), "--data-listen", "127.0.0.1:0", "--ucx-net-devices", "lo"};
  }

  struct Source {
    std::unique_ptr<ChildProcess> process;
    std::string worker_id;
    std::string mx_source_id;
    std::string endpoint;
  };

  // Starts `ferry publish FILE` and waits until it is READY.
  Source Publish(const std::string& file, const std::string& model,
                 std::vector<std::string> extra = {}, int tp = 1) {
    return StartSource({BinaryPath("ferry"), "publish", file}, model, std::move(extra), tp);
  }

  // Starts a source of `file` that serves the byte at `offset` flipped (after the checksums
  // were taken; tests/tools/ferry_fault_source) and waits until it is READY.
  Source PublishCorrupt(const std::string& file, const std::string& model, uint64_t offset,
                        std::vector<std::string> extra = {}) {
    return StartSource({BinaryPath("ferry_fault_source"), "weights", file, "--corrupt-byte",
                        std::to_string(offset)},
                       model, std::move(extra), 1);
  }

  // Starts `command` (a source taking `ferry publish`'s flags) and waits until it is READY.
  Source StartSource(std::vector<std::string> argv, const std::string& model,
                     std::vector<std::string> extra, int tp) {
    const std::string tag = absl::StrCat("publish-", ++children_);
    for (const auto& a : Identity(model, tp)) argv.push_back(a);
    for (const auto& a : EngineArgs()) argv.push_back(a);
    const std::string ready = dir_.path() + "/" + tag + ".ready";
    for (const auto& a : {std::string("--worker-listen"), std::string("127.0.0.1:0"),
                          std::string("--heartbeat-interval"), std::string("1"),
                          std::string("--ready-file"), ready}) {
      argv.push_back(a);
    }
    for (auto& a : extra) {
      // A later --worker-listen replaces the default above.
      if (a == "--worker-listen") {
        auto it = std::find(argv.begin(), argv.end(), "--worker-listen");
        argv.erase(it, it + 2);
      }
      argv.push_back(a);
    }
    ChildOptions options{.argv = argv, .log_file = dir_.path() + "/" + tag + ".log"};
    Source source;
    auto child = ChildProcess::Start(options);
    EXPECT_TRUE(child.ok()) << child.status();
    if (!child.ok()) return source;
    source.process = *std::move(child);
    auto json = source.process->WaitForReadyFile(ready, "worker_port", absl::Seconds(60));
    EXPECT_TRUE(json.ok()) << json.status();
    if (!json.ok()) return source;
    source.worker_id = (*json)["worker_id"];
    source.mx_source_id = (*json)["mx_source_id"];
    source.endpoint = (*json)["worker_endpoint"];
    return source;
  }

  std::vector<std::string> PullArgs(const std::string& model, const std::string& out,
                                    std::vector<std::string> extra = {}, int tp = 1) {
    std::vector<std::string> argv = {BinaryPath("ferry"), "pull", "-o", out, "--json"};
    for (const auto& a : Identity(model, tp)) argv.push_back(a);
    for (const auto& a : EngineArgs()) argv.push_back(a);
    for (auto& a : extra) argv.push_back(a);
    return argv;
  }

  CommandResult Pull(const std::string& model, const std::string& out,
                     std::vector<std::string> extra = {}, int tp = 1) {
    auto r = RunCommand(PullArgs(model, out, std::move(extra), tp), absl::Seconds(120));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : CommandResult{};
  }

  // A target worker id for which `first` is the rendezvous favourite among the READY sources.
  std::string TargetIdPreferring(const std::string& model, const std::string& first, int tp = 1) {
    SourceIdentity id;
    id.set_model_name(model);
    id.set_mx_source_type(model_express::p2p::MX_SOURCE_TYPE_WEIGHTS);
    id.set_tensor_parallel_size(tp);
    id.set_pipeline_parallel_size(1);
    id.set_expert_parallel_size(1);
    id.set_dtype("bfloat16");
    ListSourcesRequest request;
    *request.mutable_identity() = id;
    request.set_status_filter(model_express::p2p::SOURCE_STATUS_READY);
    auto refs = client_->ListSources(request);
    EXPECT_TRUE(refs.ok()) << refs.status();
    if (!refs.ok()) return "";
    for (int i = 0; i < 1000; ++i) {
      SourceSelection sel;
      sel.model_name = model;
      sel.accelerator = "cpu";
      sel.target_worker_id = absl::StrCat("target-", i);
      auto order = OrderCandidates(*refs, sel);
      if (!order.empty() && order.front().worker_id() == first) return sel.target_worker_id;
    }
    ADD_FAILURE() << "no target id prefers " << first;
    return "";
  }

  // shm and UCX reads are one-sided: the source never sees them, so nothing on its side can
  // slow one down for a test to act while it runs. Such a test reads `source`'s tensors in this
  // process instead, through the real engine and transport, one piece in flight (one copy
  // thread, one request), and acts from the read's own per-piece callback: `act` runs once,
  // after the first 1 MiB piece landed and before the next is read, so the read is under way
  // when it acts. Returns the read's status; on success, every tensor read matches the
  // checksum the source announced.
  Status ReadActingAfterFirstPiece(const Source& source, const std::function<void()>& act) {
    worker::WorkerClientOptions client_options;
    client_options.endpoint = source.endpoint;
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<worker::WorkerClient> worker,
                           worker::WorkerClient::Create(client_options));
    FERRY_ASSIGN_OR_RETURN(ferry::v1::GetTransferInfoResponse info,
                           worker->GetTransferInfo(source.mx_source_id, source.worker_id));
    FERRY_ASSIGN_OR_RETURN(TransportKind kind, ParseTransportKind(transport()));
    TransferEngineOptions engine_options;
    engine_options.name = "test target";
    engine_options.enable_shm = kind == TransportKind::kShm;
    engine_options.enable_ucx = kind == TransportKind::kUcx;
    engine_options.enable_tcp = false;
    engine_options.enable_cuda_ipc = false;
    engine_options.ucx_without_rdma = true;
    engine_options.ucx_net_devices = "lo";
    engine_options.shm_copy_threads = 1;
    engine_options.max_inflight = 1;
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<TransferEngine> engine,
                           TransferEngine::Create(engine_options));
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<Region> local,
                           engine->AllocateRegion(info.total_bytes()));
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<Peer> peer, engine->Connect(info.transfer_blob(), kind));
    std::vector<ReadOp> ops;
    uint64_t at = 0;
    for (const ferry::v1::TensorEntry& t : info.tensors()) {
      ops.push_back({t.region(), t.offset(), static_cast<char*>(local->data()) + at, t.size()});
      at += t.size();
    }
    ReadOptions read;
    read.timeout = absl::Seconds(60);
    read.stall_timeout = absl::Seconds(1);
    read.chunk_bytes = 1 << 20;
    std::once_flag acted;
    read.on_piece = [&](const ReadOp&, size_t) { std::call_once(acted, act); };
    FERRY_RETURN_IF_ERROR(peer->Read(CoalesceReadOps(std::move(ops)), read));
    at = 0;
    for (const ferry::v1::TensorEntry& t : info.tensors()) {
      const uint64_t sum =
          weights::TensorChecksum(static_cast<const char*>(local->data()) + at, t.size());
      if (sum != t.checksum()) {
        return absl::DataLossError(absl::StrCat("tensor ", t.name(), " failed verification"));
      }
      at += t.size();
    }
    return absl::OkStatus();
  }

  // The flags that make `ferry publish` serve slowly enough for a test to act while a pull of
  // kModelBytes is under way: the real upload cap (8 MiB/s: 24 MiB take about 3 s), which paces
  // the TCP server. None for shm and UCX, whose reads are one-sided (the tests use
  // ReadActingAfterFirstPiece there).
  std::vector<std::string> SlowSourceArgs() const {
    if (transport() != "tcp") return {};
    return {"--max-upload-rate", "8MiB"};
  }

  // Starts a pull preferring `first` (publish it with SlowSourceArgs() so that the pull is
  // still under way when the test acts), and waits until bytes have moved.
  std::unique_ptr<ChildProcess> StartSlowPull(const std::string& model, const std::string& out,
                                              const std::string& first,
                                              std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--target-worker-id", TargetIdPreferring(model, first),
                                     "--progress", "lines"};
    args.insert(args.end(), extra.begin(), extra.end());
    ChildOptions pull{.argv = PullArgs(model, out, args),
                      .log_file = dir_.path() + "/pull.log",
                      .stdout_file = dir_.path() + "/pull.json"};
    auto puller = ChildProcess::Start(pull);
    EXPECT_TRUE(puller.ok()) << puller.status();
    if (!puller.ok()) return nullptr;
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline) {
      std::istringstream log(ReadFile(pull.log_file));
      for (std::string line; std::getline(log, line);) {
        if (line.rfind("progress ", 0) == 0 && line.rfind("progress 0/", 0) != 0) {
          return *std::move(puller);
        }
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    ADD_FAILURE() << "no bytes moved: " << ReadFile(pull.log_file);
    return nullptr;
  }

  // The JSON summary a StartSlowPull child printed.
  nlohmann::json SlowPullSummary() {
    nlohmann::json j = nlohmann::json::parse(ReadFile(dir_.path() + "/pull.json"), nullptr, false);
    EXPECT_TRUE(j.is_object()) << ReadFile(dir_.path() + "/pull.log");
    return j;
  }

  static nlohmann::json Json(const CommandResult& r) {
    nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
    EXPECT_TRUE(j.is_object()) << "stdout: " << r.out << "\nstderr: " << r.err;
    return j;
  }

  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<MetadataClient> client_;
  int children_ = 0;
};

TEST_P(P2pPullTest, OneRankPullIsByteIdenticalAndPublishRetiresCleanly) {
  const std::string model = Model("m.safetensors", kModelBytes, 1);
  Source src = Publish(model, "it/one-rank");
  ASSERT_NE(src.process, nullptr);
  const std::string out = dir_.path() + "/out.safetensors";
  CommandResult r = Pull("it/one-rank", out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = Json(r);
  EXPECT_EQ(j["transport"], transport());
  EXPECT_EQ(j["path"], transport());     // host memory on both ends: nothing staged
  EXPECT_EQ(j["transport_choice"], "");  // an explicit --transport
  EXPECT_EQ(j["verified"], true);
  EXPECT_GT(j["tensors"].get<int>(), 10);
  EXPECT_EQ(j["source"]["worker_id"], src.worker_id);
  EXPECT_EQ(ReadFile(out), ReadFile(model));

  ASSERT_TRUE(src.process->Terminate(absl::Seconds(20)).ok());
  auto record = client_->GetMetadata(src.mx_source_id, src.worker_id);
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(record->worker().status(), model_express::p2p::SOURCE_STATUS_STALE);
}

TEST_P(P2pPullTest, TwoRanksEachGetTheirShard) {
  const std::string shard0 = Model("rank0.safetensors", 8ull << 20, 10);
  const std::string shard1 = Model("rank1.safetensors", 12ull << 20, 11);
  Source s0 = Publish(shard0, "it/two-ranks", {"--rank", "0"}, /*tp=*/2);
  Source s1 = Publish(shard1, "it/two-ranks", {"--rank", "1"}, /*tp=*/2);
  ASSERT_NE(s0.process, nullptr);
  ASSERT_NE(s1.process, nullptr);
  const std::string out0 = dir_.path() + "/out0.safetensors";
  const std::string out1 = dir_.path() + "/out1.safetensors";
  CommandResult r1 = Pull("it/two-ranks", out1, {"--rank", "1"}, 2);
  CommandResult r0 = Pull("it/two-ranks", out0, {"--rank", "0"}, 2);
  ASSERT_EQ(r0.exit_code, 0) << r0.err;
  ASSERT_EQ(r1.exit_code, 0) << r1.err;
  EXPECT_EQ(Json(r0)["source"]["worker_id"], s0.worker_id);
  EXPECT_EQ(Json(r1)["source"]["worker_id"], s1.worker_id);
  EXPECT_EQ(ReadFile(out0), ReadFile(shard0));
  EXPECT_EQ(ReadFile(out1), ReadFile(shard1));
}

TEST_P(P2pPullTest, SourceKilledMidTransferTargetCompletesFromTheNext) {
  const std::string model = Model("m.safetensors", kModelBytes, 2);
  Source a = Publish(model, "it/kill", SlowSourceArgs());
  Source b = Publish(model, "it/kill");
  ASSERT_NE(a.process, nullptr);
  ASSERT_NE(b.process, nullptr);
  const std::string out = dir_.path() + "/out.safetensors";
  if (transport() != "tcp") {
    // One-sided reads (see ReadActingAfterFirstPiece): a is killed, and gone, while a read of
    // its memory is under way.
    Status read = ReadActingAfterFirstPiece(a, [&] {
      EXPECT_EQ(kill(a.process->pid(), SIGKILL), 0);
      EXPECT_FALSE(a.process->Wait(absl::Seconds(10)).ok());
    });
    // Shared memory on one host: the target has mapped the source's memory, and the mapping
    // keeps those pages alive after the process dies, so the read completes (and verifies)
    // from the killed source itself. A UCX path that reads through the source process instead
    // fails, naming the peer.
    if (transport() == "shm" || read.ok()) {
      EXPECT_TRUE(read.ok()) << read;
    } else {
      EXPECT_EQ(read.code(), absl::StatusCode::kUnavailable) << read;
    }
    // And a pull that still finds the dead source's record first completes from the next.
    CommandResult r =
        Pull("it/kill", out, {"--target-worker-id", TargetIdPreferring("it/kill", a.worker_id)});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    nlohmann::json j = Json(r);
    ASSERT_EQ(j["attempts"].size(), 2u) << j.dump(2);
    EXPECT_EQ(j["attempts"][0]["worker_id"], a.worker_id);
    EXPECT_EQ(j["attempts"][0]["ok"], false);
    EXPECT_EQ(j["attempts"][1]["worker_id"], b.worker_id);
    EXPECT_EQ(j["attempts"][1]["ok"], true);
    EXPECT_EQ(ReadFile(out), ReadFile(model));
    return;
  }
  // TCP: a's capped server keeps the pull under way (SlowSourceArgs).
  std::unique_ptr<ChildProcess> puller = StartSlowPull("it/kill", out, a.worker_id);
  ASSERT_NE(puller, nullptr);
  ASSERT_EQ(kill(a.process->pid(), SIGKILL), 0);
  ASSERT_TRUE(puller->Wait(absl::Seconds(60)).ok()) << ReadFile(dir_.path() + "/pull.log");
  nlohmann::json j = SlowPullSummary();
  EXPECT_EQ(ReadFile(out), ReadFile(model));
  ASSERT_EQ(j["attempts"].size(), 2u) << j.dump(2);
  EXPECT_EQ(j["attempts"][0]["worker_id"], a.worker_id);
  EXPECT_EQ(j["attempts"][0]["ok"], false);
  EXPECT_EQ(j["attempts"][1]["worker_id"], b.worker_id);
  EXPECT_EQ(j["attempts"][1]["ok"], true);
  // What the killed source delivered before it died is kept: b reads only the rest.
  EXPECT_GT(j["attempts"][1]["bytes"].get<uint64_t>(), 0u);
  EXPECT_EQ(j["attempts"][0]["bytes"].get<uint64_t>() + j["attempts"][1]["bytes"].get<uint64_t>(),
            j["bytes"].get<uint64_t>());
}

TEST_P(P2pPullTest, StoppedSourceIsAbandonedAfterTheStallTimeout) {
  const std::string model = Model("m.safetensors", kModelBytes, 9);
  Source a = Publish(model, "it/stall", SlowSourceArgs());
  Source b = Publish(model, "it/stall");
  ASSERT_NE(a.process, nullptr);
  ASSERT_NE(b.process, nullptr);
  const std::string out = dir_.path() + "/out.safetensors";
  if (transport() != "tcp") {
    // Shared memory is one-sided: a source stopped while a read of its memory is under way
    // (see ReadActingAfterFirstPiece, stall timeout 1 s) does not stop the read.
    Status read =
        ReadActingAfterFirstPiece(a, [&] { EXPECT_EQ(kill(a.process->pid(), SIGSTOP), 0); });
    kill(a.process->pid(), SIGCONT);
    EXPECT_TRUE(read.ok()) << read;
    return;
  }
  // TCP: a's capped server keeps the pull under way (SlowSourceArgs).
  std::unique_ptr<ChildProcess> puller =
      StartSlowPull("it/stall", out, a.worker_id, {"--stall-timeout", "1"});
  ASSERT_NE(puller, nullptr);
  // Hung, not dead: its sockets stay open.
  ASSERT_EQ(kill(a.process->pid(), SIGSTOP), 0);
  Status done = puller->Wait(absl::Seconds(60));
  kill(a.process->pid(), SIGCONT);
  ASSERT_TRUE(done.ok()) << done << ReadFile(dir_.path() + "/pull.log");
  nlohmann::json j = SlowPullSummary();
  EXPECT_EQ(ReadFile(out), ReadFile(model));
  // What the stopped source delivered is kept; the next source reads only the rest.
  ASSERT_EQ(j["attempts"].size(), 2u) << j.dump(2);
  EXPECT_THAT(j["attempts"][0]["error"].get<std::string>(), HasSubstr("the transfer stalled"));
  EXPECT_EQ(j["attempts"][1]["worker_id"], b.worker_id);
  EXPECT_EQ(j["attempts"][1]["ok"], true);
  EXPECT_GT(j["attempts"][1]["bytes"].get<uint64_t>(), 0u);
  EXPECT_EQ(j["attempts"][0]["bytes"].get<uint64_t>() + j["attempts"][1]["bytes"].get<uint64_t>(),
            j["bytes"].get<uint64_t>());
}

TEST_P(P2pPullTest, CorruptedSourceByteIsDetectedAndTheNextSourceUsed) {
  const std::string model = Model("m.safetensors", kModelBytes, 3);
  Source bad = PublishCorrupt(model, "it/corrupt", 1000003);
  Source good = Publish(model, "it/corrupt");
  ASSERT_NE(bad.process, nullptr);
  ASSERT_NE(good.process, nullptr);
  const std::string out = dir_.path() + "/out.safetensors";
  CommandResult r = Pull("it/corrupt", out,
                         {"--target-worker-id", TargetIdPreferring("it/corrupt", bad.worker_id)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = Json(r);
  // The corrupt source is named and dropped; its verified tensors are kept, and the good
  // source reads what is missing (at least the corrupt tensor).
  ASSERT_EQ(j["attempts"].size(), 2u) << j.dump(2);
  EXPECT_EQ(j["attempts"][0]["worker_id"], bad.worker_id);
  EXPECT_THAT(j["attempts"][0]["error"].get<std::string>(), HasSubstr("failed verification"));
  EXPECT_EQ(j["attempts"][1]["worker_id"], good.worker_id);
  EXPECT_EQ(j["attempts"][1]["ok"], true);
  EXPECT_GT(j["attempts"][1]["bytes"].get<uint64_t>(), 0u);
  EXPECT_EQ(j["attempts"][0]["bytes"].get<uint64_t>() + j["attempts"][1]["bytes"].get<uint64_t>(),
            j["bytes"].get<uint64_t>());
  EXPECT_EQ(ReadFile(out), ReadFile(model));
}

TEST_P(P2pPullTest, OnlyACorruptedSourceFailsAndWritesNothing) {
  const std::string model = Model("m.safetensors", kModelBytes, 4);
  Source bad = PublishCorrupt(model, "it/corrupt-only", 77);
  ASSERT_NE(bad.process, nullptr);
  const std::string out = dir_.path() + "/out.safetensors";
  CommandResult r = Pull("it/corrupt-only", out);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("failed verification"));
  EXPECT_THAT(r.err, HasSubstr("nothing was written"));
  EXPECT_FALSE(std::filesystem::exists(out));
  for (const auto& e : std::filesystem::directory_iterator(dir_.path())) {
    EXPECT_EQ(e.path().string().find("out.safetensors.tmp"), std::string::npos) << e.path();
  }
}

// A source that checksums with the tree algorithm (the one GPU targets verify on the device) is
// verified with it, and a source that lies under it is caught the same way.
TEST_P(P2pPullTest, TreeChecksumSourceIsVerifiedWithItsAlgorithm) {
  const std::string model = Model("m.safetensors", kModelBytes, 5);
  Source src = Publish(model, "it/tree", {"--checksum", "xxh3-64-tree-64k"});
  ASSERT_NE(src.process, nullptr);
  const std::string out = dir_.path() + "/out.safetensors";
  CommandResult r = Pull("it/tree", out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = Json(r);
  EXPECT_EQ(j["checksum"], "xxh3-64-tree-64k");
  EXPECT_EQ(j["verified"], true);
  EXPECT_EQ(ReadFile(out), ReadFile(model));

  Source bad = PublishCorrupt(model, "it/tree-corrupt", 4099, {"--checksum", "xxh3-64-tree-64k"});
  ASSERT_NE(bad.process, nullptr);
  const std::string out2 = dir_.path() + "/out2.safetensors";
  r = Pull("it/tree-corrupt", out2);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("failed verification"));
  EXPECT_THAT(r.err, HasSubstr("xxh3-64-tree-64k"));
  EXPECT_FALSE(std::filesystem::exists(out2));
}

TEST(PublishFlagsTest, UnknownChecksumIsRefusedListingTheKnownOnes) {
  auto r =
      RunCommand({BinaryPath("ferry"), "publish", "/dev/null", "--model", "m", "--checksum", "md5"},
                 absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NE(r->exit_code, 0);
  EXPECT_THAT(r->err, HasSubstr("--checksum: unknown checksum algorithm 'md5'; known: xxh3-64, "
                                "xxh3-64-tree-64k"));
}

TEST_P(P2pPullTest, NoSourceFailsQuicklyNamingTheIdentity) {
  const std::string out = dir_.path() + "/out.safetensors";
  const absl::Time start = absl::Now();
  CommandResult r = Pull("nobody/publishes-this", out);
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("no READY source for model nobody/publishes-this"));
  EXPECT_THAT(r.err, HasSubstr("mx_source_id"));
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST_P(P2pPullTest, RestartedSourceRefusesTheOldWorkerId) {
  const std::string model = Model("m.safetensors", kModelBytes, 5);
  const std::string port = std::to_string(testing::UnusedLoopbackPort());
  Source old_source = Publish(model, "it/restart",
                              {"--worker-listen", "127.0.0.1:" + port, "--worker-id", "w-old"});
  ASSERT_NE(old_source.process, nullptr);
  // The process dies without retiring its record, and comes back on the same endpoint with a
  // new worker id: the old record still points at the endpoint.
  ASSERT_EQ(kill(old_source.process->pid(), SIGKILL), 0);
  EXPECT_FALSE(old_source.process->Wait(absl::Seconds(10)).ok());
  Source restarted = Publish(model, "it/restart",
                             {"--worker-listen", "127.0.0.1:" + port, "--worker-id", "w-new"});
  ASSERT_NE(restarted.process, nullptr);
  const std::string out = dir_.path() + "/out.safetensors";
  CommandResult r =
      Pull("it/restart", out, {"--target-worker-id", TargetIdPreferring("it/restart", "w-old")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = Json(r);
  ASSERT_EQ(j["attempts"].size(), 2u) << j.dump(2);
  EXPECT_EQ(j["attempts"][0]["worker_id"], "w-old");
  EXPECT_THAT(j["attempts"][0]["error"].get<std::string>(), HasSubstr("w-old"));
  EXPECT_THAT(j["attempts"][0]["error"].get<std::string>(), HasSubstr("w-new"));
  EXPECT_EQ(j["source"]["worker_id"], "w-new");
  EXPECT_EQ(ReadFile(out), ReadFile(model));
}

TEST_P(P2pPullTest, ThenPublishMakesTheTargetASource) {
  const std::string model = Model("m.safetensors", kModelBytes, 6);
  Source first = Publish(model, "it/fan-out");
  ASSERT_NE(first.process, nullptr);
  // The target pulls, writes its copy, then serves what it pulled.
  const std::string ready = dir_.path() + "/fan-out.ready";
  const std::string out1 = dir_.path() + "/out1.safetensors";
  std::vector<std::string> argv = PullArgs("it/fan-out", out1,
                                           {"--then-publish", "--worker-listen", "127.0.0.1:0",
                                            "--ready-file", ready, "--heartbeat-interval", "1"});
  ChildOptions options{.argv = argv,
                       .log_file = dir_.path() + "/fan-out.log",
                       .stdout_file = dir_.path() + "/fan-out.json"};
  auto fan_out = ChildProcess::Start(options);
  ASSERT_TRUE(fan_out.ok()) << fan_out.status();
  auto ready_json = (*fan_out)->WaitForReadyFile(ready, "worker_port", absl::Seconds(60));
  ASSERT_TRUE(ready_json.ok()) << ready_json.status();
  EXPECT_EQ(ReadFile(out1), ReadFile(model));
  // The original source retires; a new target pulls from the fan-out source.
  ASSERT_TRUE(first.process->Terminate(absl::Seconds(20)).ok());
  const std::string out2 = dir_.path() + "/out2.safetensors";
  CommandResult r = Pull("it/fan-out", out2);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Json(r)["source"]["worker_id"], (*ready_json)["worker_id"]);
  EXPECT_EQ(ReadFile(out2), ReadFile(model));
  EXPECT_TRUE((*fan_out)->Terminate(absl::Seconds(20)).ok());
}

TEST_P(P2pPullTest, WorkerEndpointOverMutualTls) {
  auto certs = testing::MakeTestCerts(dir_.path());
  ASSERT_TRUE(certs.ok()) << certs.status();
  const std::string model = Model("m.safetensors", 4ull << 20, 10);
  Source src = Publish(model, "it/tls",
                       {"--worker-tls-cert", certs->server_cert, "--worker-tls-key",
                        certs->server_key, "--worker-tls-client-ca", certs->ca});
  ASSERT_NE(src.process, nullptr);
  const std::string out = dir_.path() + "/out.safetensors";
  // Plaintext to a TLS endpoint: refused, nothing written.
  CommandResult plain = Pull("it/tls", out);
  EXPECT_EQ(plain.exit_code, 1);
  EXPECT_THAT(plain.err, HasSubstr(src.endpoint));
  EXPECT_FALSE(std::filesystem::exists(out));
  // TLS without a client certificate: refused by mutual TLS.
  CommandResult no_cert = Pull("it/tls", out, {"--worker-tls-ca", certs->ca});
  EXPECT_EQ(no_cert.exit_code, 1);
  CommandResult r = Pull("it/tls", out,
                         {"--worker-tls-ca", certs->ca, "--worker-tls-client-cert",
                          certs->client_cert, "--worker-tls-client-key", certs->client_key});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(ReadFile(out), ReadFile(model));
}

TEST_P(P2pPullTest, CentralizedRecordCarriesEverythingTheTargetNeeds) {
  const std::string model = Model("m.safetensors", 4ull << 20, 7);
  Source src = Publish(model, "it/centralized", {"--centralized"});
  ASSERT_NE(src.process, nullptr);
  auto record = client_->GetMetadata(src.mx_source_id, src.worker_id);
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_GT(record->worker().tensor_source().tensors_size(), 10);
  EXPECT_EQ(record->worker().nixl_metadata().rfind("FERRYTI1", 0), 0u);
  const std::string out = dir_.path() + "/out.safetensors";
  CommandResult r = Pull("it/centralized", out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(ReadFile(out), ReadFile(model));
}

TEST_P(P2pPullTest, IncompatibleAcceleratorIsNotChosen) {
  const std::string model = Model("m.safetensors", 4ull << 20, 8);
  Source gpu = Publish(model, "it/accelerator", {"--accelerator", "cuda"});
  ASSERT_NE(gpu.process, nullptr);
  const std::string out = dir_.path() + "/out.safetensors";
  CommandResult r = Pull("it/accelerator", out);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("1 READY worker(s) of this identity, none with rank 0 and a "
                               "compatible accelerator"));
  EXPECT_FALSE(std::filesystem::exists(out));
}

INSTANTIATE_TEST_SUITE_P(Transports, P2pPullTest, ::testing::Values("shm", "tcp", "ucx"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace ferry
