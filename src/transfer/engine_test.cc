// The transfer engine end to end over the TCP and shm transports: two engines in this process,
// and a source engine in a forked child process (killed mid-transfer in one test); kAuto's
// choice of transport and its fallback.
#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "cuda/driver.h"
#include "ferry/transfer.h"
#include "ferry/v1/transfer.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transfer/transfer_test_util.h"

namespace ferry {
namespace {

using ::ferry::testing::ChildSource;
using ::ferry::testing::FillPattern;
using ::ferry::testing::FirstMismatch;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;

std::string Msg(const Status& s) { return std::string(s.message()); }

TransferEngineOptions TcpOptions(std::string name, int streams = 4,
                                 uint64_t chunk_bytes = 8 << 20) {
  TransferEngineOptions o;
  o.chunk_bytes = chunk_bytes;
  o.name = std::move(name);
  o.enable_shm = false;
  o.enable_ucx = false;
  o.tcp_listen = "127.0.0.1:0";
  o.tcp_streams = streams;
  return o;
}

// shm and TCP (no UCX): kAuto picks shm for a source on this host.
TransferEngineOptions ShmOptions(std::string name, uint64_t chunk_bytes = 8 << 20) {
  TransferEngineOptions o = TcpOptions(std::move(name), 2, chunk_bytes);
  o.enable_shm = true;
  return o;
}

std::unique_ptr<TransferEngine> MustCreate(TransferEngineOptions o) {
  auto engine = TransferEngine::Create(std::move(o));
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

TEST(TransportKindTest, ParseAndName) {
  EXPECT_EQ(*ParseTransportKind("auto"), TransportKind::kAuto);
  EXPECT_EQ(*ParseTransportKind("ucx"), TransportKind::kUcx);
  EXPECT_EQ(*ParseTransportKind("tcp"), TransportKind::kTcp);
  EXPECT_EQ(*ParseTransportKind("shm"), TransportKind::kShm);
  auto bad = ParseTransportKind("rdma");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(bad.status()), HasSubstr("valid: auto, ucx, tcp, shm"));
  EXPECT_EQ(TransportKindName(TransportKind::kTcp), "tcp");
  EXPECT_EQ(TransportKindName(TransportKind::kShm), "shm");
  EXPECT_EQ(TransportKindName(TransportKind::kCudaIpc), "cuda_ipc");
  EXPECT_EQ(*ParseTransportKind("cuda_ipc"), TransportKind::kCudaIpc);
}

// CUDA IPC starts only where a driver and a device exist; without one it is absent from an
// engine asked for auto, and asking for it alone is a clear error naming the driver.
TEST(CudaIpcEngineTest, PresentExactlyWhereADriverWorks) {
  TransferEngineOptions o;
  auto engine = TransferEngine::Create(o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const auto kinds = (*engine)->transports();
  const bool has_ipc =
      std::find(kinds.begin(), kinds.end(), TransportKind::kCudaIpc) != kinds.end();
  auto driver = ferry::internal::cuda::Driver::Default();
  if (driver.ok() && (*driver)->device_count() > 0) {
    EXPECT_TRUE(has_ipc);
    EXPECT_EQ(kinds.front(), TransportKind::kCudaIpc);
    return;
  }
  EXPECT_FALSE(has_ipc);
  // Device memory needs the driver; host memory does not.
  auto device = (*engine)->AllocateRegion(4096, {.kind = MemoryKind::kCuda});
  ASSERT_EQ(device.status().code(), absl::StatusCode::kFailedPrecondition) << device.status();
  EXPECT_THAT(device.status().message(),
              ::testing::AnyOf(HasSubstr("could not be loaded"), HasSubstr("built without CUDA")));
  EXPECT_TRUE((*engine)->AllocateRegion(4096).ok());
  o.enable_shm = o.enable_ucx = o.enable_tcp = false;
  auto alone = TransferEngine::Create(o);
  ASSERT_EQ(alone.status().code(), absl::StatusCode::kFailedPrecondition) << alone.status();
  EXPECT_THAT(alone.status().message(), HasSubstr("CUDA IPC was asked for but cannot start"));
  EXPECT_THAT(alone.status().message(),
              ::testing::AnyOf(HasSubstr("could not be loaded"), HasSubstr("built without CUDA")));
}

TEST(OptionsTest, ValidateNamesTheField) {
  TransferEngineOptions o;
  EXPECT_TRUE(o.Validate().ok());
  auto check = [](TransferEngineOptions o, const std::string& field) {
    Status s = o.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(Msg(s), HasSubstr(field));
  };
  o.name = "rank \xff";
  check(o, "name is not valid UTF-8");
  o = {};
  o.tcp_streams = 0;
  check(o, "tcp_streams=0");
  o = {};
  o.tcp_streams = 65;
  check(o, "tcp_streams=65");
  o = {};
  o.chunk_bytes = 1000;
  check(o, "chunk_bytes=1000");
  o = {};
  o.max_inflight = 2000;
  check(o, "max_inflight=2000");
  o = {};
  o.tcp_socket_buffer = -1;
  check(o, "tcp_socket_buffer=-1");
  o = {};
  o.tcp_listen = "nohost";
  check(o, "tcp_listen=\"nohost\"");
  o = {};
  o.shm_copy_threads = 0;
  check(o, "shm_copy_threads=0");
  o = {};
  o.shm_copy_threads = 17;
  check(o, "shm_copy_threads=17");
  o = {};
  o.staging_slots = 1;
  check(o, "staging_slots=1");
  o = {};
  o.staging_slot_bytes = 1 << 30;
  check(o, "staging_slot_bytes=1073741824");
  o = {};
  o.enable_tcp = o.enable_ucx = o.enable_cuda_ipc = false;
  EXPECT_TRUE(o.Validate().ok());  // shm alone is enough
  o.enable_shm = false;
  check(o, "enable_shm, enable_ucx, enable_tcp and enable_cuda_ipc are all false");
  auto engine = TransferEngine::Create(o);
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EngineTest, ExportBlobDescribesEngineRegionsAndTcp) {
  auto engine = MustCreate(TcpOptions("publish rank 0"));
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->transports(), std::vector<TransportKind>{TransportKind::kTcp});
  auto r0 = engine->AllocateRegion(1 << 20);
  ASSERT_TRUE(r0.ok()) << r0.status();
  std::vector<char> mine(4096);
  auto r1 = engine->RegisterRegion(mine.data(), mine.size());
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ((*r0)->id(), 0u);
  EXPECT_EQ((*r1)->id(), 1u);
  ferry::v1::TransferBlob blob;
  ASSERT_TRUE(blob.ParseFromString(engine->ExportBlob()));
  EXPECT_EQ(blob.version(), 1u);
  EXPECT_THAT(blob.engine_id(), MatchesRegex("[0-9a-f]{16}"));
  EXPECT_EQ(blob.name(), "publish rank 0");
  EXPECT_FALSE(blob.hostname().empty());
  EXPECT_FALSE(blob.boot_id().empty());
  ASSERT_EQ(blob.regions_size(), 2);
  EXPECT_EQ(blob.regions(0).size(), 1u << 20);
  EXPECT_EQ(blob.regions(1).size(), 4096u);
  EXPECT_EQ(blob.regions(1).base_address(), reinterpret_cast<uint64_t>(mine.data()));
  EXPECT_EQ(blob.tcp().host(), "127.0.0.1");
  EXPECT_NE(blob.tcp().port(), 0u);
  EXPECT_EQ(blob.tcp().secret().size(), 32u);
  EXPECT_FALSE(blob.has_ucx());
  EXPECT_FALSE(blob.has_shm());
  r0->reset();
  ASSERT_TRUE(blob.ParseFromString(engine->ExportBlob()));
  ASSERT_EQ(blob.regions_size(), 1);
  EXPECT_EQ(blob.regions(0).id(), 1u);
  EXPECT_EQ(engine->AllocateRegion(0).status().code(), absl::StatusCode::kInvalidArgument);
}

// Without an RDMA device UCX is started only when asked for by name (ucx_without_rdma): an
// engine with default options listens on its TCP data port and nothing else.
TEST(EngineTest, NoUcxListenerWithoutRdmaUnlessAskedFor) {
  TransferEngineOptions o;
  o.name = "defaults";
  o.tcp_listen = "127.0.0.1:0";
  if (internal::UcxRdmaAvailable(o)) GTEST_SKIP() << "this host has an RDMA device";
  const std::set<uint16_t> before = ferry::testing::ListeningTcpPorts();
  auto engine = MustCreate(o);
  ASSERT_NE(engine, nullptr);
  EXPECT_THAT(engine->transports(),
              ::testing::ElementsAre(TransportKind::kShm, TransportKind::kTcp));
  ferry::v1::TransferBlob blob;
  ASSERT_TRUE(blob.ParseFromString(engine->ExportBlob()));
  EXPECT_FALSE(blob.has_ucx());
  std::set<uint16_t> expected = before;
  expected.insert(static_cast<uint16_t>(blob.tcp().port()));
  EXPECT_EQ(ferry::testing::ListeningTcpPorts(), expected);

  o.enable_shm = o.enable_tcp = false;
  auto refused = TransferEngine::Create(o);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Msg(refused.status()), HasSubstr("no RDMA device"));
  o.ucx_without_rdma = true;
  auto ucx = MustCreate(o);
  ASSERT_NE(ucx, nullptr);
  EXPECT_THAT(ucx->transports(), ::testing::ElementsAre(TransportKind::kUcx));
}

// A device region over Debian's UCX (no CUDA memory type): auto passes UCX over, names why, and
// reads over TCP, which the source stages. The source's region is host memory here (no GPU);
// the blob says device memory, which is all the target's choice sees.
TEST(TransportChoiceTest, DeviceRegionOverUcxWithoutCudaFallsToTcpAndSaysWhy) {
  TransferEngineOptions o = TcpOptions("source");
  o.enable_ucx = o.ucx_without_rdma = true;
  o.ucx_net_devices = "lo";
  auto source = MustCreate(o);
  o.name = "target";
  auto target = MustCreate(o);
  ASSERT_NE(source, nullptr);
  ASSERT_NE(target, nullptr);
  std::vector<char> memory(1 << 20, 'x');
  auto region = source->RegisterRegion(memory.data(), memory.size());
  ASSERT_TRUE(region.ok()) << region.status();
  ferry::v1::TransferBlob blob;
  ASSERT_TRUE(blob.ParseFromString(source->ExportBlob()));
  ASSERT_TRUE(blob.has_ucx());
  blob.mutable_regions(0)->set_kind(ferry::v1::MEMORY_KIND_CUDA);
  auto peer = target->Connect(blob.SerializeAsString());
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_EQ((*peer)->transport(), TransportKind::kTcp);
  EXPECT_THAT((*peer)->choice(),
              HasSubstr("auto chose tcp (ucx: region 0 is device memory, which ferry reads over "
                        "UCX only with GPUDirect RDMA, and the peer does not serve it so (here: "
                        "the UCX loaded here has no CUDA support)"));
  std::vector<char> dst(memory.size());
  ASSERT_TRUE((*peer)->Read({ReadOp{0, 0, dst.data(), dst.size()}}, absl::Seconds(30)).ok());
  EXPECT_EQ(dst, memory);
  EXPECT_EQ((*peer)->path(), "tcp+staged");  // the source staged its device memory
  // Asked for by name, UCX refuses a blob whose every region it cannot serve.
  auto ucx = target->Connect(blob.SerializeAsString(), TransportKind::kUcx);
  ASSERT_EQ(ucx.status().code(), absl::StatusCode::kFailedPrecondition) << ucx.status();
  EXPECT_THAT(ucx.status().message(), HasSubstr("over ucx, which serves none of its regions"));
}

// Two engines in this process.
class EnginePairTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    source_ = MustCreate(TcpOptions("source", GetParam(), chunk_bytes_));
    target_ = MustCreate(TcpOptions("target", GetParam(), chunk_bytes_));
    ASSERT_NE(source_, nullptr);
    ASSERT_NE(target_, nullptr);
    auto region = source_->AllocateRegion(kSize);
    ASSERT_TRUE(region.ok()) << region.status();
    region_ = std::move(*region);
    FillPattern(region_->data(), kSize);
    auto peer = target_->Connect(source_->ExportBlob());
    ASSERT_TRUE(peer.ok()) << peer.status();
    peer_ = std::move(*peer);
  }

  static constexpr uint64_t kSize = 24 << 20;
  uint64_t chunk_bytes_ = 8 << 20;
  std::unique_ptr<TransferEngine> source_;
  std::unique_ptr<TransferEngine> target_;
  std::unique_ptr<Region> region_;
  std::unique_ptr<Peer> peer_;
};

