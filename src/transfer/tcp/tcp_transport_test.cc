// The native TCP transport on real loopback sockets, driven through the Transport interface
// (no engine): exact bytes, chunking and streams, remote errors, the handshake, cancellation,
// deadlines, region removal and Stop().
#include <sys/mman.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "cuda/device_pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transfer/transfer_test_util.h"
#include "transfer/transport.h"

namespace ferry::internal {
namespace {

using ::ferry::testing::Buffer;
using ::ferry::testing::FillPattern;
using ::ferry::testing::FirstMismatch;
using ::ferry::testing::Running;
using ::testing::HasSubstr;

constexpr char kDesc[] = "test source (0123456789abcdef) at 127.0.0.1 over tcp";

TransferEngineOptions Options(int streams, uint64_t chunk_bytes = 64 << 10) {
  TransferEngineOptions o;
  o.enable_ucx = false;
  o.tcp_listen = "127.0.0.1:0";
  o.tcp_streams = streams;
  o.chunk_bytes = chunk_bytes;
  o.max_inflight = 4;
  return o;
}

class TcpTransportTest : public ::testing::Test {
 protected:
  // A source transport serving one pattern-filled region 0 of `bytes`, and a connection to it.
  void SetUpSource(uint64_t bytes, int streams, uint64_t chunk = 64 << 10) {
    source_region_ = std::make_unique<Buffer>(bytes);
    FillPattern(source_region_->data(), bytes);
    auto source = CreateTcpTransport(Options(streams, chunk), std::make_shared<cuda::DevicePool>());
    ASSERT_TRUE(source.ok()) << source.status();
    source_ = std::move(*source);
    ASSERT_TRUE(
        source_->AddRegion(0, source_region_->data(), bytes, MemoryKind::kHost, nullptr).ok());
    source_->Describe(&blob_);
    auto target = CreateTcpTransport(Options(streams, chunk), std::make_shared<cuda::DevicePool>());
    ASSERT_TRUE(target.ok()) << target.status();
    target_ = std::move(*target);
    auto conn = target_->Connect(blob_, kDesc);
    ASSERT_TRUE(conn.ok()) << conn.status();
    conn_ = std::move(*conn);
  }