TEST_P(EnginePairTest, ExactBytesManyOps) {
  EXPECT_EQ(peer_->transport(), TransportKind::kTcp);
  EXPECT_THAT(peer_->description(),
              MatchesRegex("source \\([0-9a-f]{16}\\) at 127\\.0\\.0\\.1:[0-9]+ over tcp"));
  auto dst = target_->AllocateRegion(kSize + (1 << 20));
  ASSERT_TRUE(dst.ok());
  char* base = static_cast<char*>((*dst)->data());
  std::mt19937_64 rng(GetParam());
  std::vector<ReadOp> ops;
  uint64_t cursor = 0;
  // Unaligned offsets and lengths, zero-length ops, ops longer than a chunk (8 MiB default).
  ops.push_back(ReadOp{0, 0, nullptr, 0});
  ops.push_back(ReadOp{0, 1, base + cursor, (8 << 20) + 3});
  cursor += (8 << 20) + 3;
  ops.push_back(ReadOp{0, kSize, nullptr, 0});
  for (int i = 0; i < 300; ++i) {
    uint64_t len = rng() % (40 << 10);
    uint64_t off = rng() % (kSize - len);
    ops.push_back(ReadOp{0, off, len ? base + cursor : nullptr, len});
    cursor += len;
  }
  ops.push_back(ReadOp{0, 0, base + cursor, kSize - (20 << 20)});
  std::atomic<uint64_t> landed{0};
  uint64_t progress_total = 0;
  uint64_t progress_done = 0;
  ReadOptions options;
  options.timeout = absl::Seconds(60);
  options.on_piece = [&](const ReadOp& piece, size_t) { landed += piece.length; };
  options.on_progress = [&](uint64_t done, uint64_t total) {
    progress_done = done;  // the last call comes after the read, on this thread
    progress_total = total;
  };
  Status s = peer_->Read(ops, options);
  ASSERT_TRUE(s.ok()) << s;
  uint64_t total = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    total += ops[i].length;
    ASSERT_EQ(FirstMismatch(ops[i].local, ops[i].length, ops[i].remote_offset), -1) << i;
  }
  EXPECT_EQ(landed.load(), total);
  EXPECT_EQ(progress_total, total);
  EXPECT_EQ(progress_done, total);
}

TEST_P(EnginePairTest, TenThousandSmallOps) {
  std::vector<char> dst(10000 * 100);
  std::vector<ReadOp> ops;
  for (uint64_t i = 0; i < 10000; ++i) {
    ops.push_back(ReadOp{0, (i * 104729) % (kSize - 100), dst.data() + i * 100, 100});
  }
  ASSERT_TRUE(peer_->Read(ops, absl::Seconds(60)).ok());
  for (size_t i = 0; i < ops.size(); ++i) {
    ASSERT_EQ(FirstMismatch(ops[i].local, 100, ops[i].remote_offset), -1) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Streams, EnginePairTest, ::testing::Values(1, 4));

// Small chunks, so that cancellation and deadlines take effect between chunks of one read.
class EngineErrorsTest : public EnginePairTest {
 protected:
  EngineErrorsTest() { chunk_bytes_ = 256 << 10; }
};
INSTANTIATE_TEST_SUITE_P(FourStreams, EngineErrorsTest, ::testing::Values(4));

TEST_P(EngineErrorsTest, OutOfRangeOpIsRejectedNamingTheIndex) {
  std::vector<char> dst(4096);
  std::vector<ReadOp> ops = {
      {0, 0, dst.data(), 10}, {0, 5, dst.data(), 10}, {0, kSize - 10, dst.data(), 11}};
  Status s = peer_->Read(ops, absl::Seconds(10));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("op 2 (region 0 [25165814, 25165825)) is out of range"));
  EXPECT_THAT(Msg(s), HasSubstr(peer_->description()));

  s = peer_->Read({{0, UINT64_MAX - 1, dst.data(), 4}}, absl::Seconds(10));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("op 0 (region 0 [18446744073709551614, +4)) is out of range"));
  s = peer_->Read({{7, 0, dst.data(), 4}}, absl::Seconds(10));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("op 0 (region 7 [0, 4)) names a region that"));
  s = peer_->Read({{0, 0, nullptr, 4}}, absl::Seconds(10));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("null local pointer"));
  // Validation failures leave the connection usable.
  ASSERT_TRUE(peer_->Read({{0, 100, dst.data(), 4096}}, absl::Seconds(10)).ok());
  EXPECT_EQ(FirstMismatch(dst.data(), 4096, 100), -1);
}