  std::unique_ptr<Buffer> source_region_;
  std::unique_ptr<Transport> source_;
  std::unique_ptr<Transport> target_;
  ferry::v1::TransferBlob blob_;
  std::unique_ptr<PeerConnection> conn_;
};

TEST_F(TcpTransportTest, DescribeFillsHostPortAndSecret) {
  SetUpSource(4096, 1);
  EXPECT_EQ(blob_.tcp().host(), "127.0.0.1");
  EXPECT_NE(blob_.tcp().port(), 0u);
  EXPECT_EQ(blob_.tcp().secret().size(), 32u);
  ferry::v1::TransferBlob other;
  target_->Describe(&other);
  EXPECT_NE(other.tcp().secret(), blob_.tcp().secret());
}

TEST_F(TcpTransportTest, AdvertiseHostAndWildcardListen) {
  TransferEngineOptions o = Options(1);
  o.advertise_host = "data.example";
  auto t = CreateTcpTransport(o, std::make_shared<cuda::DevicePool>());
  ASSERT_TRUE(t.ok()) << t.status();
  ferry::v1::TransferBlob blob;
  (*t)->Describe(&blob);
  EXPECT_EQ(blob.tcp().host(), "data.example");

  o.advertise_host = "";
  o.tcp_listen = "0.0.0.0:0";
  t = CreateTcpTransport(o, std::make_shared<cuda::DevicePool>());
  ASSERT_TRUE(t.ok()) << t.status();
  blob.Clear();
  (*t)->Describe(&blob);
  char name[256] = {};
  ::gethostname(name, sizeof(name) - 1);
  EXPECT_EQ(blob.tcp().host(), name);
}

class TcpStreamsTest : public TcpTransportTest, public ::testing::WithParamInterface<int> {};

TEST_P(TcpStreamsTest, ExactBytesForUnalignedOpsAcrossChunks) {
  constexpr uint64_t kSize = 4 << 20;
  SetUpSource(kSize, GetParam());
  std::mt19937_64 rng(42);
  std::vector<ReadOp> ops;
  std::vector<std::vector<char>> dst;
  // Fixed edge cases: zero length, one byte at the end, exactly one chunk, chunk +- 1 across a
  // boundary, the whole region.
  std::vector<std::pair<uint64_t, uint64_t>> ranges = {{0, 0},
                                                       {kSize - 1, 1},
                                                       {0, 64 << 10},
                                                       {(64 << 10) - 1, (64 << 10) + 2},
                                                       {3, (192 << 10) + 5},
                                                       {0, kSize},
                                                       {kSize, 0}};
  for (int i = 0; i < 200; ++i) {
    uint64_t off = rng() % kSize;
    uint64_t len = rng() % std::min<uint64_t>(kSize - off + 1, 300 << 10);
    ranges.push_back({off, len});
  }
  dst.reserve(ranges.size());
  for (auto [off, len] : ranges) {
    dst.emplace_back(len + 1, '\xee');  // one guard byte past the end
    ops.push_back(ReadOp{0, off, len == 0 ? nullptr : dst.back().data(), len});
  }
  Running run;
  Status s = run.Read(*conn_, ops);
  ASSERT_TRUE(s.ok()) << s;
  uint64_t total = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    total += ops[i].length;
    EXPECT_EQ(FirstMismatch(dst[i].data(), ops[i].length, ops[i].remote_offset), -1) << "op " << i;
    EXPECT_EQ(dst[i][ops[i].length], '\xee') << "op " << i << " wrote past its end";
  }
  EXPECT_EQ(run.bytes_done.load(), total);
  // The connection stays usable.
  std::vector<char> again(1000);
  ASSERT_TRUE(run.Read(*conn_, {ReadOp{0, 12345, again.data(), again.size()}}).ok());
  EXPECT_EQ(FirstMismatch(again.data(), again.size(), 12345), -1);
}

INSTANTIATE_TEST_SUITE_P(Streams, TcpStreamsTest, ::testing::Values(1, 3, 8));

TEST_F(TcpTransportTest, TenThousandSmallOps) {
  constexpr uint64_t kSize = 1 << 20;
  SetUpSource(kSize, 4);
  std::vector<char> dst(10000 * 37);
  std::vector<ReadOp> ops;
  for (uint64_t i = 0; i < 10000; ++i) {
    ops.push_back(ReadOp{0, (i * 7919) % (kSize - 37), dst.data() + i * 37, 37});
  }
  Running run;
  ASSERT_TRUE(run.Read(*conn_, ops).ok());
  for (size_t i = 0; i < ops.size(); ++i) {
    ASSERT_EQ(FirstMismatch(dst.data() + i * 37, 37, ops[i].remote_offset), -1) << "op " << i;
  }
  EXPECT_EQ(run.bytes_done.load(), 370000u);
}

TEST_F(TcpTransportTest, WrongSecretIsRefused) {
  SetUpSource(4096, 2);
  ferry::v1::TransferBlob forged = blob_;
  std::string secret = forged.tcp().secret();
  secret[7] ^= 1;
  forged.mutable_tcp()->set_secret(secret);
  auto conn = target_->Connect(forged, kDesc);
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(conn.status().message()), HasSubstr(kDesc));
  EXPECT_THAT(std::string(conn.status().message()), HasSubstr("wrong secret"));

  forged.mutable_tcp()->set_secret("short");
  conn = target_->Connect(forged, kDesc);
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(TcpTransportTest, UnreachableNamesTheAddress) {
  SetUpSource(4096, 1);
  ferry::v1::TransferBlob blob = blob_;
  const uint32_t port = blob.tcp().port();
  source_->Stop();  // closes the listener: connecting is refused
  auto conn = target_->Connect(blob, kDesc);
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(conn.status().message()), HasSubstr("127.0.0.1:" + std::to_string(port)));
  EXPECT_THAT(std::string(conn.status().message()), HasSubstr("Connection refused"));
}