// A deadline that passed before any piece was requested leaves the connection usable.
TEST_P(EngineErrorsTest, DeadlineExceededBeforeAnyRequest) {
  auto dst = target_->AllocateRegion(kSize);
  ASSERT_TRUE(dst.ok());
  // 24 MiB cannot arrive within a microsecond.
  Status s = peer_->Read({{0, 0, (*dst)->data(), kSize}}, absl::Microseconds(1));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(Msg(s), HasSubstr("passed its deadline (1us)"));
  EXPECT_THAT(Msg(s), HasSubstr(peer_->description()));
  EXPECT_THAT(Msg(s), HasSubstr("first unfinished range: region 0 [0, 262144)"));
  ASSERT_TRUE(peer_->Read({{0, 7, (*dst)->data(), 1000}}, absl::Seconds(10)).ok());
  EXPECT_EQ(FirstMismatch((*dst)->data(), 1000, 7), -1);
}

// Cancelled once the first piece landed, while others are in flight: the connection is
// mid-protocol afterwards and says so.
TEST_P(EngineErrorsTest, CancelWhilePiecesAreInFlightThenBroken) {
  auto dst = target_->AllocateRegion(kSize);
  ASSERT_TRUE(dst.ok());
  std::atomic<bool> cancel{false};
  ReadOptions options;
  options.cancel = &cancel;
  options.on_piece = [&](const ReadOp&, size_t) { cancel = true; };
  Status s = peer_->Read({{0, 0, (*dst)->data(), kSize}}, options);
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_THAT(Msg(s), HasSubstr("cancelled; first unfinished range: region 0 ["));
  s = peer_->Read({{0, 0, (*dst)->data(), 10}}, absl::Seconds(10));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Msg(s), HasSubstr("broken by an earlier failure; reconnect"));
}

TEST_P(EngineErrorsTest, MalformedBlob) {
  for (std::string blob : {std::string("not a blob \xff\xff"), std::string()}) {
    auto peer = target_->Connect(blob);
    EXPECT_EQ(peer.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Msg(peer.status()), HasSubstr("malformed transfer blob"));
  }
  ferry::v1::TransferBlob blob;
  ASSERT_TRUE(blob.ParseFromString(source_->ExportBlob()));
  blob.set_version(2);
  auto peer = target_->Connect(blob.SerializeAsString());
  EXPECT_EQ(peer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(peer.status()), HasSubstr("version 2"));
}

TEST_P(EngineErrorsTest, TransportMismatch) {
  ferry::v1::TransferBlob blob;
  ASSERT_TRUE(blob.ParseFromString(source_->ExportBlob()));
  blob.clear_tcp();
  blob.mutable_ucx()->set_worker_address("x");
  auto peer = target_->Connect(blob.SerializeAsString());
  EXPECT_EQ(peer.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Msg(peer.status()), HasSubstr("this engine offers [tcp], the peer offers [ucx]"));
  peer = target_->Connect(source_->ExportBlob(), TransportKind::kUcx);
  EXPECT_EQ(peer.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Msg(peer.status()), HasSubstr("over ucx"));
}

TEST_P(EngineErrorsTest, RegionRemovedWhileAPeerReads) {
  auto dst = target_->AllocateRegion(kSize);
  ASSERT_TRUE(dst.ok());
  std::atomic<bool> first_done{false};
  Status last;
  std::thread reader([&] {
    for (;;) {
      last = peer_->Read({{0, 0, (*dst)->data(), kSize}}, absl::Seconds(30));
      first_done = true;
      if (!last.ok()) return;
    }
  });
  while (!first_done.load()) std::this_thread::yield();
  region_.reset();  // deregisters and unmaps: a late send would crash this process
  reader.join();
  EXPECT_TRUE(last.code() == absl::StatusCode::kNotFound ||
              last.code() == absl::StatusCode::kUnavailable)
      << last;
  EXPECT_THAT(Msg(last), HasSubstr(peer_->description()));
  // A fresh connection sees the region gone.
  auto blob = source_->ExportBlob();
  ferry::v1::TransferBlob parsed;
  ASSERT_TRUE(parsed.ParseFromString(blob));
  EXPECT_EQ(parsed.regions_size(), 0);
}

TEST_P(EngineErrorsTest, StopIsIdempotentWithConnectedPeers) {
  std::vector<char> dst(1000);
  ASSERT_TRUE(peer_->Read({{0, 0, dst.data(), dst.size()}}, absl::Seconds(10)).ok());
  source_->Stop();
  source_->Stop();
  Status s = peer_->Read({{0, 0, dst.data(), dst.size()}}, absl::Seconds(10));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Msg(s), HasSubstr(peer_->description()));
  EXPECT_THAT(Msg(s), HasSubstr("region 0 [0, 1000)"));
  target_->Stop();
  target_.reset();  // the peer outlives its engine
  peer_->Disconnect();
  peer_->Disconnect();
  s = peer_->Read({{0, 0, dst.data(), 10}}, absl::Seconds(10));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Msg(s), HasSubstr("disconnected"));
}

// The source is a child process.
// A target serving while it pulls: the TCP server serves only the ranges the gate accepts; a
// read of any other range fails naming it, and the gate can be lifted.
TEST(LimitServingTest, TcpServesOnlyAllowedRangesUntilLifted) {
  auto source = MustCreate(TcpOptions("source"));
  auto target = MustCreate(TcpOptions("target"));
  ASSERT_NE(source, nullptr);
  ASSERT_NE(target, nullptr);
  constexpr uint64_t kBytes = 1 << 20;
  auto region = source->AllocateRegion(kBytes);
  ASSERT_TRUE(region.ok());
  FillPattern((*region)->data(), kBytes);
  std::atomic<uint64_t> verified_end{kBytes / 2};
  ASSERT_TRUE(source
                  ->LimitServing(**region,
                                 [&](uint64_t offset, uint64_t length) {
                                   return offset + length <= verified_end.load();
                                 })
                  .ok());
  std::vector<char> dst(kBytes);
  {
    auto peer = target->Connect(source->ExportBlob());
    ASSERT_TRUE(peer.ok()) << peer.status();
    EXPECT_TRUE((*peer)
                    ->Read({ReadOp{(*region)->id(), 0, dst.data(), kBytes / 2}}, absl::Seconds(10))
                    .ok());
    EXPECT_EQ(FirstMismatch(dst.data(), kBytes / 2, 0), -1);
    const Status refused = (*peer)->Read(
        {ReadOp{(*region)->id(), kBytes / 2, dst.data() + kBytes / 2, 4096}}, absl::Seconds(10));
    EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable) << refused;
    EXPECT_THAT(refused.message(), HasSubstr("does not serve region"));
    EXPECT_THAT(refused.message(), HasSubstr("not verified"));
  }
  ASSERT_TRUE(source->LimitServing(**region, nullptr).ok());
  auto again = target->Connect(source->ExportBlob());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(
      (*again)->Read({ReadOp{(*region)->id(), 0, dst.data(), kBytes}}, absl::Seconds(10)).ok());
  EXPECT_EQ(FirstMismatch(dst.data(), kBytes, 0), -1);
}

TEST(LimitServingTest, RefusedWhereReadsAreOneSided) {
  auto engine = MustCreate(ShmOptions("shm source"));
  ASSERT_NE(engine, nullptr);
  auto region = engine->AllocateRegion(4096);
  ASSERT_TRUE(region.ok());
  const Status s = engine->LimitServing(**region, [](uint64_t, uint64_t) { return false; });
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("one-sided"));
}

TEST(UploadCapTest, RefusedWithOneSidedTransports) {
  TransferEngineOptions o = ShmOptions("capped");
  o.max_upload_rate = 1 << 20;
  EXPECT_THAT(o.Validate().message(), HasSubstr("max_upload_rate"));
  o.enable_shm = false;
  EXPECT_THAT(o.Validate().message(), HasSubstr("enable_cuda_ipc false"));
  o.enable_cuda_ipc = false;
  EXPECT_TRUE(o.Validate().ok());
}

TEST(ChildSourceTest, ReadsFromAnotherProcess) {
  constexpr uint64_t kSize = 32 << 20;
  auto child = ChildSource::Start(kSize, "child rank 3");
  ASSERT_NE(child, nullptr);
  auto target = MustCreate(TcpOptions("target", 4));
  auto dst = target->AllocateRegion(kSize);
  ASSERT_TRUE(dst.ok());
  auto peer = target->Connect(child->blob());
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_THAT((*peer)->description(), HasSubstr("child rank 3 ("));
  ASSERT_TRUE((*peer)->Read({{0, 3, (*dst)->data(), kSize - 3}}, absl::Seconds(60)).ok());
  EXPECT_EQ(FirstMismatch((*dst)->data(), kSize - 3, 3), -1);
}