TEST_F(TcpTransportTest, RemoteErrorComesBackAndBreaksTheConnection) {
  SetUpSource(1 << 20, 1);
  std::vector<char> dst(100);
  Running run;
  // Region 9 does not exist at the source (the engine would have rejected it; the transport
  // must not trust that).
  Status s = run.Read(*conn_, {ReadOp{9, 0, dst.data(), 100}});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr(kDesc));
  EXPECT_THAT(std::string(s.message()), HasSubstr("region 9 [0, 100)"));
  s = run.Read(*conn_, {ReadOp{0, 0, dst.data(), 100}});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("broken by an earlier failure; reconnect"));

  auto conn = target_->Connect(blob_, kDesc);
  ASSERT_TRUE(conn.ok());
  s = run.Read(**conn, {ReadOp{0, (1 << 20) - 50, dst.data(), 100}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("region 0 [1048526, 1048626) is out of range"));
}

TEST_F(TcpTransportTest, CancelledBeforeTheFirstChunkCompletes) {
  SetUpSource(8 << 20, 2);
  Buffer dst(8 << 20);
  Running run;
  run.cancelled = true;
  Status s = run.Read(*conn_, {ReadOp{0, 0, dst.data(), 8 << 20}}, kDesc);
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(std::string(s.message()), HasSubstr(kDesc));
  EXPECT_THAT(std::string(s.message()), HasSubstr("first unfinished range: region 0 ["));
  EXPECT_EQ(run.bytes_done.load(), 0u);
}

TEST_F(TcpTransportTest, PastDeadline) {
  SetUpSource(8 << 20, 2);
  Buffer dst(8 << 20);
  Running run;
  run.deadline = absl::Now() - absl::Seconds(1);
  Status s = run.Read(*conn_, {ReadOp{0, 4096, dst.data(), (8 << 20) - 4096}});
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(s.message()), HasSubstr("passed its deadline"));
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("first unfinished range: region 0 [4096, 69632)"));
  EXPECT_EQ(run.bytes_done.load(), 0u);
}

TEST_F(TcpTransportTest, CloseThenReadFails) {
  SetUpSource(4096, 2);
  conn_->Close();
  conn_->Close();
  std::vector<char> dst(10);
  Running run;
  Status s = run.Read(*conn_, {ReadOp{0, 0, dst.data(), 10}});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("is closed"));
}

TEST_F(TcpTransportTest, StopFailsConnectedPeersAndIsIdempotent) {
  SetUpSource(1 << 20, 2);
  std::vector<char> dst(1 << 20);
  Running run;
  ASSERT_TRUE(run.Read(*conn_, {ReadOp{0, 0, dst.data(), dst.size()}}).ok());
  source_->Stop();
  source_->Stop();
  Status s = run.Read(*conn_, {ReadOp{0, 0, dst.data(), dst.size()}});
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(s.message()), HasSubstr(kDesc));
  EXPECT_THAT(std::string(s.message()), HasSubstr("first unfinished range: region 0 [0, 65536)"));
}

// RemoveRegion returns only when no send touches the memory: unmapping it right after must not
// crash the source, and the reader gets an error rather than garbage.
TEST_F(TcpTransportTest, RegionRemovedWhileAPeerReads) {
  constexpr uint64_t kSize = 64 << 20;
  SetUpSource(kSize, 4, 1 << 20);
  Buffer dst(kSize);
  std::atomic<bool> first_done{false};
  Status last;
  std::thread reader([&] {
    Running run;
    for (;;) {
      last = run.Read(*conn_, {ReadOp{0, 0, dst.data(), kSize}});
      first_done = true;
      if (!last.ok()) return;
    }
  });
  while (!first_done.load()) std::this_thread::yield();
  source_->RemoveRegion(0);
  source_region_->Release();  // any later send from it would fault
  reader.join();
  EXPECT_TRUE(last.code() == absl::StatusCode::kNotFound ||
              last.code() == absl::StatusCode::kUnavailable)
      << last;
  EXPECT_THAT(std::string(last.message()), HasSubstr(kDesc));
  // The source still serves new connections.
  ASSERT_TRUE(source_->AddRegion(1, dst.data(), 4096, MemoryKind::kHost, nullptr).ok());
  auto conn = target_->Connect(blob_, kDesc);
  ASSERT_TRUE(conn.ok()) << conn.status();
  std::vector<char> small(10);
  Running run;
  Status s = run.Read(**conn, {ReadOp{0, 0, small.data(), 10}});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("has no region 0"));
}

}  // namespace
}  // namespace ferry::internal