TEST(ChildSourceTest, PeerKilledMidTransfer) {
  constexpr uint64_t kSize = 256 << 20;
  auto child = ChildSource::Start(kSize, "doomed source");
  ASSERT_NE(child, nullptr);
  TransferEngineOptions o = TcpOptions("target", 2);
  o.chunk_bytes = 1 << 20;
  auto target = MustCreate(o);
  auto dst = target->AllocateRegion(kSize);
  ASSERT_TRUE(dst.ok());
  auto peer = target->Connect(child->blob());
  ASSERT_TRUE(peer.ok()) << peer.status();
  // Keep a large read in flight until the kill lands in the middle of one.
  std::atomic<bool> reading{false};
  Status s;
  absl::Time failed_at;
  std::thread reader([&] {
    ReadOptions options;
    options.timeout = absl::Seconds(60);
    options.on_piece = [&](const ReadOp&, size_t) { reading = true; };
    for (int i = 0; i < 1000; ++i) {
      s = (*peer)->Read({{0, 0, (*dst)->data(), kSize}}, options);
      if (!s.ok()) break;
    }
    failed_at = absl::Now();
  });
  while (!reading.load()) std::this_thread::yield();
  const absl::Time killed_at = absl::Now();
  child->Kill();
  reader.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(Msg(s), HasSubstr((*peer)->description()));
  EXPECT_THAT(Msg(s), HasSubstr("first unfinished range: region 0 ["));
  EXPECT_LT(failed_at - killed_at, absl::Seconds(5));
}

// One read over two sources of the same bytes: the first is killed once a few pieces landed,
// and its unfinished pieces are read from the second.
TEST(ChildSourceTest, ReadFromPeersFinishesFromTheSurvivorWhenOneSourceDies) {
  constexpr uint64_t kSize = 64 << 20;
  auto doomed = ChildSource::Start(kSize, "doomed source");
  auto survivor = ChildSource::Start(kSize, "surviving source");
  ASSERT_NE(doomed, nullptr);
  ASSERT_NE(survivor, nullptr);
  TransferEngineOptions o = TcpOptions("target", 2);
  o.enable_shm = false;  // TCP to both: a killed TCP source fails its reads at once
  o.chunk_bytes = 1 << 20;
  auto target = MustCreate(o);
  auto dst = target->AllocateRegion(kSize);
  ASSERT_TRUE(dst.ok());
  auto a = target->Connect(doomed->blob(), TransportKind::kTcp);
  auto b = target->Connect(survivor->blob(), TransportKind::kTcp);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  std::atomic<int> pieces{0};
  ReadOptions options;
  options.timeout = absl::Seconds(60);
  options.on_piece = [&](const ReadOp&, size_t) {
    if (++pieces == 4) doomed->Kill();
  };
  Peer* peers[] = {a->get(), b->get()};
  const Status s = ReadFromPeers(peers, {{0, 0, (*dst)->data(), kSize}}, options);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(pieces.load(), 64);  // every piece reported once
  EXPECT_EQ(FirstMismatch((*dst)->data(), kSize, 0), -1);
}

// ---- shm ----

TEST(ShmEngineTest, BlobMarksWhichRegionsShmServes) {
  auto engine = MustCreate(ShmOptions("publish rank 0"));
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->transports(),
            (std::vector<TransportKind>{TransportKind::kShm, TransportKind::kTcp}));
  auto allocated = engine->AllocateRegion(1 << 20);
  ASSERT_TRUE(allocated.ok()) << allocated.status();
  std::vector<char> mine(4096);
  auto registered = engine->RegisterRegion(mine.data(), mine.size());
  ASSERT_TRUE(registered.ok()) << registered.status();
  ferry::v1::TransferBlob blob;
  ASSERT_TRUE(blob.ParseFromString(engine->ExportBlob()));
  ASSERT_EQ(blob.regions_size(), 2);
  EXPECT_TRUE(blob.regions(0).shm_served());
  EXPECT_FALSE(blob.regions(1).shm_served());
  EXPECT_THAT(blob.shm().socket_name(), MatchesRegex("ferry-shm-[0-9]+-[0-9a-f]{16}"));
  EXPECT_EQ(blob.shm().secret().size(), 32u);
  EXPECT_TRUE(blob.has_tcp());
}

TEST(ShmEngineTest, ExplicitShmToABlobWithNoShmServedRegionIsRefusedAtConnect) {
  auto source = MustCreate(ShmOptions("in place"));
  auto target = MustCreate(ShmOptions("target"));
  ASSERT_NE(source, nullptr);
  ASSERT_NE(target, nullptr);
  std::vector<char> mine(4096);
  auto registered = source->RegisterRegion(mine.data(), mine.size());
  ASSERT_TRUE(registered.ok()) << registered.status();
  auto peer = target->Connect(source->ExportBlob(), TransportKind::kShm);
  ASSERT_EQ(peer.status().code(), absl::StatusCode::kFailedPrecondition) << peer.status();
  EXPECT_THAT(std::string(peer.status().message()),
              HasSubstr("over shm, which serves none of its regions: shm: the peer's shm does not "
                        "serve region 0 (memory registered in place"));
  EXPECT_TRUE(target->Connect(source->ExportBlob(), TransportKind::kTcp).ok());
  // auto still connects (over TCP here), and says why it passed shm over.
  auto fallback = target->Connect(source->ExportBlob(), TransportKind::kAuto);
  ASSERT_TRUE(fallback.ok()) << fallback.status();
  EXPECT_EQ((*fallback)->transport(), TransportKind::kTcp);
  EXPECT_THAT((*fallback)->choice(),
              HasSubstr("auto chose tcp (shm: the peer's shm does not serve region 0"));
}

// A source in another network namespace of this machine has our host name and boot id but
// cannot be reached over shm (abstract unix sockets are per namespace): auto must not pick shm
// (it used to, and the pull stalled until its stall timeout).
TEST(ShmEngineTest, AutoTreatsAnotherNetworkNamespaceAsAnotherHost) {
  auto source = MustCreate(ShmOptions("source"));
  auto target = MustCreate(ShmOptions("target"));
  ASSERT_NE(source, nullptr);
  ASSERT_NE(target, nullptr);
  auto region = source->AllocateRegion(1 << 20);
  ASSERT_TRUE(region.ok()) << region.status();
  ferry::v1::TransferBlob blob;
  ASSERT_TRUE(blob.ParseFromString(source->ExportBlob()));
  char ns[64] = {};
  ASSERT_GT(::readlink("/proc/self/ns/net", ns, sizeof(ns) - 1), 0);
  EXPECT_EQ(blob.net_namespace(), ns);

  auto same = target->Connect(blob.SerializeAsString(), TransportKind::kAuto);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ((*same)->transport(), TransportKind::kShm);

  blob.set_net_namespace("net:[1]");
  auto other = target->Connect(blob.SerializeAsString(), TransportKind::kAuto);
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ((*other)->transport(), TransportKind::kTcp);
  // A blob from an older ferry without the field: host name and boot id decide, as before.
  blob.clear_net_namespace();
  auto old = target->Connect(blob.SerializeAsString(), TransportKind::kAuto);
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ((*old)->transport(), TransportKind::kShm);
}

TEST(ShmEngineTest, AutoPicksShmForASourceProcessOnThisHost) {
  constexpr uint64_t kSize = 24 << 20;
  auto child = ChildSource::Start(kSize, "child rank 1");  // shm and TCP, like the defaults
  ASSERT_NE(child, nullptr);
  auto target = MustCreate(ShmOptions("target", 1 << 20));
  ASSERT_NE(target, nullptr);
  auto peer = target->Connect(child->blob());
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_EQ((*peer)->transport(), TransportKind::kShm);
  EXPECT_THAT((*peer)->description(),
              MatchesRegex("child rank 1 \\([0-9a-f]{16}\\) at .+ over shm"));

  auto dst = target->AllocateRegion(kSize + (1 << 20));
  ASSERT_TRUE(dst.ok());
  char* base = static_cast<char*>((*dst)->data());
  std::mt19937_64 rng(7);
  std::vector<ReadOp> ops;
  uint64_t cursor = 0;
  auto add = [&](uint64_t off, uint64_t len) {
    ops.push_back(ReadOp{0, off, len ? base + cursor : nullptr, len});
    cursor += len;
  };
  add(0, 0);
  add(1, (8 << 20) + 3);  // unaligned, spans 9 chunks of 1 MiB
  for (int i = 0; i < 300; ++i) {
    const uint64_t len = rng() % (40 << 10);
    add(rng() % (kSize - len), len);
  }
  add(kSize - (2 << 20) - 1, (2 << 20) + 1);
  std::atomic<uint64_t> landed{0};
  ReadOptions options;
  options.timeout = absl::Seconds(60);
  options.on_piece = [&](const ReadOp& piece, size_t) { landed += piece.length; };
  ASSERT_TRUE((*peer)->Read(ops, options).ok());
  uint64_t total = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    total += ops[i].length;
    ASSERT_EQ(FirstMismatch(ops[i].local, ops[i].length, ops[i].remote_offset), -1) << i;
  }
  EXPECT_EQ(landed.load(), total);

  std::vector<char> small(10000 * 100);
  std::vector<ReadOp> many;
  for (uint64_t i = 0; i < 10000; ++i) {
    many.push_back(ReadOp{0, (i * 104729) % (kSize - 100), small.data() + i * 100, 100});
  }
  ASSERT_TRUE((*peer)->Read(many, absl::Seconds(60)).ok());
  for (size_t i = 0; i < many.size(); ++i) {
    ASSERT_EQ(FirstMismatch(many[i].local, 100, many[i].remote_offset), -1) << i;
  }
}

TEST(ShmEngineTest, AutoFallsBackToTcpWhenTheShmSocketIsUnreachable) {
  auto source = MustCreate(ShmOptions("source"));
  auto target = MustCreate(ShmOptions("target"));
  ASSERT_NE(source, nullptr);
  ASSERT_NE(target, nullptr);
  auto region = source->AllocateRegion(1 << 20);
  ASSERT_TRUE(region.ok());
  FillPattern((*region)->data(), 1 << 20);
  ferry::v1::TransferBlob blob;
  ASSERT_TRUE(blob.ParseFromString(source->ExportBlob()));
  // What a source in another network namespace looks like: nobody listens on the name here.
  blob.mutable_shm()->set_socket_name("ferry-shm-in-another-netns");
  auto peer = target->Connect(blob.SerializeAsString());
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_EQ((*peer)->transport(), TransportKind::kTcp);
  std::vector<char> dst(4096);
  ASSERT_TRUE((*peer)->Read({{0, 10, dst.data(), dst.size()}}, absl::Seconds(10)).ok());
  EXPECT_EQ(FirstMismatch(dst.data(), dst.size(), 10), -1);
  // An explicit transport never falls back.
  auto shm = target->Connect(blob.SerializeAsString(), TransportKind::kShm);
  EXPECT_EQ(shm.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Msg(shm.status()),
              HasSubstr("@ferry-shm-in-another-netns failed: Connection refused"));
  // A source on another host is never tried over shm.
  ASSERT_TRUE(blob.ParseFromString(source->ExportBlob()));
  blob.set_boot_id("another-boot");
  peer = target->Connect(blob.SerializeAsString());
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_EQ((*peer)->transport(), TransportKind::kTcp);
}

TEST(ShmEngineTest, CallerMemoryIsNotOfferedOverShm) {
  auto source = MustCreate(ShmOptions("source"));
  auto target = MustCreate(ShmOptions("target"));
  ASSERT_NE(source, nullptr);
  ASSERT_NE(target, nullptr);
  auto allocated = source->AllocateRegion(1 << 20);
  ASSERT_TRUE(allocated.ok());
  std::vector<char> mine(8192);
  FillPattern(mine.data(), mine.size());
  auto registered = source->RegisterRegion(mine.data(), mine.size());
  ASSERT_TRUE(registered.ok());
  auto peer = target->Connect(source->ExportBlob());
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_EQ((*peer)->transport(), TransportKind::kTcp);
  std::vector<char> dst(8192);
  ASSERT_TRUE((*peer)->Read({{1, 0, dst.data(), dst.size()}}, absl::Seconds(10)).ok());
  EXPECT_EQ(FirstMismatch(dst.data(), dst.size(), 0), -1);
  // Forcing shm connects, but the caller-memory region is refused by name.
  auto shm = target->Connect(source->ExportBlob(), TransportKind::kShm);
  ASSERT_TRUE(shm.ok()) << shm.status();
  Status s = (*shm)->Read({{1, 0, dst.data(), 16}}, absl::Seconds(10));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(s), HasSubstr("the source has no region 1"));
  // Once only engine-allocated regions remain, kAuto picks shm.
  registered->reset();
  peer = target->Connect(source->ExportBlob());
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_EQ((*peer)->transport(), TransportKind::kShm);
}

// Two shm engines in this process, with small chunks so that cancellation and deadlines land
// between chunks.
class ShmEnginePairTest : public ::testing::Test {
 protected:
  void SetUp() override {
    source_ = MustCreate(ShmOptions("source", 256 << 10));
    target_ = MustCreate(ShmOptions("target", 256 << 10));
    ASSERT_NE(source_, nullptr);
    ASSERT_NE(target_, nullptr);
    auto region = source_->AllocateRegion(kSize);
    ASSERT_TRUE(region.ok()) << region.status();
    region_ = std::move(*region);
    FillPattern(region_->data(), kSize);
    auto peer = target_->Connect(source_->ExportBlob());
    ASSERT_TRUE(peer.ok()) << peer.status();
    peer_ = std::move(*peer);
    ASSERT_EQ(peer_->transport(), TransportKind::kShm);
  }

  static constexpr uint64_t kSize = 24 << 20;
  std::unique_ptr<TransferEngine> source_;
  std::unique_ptr<TransferEngine> target_;
  std::unique_ptr<Region> region_;
  std::unique_ptr<Peer> peer_;
};

TEST_F(ShmEnginePairTest, DeadlineAndCancelLeaveTheConnectionUsable) {
  auto dst = target_->AllocateRegion(kSize);
  ASSERT_TRUE(dst.ok());
  std::vector<ReadOp> big;
  for (int i = 0; i < 16; ++i) big.push_back(ReadOp{0, 0, (*dst)->data(), kSize});
  Status s = peer_->Read(big, absl::Microseconds(1));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(Msg(s), HasSubstr("passed its deadline (1us)"));
  EXPECT_THAT(Msg(s), HasSubstr(peer_->description()));
  EXPECT_THAT(Msg(s), HasSubstr("first unfinished range: region 0 ["));

  std::atomic<bool> cancel{false};
  std::atomic<uint64_t> landed{0};
  ReadOptions options;
  options.cancel = &cancel;
  options.on_piece = [&](const ReadOp& piece, size_t) {
    landed += piece.length;
    cancel = true;
  };
  s = peer_->Read(big, options);
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(Msg(s), HasSubstr("cancelled; first unfinished range: region 0 ["));
  EXPECT_LT(landed.load(), 16 * kSize);

  ASSERT_TRUE(peer_->Read({{0, 5, (*dst)->data(), kSize - 5}}, absl::Seconds(30)).ok());
  EXPECT_EQ(FirstMismatch((*dst)->data(), kSize - 5, 5), -1);
}

TEST_F(ShmEnginePairTest, RegionRemovedIsRefusedFromTheNextRead) {
  std::vector<char> dst(4096);
  ASSERT_TRUE(peer_->Read({{0, 0, dst.data(), dst.size()}}, absl::Seconds(10)).ok());
  region_.reset();
  Status s = peer_->Read({{0, 0, dst.data(), dst.size()}}, absl::Seconds(10));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(s), HasSubstr(peer_->description()));
  EXPECT_THAT(Msg(s), HasSubstr("the source has no region 0 (removed"));
}

TEST_F(ShmEnginePairTest, StopWithConnectedPeers) {
  std::vector<char> dst(1000);
  ASSERT_TRUE(peer_->Read({{0, 0, dst.data(), dst.size()}}, absl::Seconds(10)).ok());
  source_->Stop();
  source_->Stop();
  Status s = peer_->Read({{0, 0, dst.data(), dst.size()}}, absl::Seconds(10));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Msg(s), HasSubstr(peer_->description()));
  EXPECT_THAT(Msg(s), HasSubstr("region 0 [0, 1000)"));
  target_->Stop();
  target_.reset();
  peer_->Disconnect();
  peer_->Disconnect();
  s = peer_->Read({{0, 0, dst.data(), 10}}, absl::Seconds(10));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace ferry
