// The CUDA IPC transport end to end over memfds standing in for device allocations
// (testing/memfd_memory.h): export by allocation, descriptor batches, contiguous imports,
// lifetime of exported memory, transport choice. The driver-backed memory runs on a GPU only
// (tests/gpu/, label gpu).
#include "transfer/cuda_ipc/cuda_ipc_transport.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <filesystem>
#include <thread>

#include "transfer/cuda_ipc/testing/memfd_memory.h"
#include "transfer/shm/shm_wire.h"
#include "transfer/transfer_test_util.h"

namespace ferry::internal {
namespace {

using cuda::ExportKind;
using cuda_ipc::MemfdMemory;
using ::ferry::testing::FillPattern;
using ::ferry::testing::FirstMismatch;
using ::ferry::testing::Running;
using ::testing::HasSubstr;

constexpr uint64_t kChunk = 64 << 10;  // a "granule" of the stand-in device

class CudaIpcTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    source_memory_ = std::make_shared<MemfdMemory>();
    target_memory_ = std::make_shared<MemfdMemory>();
    auto source = CreateCudaIpcTransport({}, source_memory_);
    ASSERT_TRUE(source.ok()) << source.status();
    source_ = std::move(*source);
    auto target = CreateCudaIpcTransport({}, target_memory_);
    ASSERT_TRUE(target.ok()) << target.status();
    target_ = std::move(*target);
  }

  // Region 0: `bytes` starting `offset` into `chunks` allocations of kind `kind`.
  char* AddRegion(uint32_t id, int chunks, ExportKind kind, uint64_t offset, uint64_t bytes) {
    auto base = source_memory_->Allocate(kChunk, chunks, kind);
    EXPECT_TRUE(base.ok()) << base.status();
    char* data = *base + offset;
    // The pattern counts from the region's first byte.
    FillPattern(data, bytes);
    EXPECT_TRUE(source_->AddRegion(id, data, bytes, MemoryKind::kCuda, nullptr).ok());
    return data;
  }

  std::unique_ptr<PeerConnection> Connect() {
    blob_.Clear();
    source_->Describe(&blob_);
    auto conn = target_->Connect(blob_, "source (test) over cuda_ipc");
    EXPECT_TRUE(conn.ok()) << conn.status();
    return conn.ok() ? std::move(*conn) : nullptr;
  }

  std::shared_ptr<MemfdMemory> source_memory_;
  std::shared_ptr<MemfdMemory> target_memory_;
  std::unique_ptr<Transport> source_;
  std::unique_ptr<Transport> target_;
  ferry::v1::TransferBlob blob_;
};

TEST_F(CudaIpcTransportTest, ExpandableSegmentOfMoreChunksThanOnePacketOfDescriptors) {
  // 300 chunks (> SCM_MAX_FD 253): the region starts inside the first and ends inside the last.
  const uint64_t bytes = 298 * kChunk + 1000;
  AddRegion(0, 300, ExportKind::kPosixFd, 4096, bytes);
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  ASSERT_EQ(blob_.regions_size(), 0);  // the engine lists regions; the transport only fills them
  std::vector<char> dst(bytes);
  Running run;
  run.chunk_bytes = 1 << 20;
  ASSERT_TRUE(run.Read(*conn, {ReadOp{0, 0, dst.data(), bytes}}).ok());
  EXPECT_EQ(FirstMismatch(dst.data(), bytes, 0), -1);
  EXPECT_EQ(target_memory_->live_imports(), 1);
  // One contiguous import: every piece copied in one job, however many allocations.
  EXPECT_EQ(target_memory_->copies(), static_cast<uint64_t>((bytes + (1 << 20) - 1) >> 20));
}

// Descriptors open in this process.
int OpenDescriptors() {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)entry;
    ++n;
  }
  return n;
}

// Sets the soft open-file limit for its life (the source's descriptor budget is a quarter of it).
class SoftFileLimit {
 public:
  explicit SoftFileLimit(rlim_t soft) {
    EXPECT_EQ(::getrlimit(RLIMIT_NOFILE, &saved_), 0);
    rlimit lowered = saved_;
    lowered.rlim_cur = std::min<rlim_t>(soft, saved_.rlim_max);
    EXPECT_EQ(lowered.rlim_cur, soft) << "the hard limit is below " << soft;
    EXPECT_EQ(::setrlimit(RLIMIT_NOFILE, &lowered), 0);
  }
  ~SoftFileLimit() { ::setrlimit(RLIMIT_NOFILE, &saved_); }

 private:
  rlimit saved_{};
};

TEST_F(CudaIpcTransportTest, ASourceKeepsExportedDescriptorsOnlyWithinAQuarterOfItsFileLimit) {
  // A model in expandable segments is thousands of cuMemCreate chunks. A source keeps their
  // descriptors open (targets get duplicates) while they fit a quarter of the soft open-file
  // limit, and exports the rest anew for each target that opens them.
  SoftFileLimit limit(2048);  // a budget of 512 descriptors
  constexpr int kChunks = 300;
  const uint64_t bytes = kChunks * kChunk;
  std::vector<char*> data;
  for (int i = 0; i < 3; ++i) {
    auto base = source_memory_->Allocate(kChunk, kChunks, ExportKind::kPosixFd);
    ASSERT_TRUE(base.ok()) << base.status();
    FillPattern(*base, bytes);
    data.push_back(*base);
  }
  const int before = OpenDescriptors();
  ASSERT_TRUE(source_->AddRegion(0, data[0], bytes, MemoryKind::kCuda, nullptr).ok());
  EXPECT_EQ(OpenDescriptors(), before + kChunks);  // kept: 300 of 512
  ASSERT_TRUE(source_->AddRegion(1, data[1], bytes, MemoryKind::kCuda, nullptr).ok());
  EXPECT_EQ(OpenDescriptors(), before + kChunks);  // 600 would not fit: exported per target
  source_->RemoveRegion(0);                        // gives its 300 back
  EXPECT_EQ(OpenDescriptors(), before);
  ASSERT_TRUE(source_->AddRegion(2, data[2], bytes, MemoryKind::kCuda, nullptr).ok());
  EXPECT_EQ(OpenDescriptors(), before + kChunks);
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  std::vector<char> dst(2 * bytes);
  Running run;
  ASSERT_TRUE(
      run.Read(*conn, {ReadOp{1, 0, dst.data(), bytes}, ReadOp{2, 0, dst.data() + bytes, bytes}})
          .ok());
  EXPECT_EQ(FirstMismatch(dst.data(), bytes, 0), -1);
  EXPECT_EQ(FirstMismatch(dst.data() + bytes, bytes, 0), -1);
  // A second connection's handshake is answered by the server's one thread after it finished
  // sending the first target's exports: from then on the source holds, beside region 2's kept
  // descriptors, only the two connections' sockets, and the target (its regions mapped) holds
  // its two control sockets: what was sent is closed on both ends.
  auto another = Connect();
  ASSERT_NE(another, nullptr);
  EXPECT_EQ(OpenDescriptors(), before + kChunks + 4);
}

TEST_F(CudaIpcTransportTest, AnExportThatFailsWhenATargetOpensItFailsThatReadWithTheReason) {
  SoftFileLimit limit(1024);  // 300 descriptors do not fit the budget of 256: exported per open
  const uint64_t bytes = 300 * kChunk;
  AddRegion(0, 300, ExportKind::kPosixFd, 0, bytes);
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  std::vector<char> dst(bytes);
  Running run;
  source_memory_->FailExports(true);
  Status s = run.Read(*conn, {ReadOp{0, 0, dst.data(), bytes}});
  // Unavailable: this source cannot serve the region now; read it elsewhere.
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("could not export region 0"));
  EXPECT_THAT(s.message(), HasSubstr("out of descriptors"));
  EXPECT_EQ(target_memory_->live_imports(), 0);
  // Nothing was left half open on either side: the same connection reads once exports work.
  source_memory_->FailExports(false);
  ASSERT_TRUE(run.Read(*conn, {ReadOp{0, 0, dst.data(), bytes}}).ok());
  EXPECT_EQ(FirstMismatch(dst.data(), bytes, 0), -1);
}

// A read over many regions opens them with requests in flight together (shm::kOpenWindow at a
// time). One the source cannot export, in the middle, fails only itself: the others are mapped
// once, and the connection stays in step with the source.
TEST_F(CudaIpcTransportTest, ManyRegionsOpenTogetherAndAnUnservedOneFailsOnlyItself) {
  constexpr uint32_t kRegions = 3 * shm::kOpenWindow;
  constexpr uint32_t kUnserved = kRegions / 2;
  std::vector<char*> data(kRegions);
  for (uint32_t id = 0; id < kRegions; ++id) {
    auto base = source_memory_->Allocate(
        kChunk, 1, id == kUnserved ? ExportKind::kNotExportable : ExportKind::kPosixFd);
    ASSERT_TRUE(base.ok()) << base.status();
    data[id] = *base;
    // Each region holds its own stretch of the pattern, so swapped regions do not compare equal.
    for (uint64_t i = 0; i < kChunk; ++i) {
      data[id][i] = static_cast<char>(::ferry::testing::PatternByte(id * kChunk + i));
    }
    ASSERT_TRUE(source_->AddRegion(id, data[id], kChunk, MemoryKind::kCuda, nullptr).ok());
  }
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  std::vector<char> dst(kRegions * kChunk);
  std::vector<ReadOp> ops;
  for (uint32_t id = 0; id < kRegions; ++id) {
    ops.push_back(ReadOp{id, 0, dst.data() + id * kChunk, kChunk});
  }
  Running run;
  Status s = run.Read(*conn, ops);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("no exported region ", kUnserved)));
  EXPECT_EQ(target_memory_->live_imports(), static_cast<int>(kRegions) - 1);
  ops.erase(ops.begin() + kUnserved);
  ASSERT_TRUE(run.Read(*conn, ops).ok());
  EXPECT_EQ(target_memory_->live_imports(), static_cast<int>(kRegions) - 1);  // mapped once
  for (uint32_t id = 0; id < kRegions; ++id) {
    if (id == kUnserved) continue;
    EXPECT_EQ(FirstMismatch(dst.data() + id * kChunk, kChunk, id * kChunk), -1) << "region " << id;
  }
}

TEST_F(CudaIpcTransportTest, FabricHandleSegmentsAreOneContiguousImportWithoutDescriptors) {
  // Expandable segments on an IMEX host (GB200) allow fabric handles only: 64-byte handles in the
  // records, no descriptors passed, mapped back to back like POSIX-fd pieces.
  const uint64_t bytes = 5 * kChunk - 300;
  AddRegion(0, 5, ExportKind::kFabric, 200, bytes);
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  std::vector<char> dst(bytes);
  Running run;
  run.chunk_bytes = 8 * kChunk;  // one piece over all five allocations
  ASSERT_TRUE(run.Read(*conn, {ReadOp{0, 0, dst.data(), bytes}}).ok());
  EXPECT_EQ(FirstMismatch(dst.data(), bytes, 0), -1);
  EXPECT_EQ(target_memory_->live_imports(), 1);
  EXPECT_EQ(target_memory_->copies(), 1u);  // contiguous: one copy job
}

TEST_F(CudaIpcTransportTest, LegacyBlocksAreImportedApartAndCopiesSplitAtTheirEdges) {
  // Three cudaMalloc-like blocks: the import maps each on its own (no contiguity).
  const uint64_t bytes = 3 * kChunk - 100;
  AddRegion(0, 3, ExportKind::kLegacyIpc, 100, bytes);
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  std::vector<char> dst(bytes);
  Running run;
  run.chunk_bytes = 8 * kChunk;  // one piece crossing both block edges
  ASSERT_TRUE(run.Read(*conn, {ReadOp{0, 0, dst.data(), bytes}}).ok());
  EXPECT_EQ(FirstMismatch(dst.data(), bytes, 0), -1);
  EXPECT_EQ(target_memory_->copies(), 3u);
}

TEST_F(CudaIpcTransportTest, RegionsAreMappedForTheDeviceOfTheFirstDestination) {
  const uint64_t bytes = 4 * kChunk;
  AddRegion(0, 4, ExportKind::kPosixFd, 0, bytes);
  AddRegion(1, 1, ExportKind::kLegacyIpc, 0, kChunk);
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  std::vector<char> dst(bytes + kChunk);
  Running run;
  ASSERT_TRUE(
      run.Read(*conn, {ReadOp{0, 0, dst.data() + kChunk, bytes}, ReadOp{1, 0, dst.data(), kChunk}})
          .ok());
  EXPECT_EQ(FirstMismatch(dst.data() + kChunk, bytes, 0), -1);
  EXPECT_EQ(FirstMismatch(dst.data(), kChunk, 0), -1);
  // CUDA maps (and copies) in the context of the GPU the bytes go to: Import is told where.
  EXPECT_EQ(target_memory_->live_imports(), 2);
  EXPECT_EQ(target_memory_->last_import_local(), reinterpret_cast<uint64_t>(dst.data() + kChunk));
}

TEST_F(CudaIpcTransportTest, ATargetInTheSourcesOwnProcessIsRefusedWhereCudaWouldFail) {
  AddRegion(0, 1, ExportKind::kLegacyIpc, 0, kChunk);
  source_->Describe(&blob_);
  ASSERT_FALSE(blob_.cuda_ipc().process().empty());
  // The memfd stand-in opens its own exports: one process holds both ends in these tests.
  EXPECT_TRUE(target_->Reaches(blob_, /*same_host=*/true).ok());
  // CUDA does not (cuIpcOpenMemHandle refuses its own process's handle): auto picks another
  // transport before any read, rather than failing in the middle of one.
  target_memory_->RefuseOwnExports();
  Status s = target_->Reaches(blob_, /*same_host=*/true);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("same process"));
  // Another process (its own random part, or a forked child's other pid) is reached.
  ferry::v1::TransferBlob other = blob_;
  const std::string& key = blob_.cuda_ipc().process();
  other.mutable_cuda_ipc()->set_process(key.substr(0, key.find(':')) + ":1");
  EXPECT_TRUE(target_->Reaches(other, /*same_host=*/true).ok());
}

TEST_F(CudaIpcTransportTest, ManyOpsAtOddOffsets) {
  const uint64_t bytes = 20 * kChunk;
  AddRegion(0, 20, ExportKind::kPosixFd, 0, bytes);
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  std::vector<char> dst(bytes);
  std::vector<ReadOp> ops;
  for (uint64_t at = 0, n = 1; at < bytes; at += n, n = n * 3 + 7) {
    n = std::min(n, bytes - at);
    ops.push_back(ReadOp{0, at, dst.data() + at, n});
  }
  ops.push_back(ReadOp{0, 5, dst.data(), 0});  // zero-length
  Running run;
  ASSERT_TRUE(run.Read(*conn, ops).ok());
  EXPECT_EQ(FirstMismatch(dst.data(), bytes, 0), -1);
}

TEST_F(CudaIpcTransportTest, HostRegionsAndUnexportableMemoryAreNotServedAndSaySo) {
  std::vector<char> host(4096);
  ASSERT_TRUE(source_->AddRegion(0, host.data(), host.size(), MemoryKind::kHost, nullptr).ok());
  auto plain = source_memory_->Allocate(kChunk, 1, ExportKind::kNotExportable);
  ASSERT_TRUE(plain.ok());
  ASSERT_TRUE(source_->AddRegion(1, *plain, kChunk, MemoryKind::kCuda, nullptr).ok());
  AddRegion(2, 1, ExportKind::kPosixFd, 0, kChunk);
  ferry::v1::TransferBlob blob;
  for (uint32_t id : {0, 1, 2}) {
    blob.add_regions()->set_id(id);
  }
  blob.mutable_regions(0)->set_kind(ferry::v1::MEMORY_KIND_HOST);
  blob.mutable_regions(1)->set_kind(ferry::v1::MEMORY_KIND_CUDA);
  blob.mutable_regions(2)->set_kind(ferry::v1::MEMORY_KIND_CUDA);
  source_->Describe(&blob);
  EXPECT_FALSE(blob.regions(0).cuda_ipc_served());
  EXPECT_FALSE(blob.regions(1).cuda_ipc_served());
  EXPECT_TRUE(blob.regions(2).cuda_ipc_served());
  EXPECT_THAT(target_->Serves(blob.regions(0)).message(), HasSubstr("(host memory)"));
  EXPECT_THAT(target_->Serves(blob.regions(1)).message(),
              HasSubstr("device memory it could not export"));
  EXPECT_TRUE(target_->Serves(blob.regions(2)).ok());
  EXPECT_TRUE(target_->Reaches(blob, /*same_host=*/true).ok());
  EXPECT_THAT(target_->Reaches(blob, /*same_host=*/false).message(),
              HasSubstr("another host or in another network namespace"));
  // Reading an unserved region fails with NotFound naming it.
  auto conn = target_->Connect(blob, "source (test) over cuda_ipc");
  ASSERT_TRUE(conn.ok());
  std::vector<char> dst(kChunk);
  Running run;
  Status s = run.Read(**conn, {ReadOp{1, 0, dst.data(), kChunk}});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(s.message(), HasSubstr("no exported region 1"));
}

TEST_F(CudaIpcTransportTest, RemovalWaitsUntilTheTargetClosedItsMapping) {
  AddRegion(0, 4, ExportKind::kLegacyIpc, 0, 4 * kChunk);
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  std::vector<char> dst(4 * kChunk);
  Running run;
  ASSERT_TRUE(run.Read(*conn, {ReadOp{0, 0, dst.data(), dst.size()}}).ok());
  ASSERT_EQ(target_memory_->live_imports(), 1);
  // RemoveRegion blocks until the target unmaps: it does so when it next looks at its control
  // socket (its next read), which this thread triggers while the removal waits.
  std::atomic<bool> removed{false};
  std::thread remover([&] {
    source_->RemoveRegion(0);
    removed.store(true);
  });
  // The read fails (the region is gone) and, on the way, unmaps and tells the source.
  Status s;
  do {
    s = run.Read(*conn, {ReadOp{0, 0, dst.data(), dst.size()}});
  } while (s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  remover.join();
  EXPECT_TRUE(removed.load());
  EXPECT_EQ(target_memory_->live_imports(), 0);
}

TEST_F(CudaIpcTransportTest, ACopyFailureFailsTheReadNamingThePeer) {
  AddRegion(0, 8, ExportKind::kPosixFd, 0, 8 * kChunk);
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  target_memory_->FailCopyNumber(3);
  std::vector<char> dst(8 * kChunk);
  Running run;
  Status s = run.Read(*conn, {ReadOp{0, 0, dst.data(), dst.size()}});
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.message(), HasSubstr("cuda_ipc read from source (test) over cuda_ipc"));
  EXPECT_THAT(s.message(), HasSubstr("failed (injected)"));
}

TEST_F(CudaIpcTransportTest, CancelStopsBetweenCopies) {
  AddRegion(0, 16, ExportKind::kPosixFd, 0, 16 * kChunk);
  auto conn = Connect();
  ASSERT_NE(conn, nullptr);
  std::vector<char> dst(16 * kChunk);
  Running run;
  run.on_piece = [&](const ReadOp&) { run.cancelled.store(true); };
  Status s = run.Read(*conn, {ReadOp{0, 0, dst.data(), dst.size()}});
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_LT(run.bytes_done.load(), dst.size());
}

TEST_F(CudaIpcTransportTest, WrongSecretIsRefused) {
  AddRegion(0, 1, ExportKind::kPosixFd, 0, kChunk);
  source_->Describe(&blob_);
  blob_.mutable_cuda_ipc()->set_secret(std::string(32, 'x'));
  auto conn = target_->Connect(blob_, "source (test) over cuda_ipc");
  ASSERT_EQ(conn.status().code(), absl::StatusCode::kPermissionDenied) << conn.status();
  EXPECT_THAT(conn.status().message(), HasSubstr("cuda_ipc handshake with source (test)"));
}

TEST(CudaIpcRecordsTest, CorruptExportsAreRefused) {
  cuda_ipc::PieceRecord a{};
  a.allocation_size = 100;
  a.offset = 10;
  a.length = 90;
  a.kind = static_cast<uint32_t>(ExportKind::kPosixFd);
  cuda_ipc::PieceRecord b = a;
  b.offset = 0;
  b.length = 50;
  b.region_offset = 90;
  b.fd_index = 1;
  EXPECT_TRUE(cuda_ipc::ValidateRecords({a, b}, 2, 140).ok());
  EXPECT_THAT(cuda_ipc::ValidateRecords({a, b}, 2, 141).message(), HasSubstr("cover 140 of 141"));
  cuda_ipc::PieceRecord gap = b;
  gap.offset = 8;
  EXPECT_THAT(cuda_ipc::ValidateRecords({a, gap}, 2, 140).message(),
              HasSubstr("record 1 of 2 leaves a gap"));
  cuda_ipc::PieceRecord outside = a;
  outside.length = 91;
  EXPECT_THAT(cuda_ipc::ValidateRecords({outside}, 1, 91).message(),
              HasSubstr("claims [10, +91) of an allocation of 100 bytes"));
  EXPECT_THAT(cuda_ipc::ValidateRecords({a, b}, 1, 140).message(),
              HasSubstr("names descriptor 1 of 1"));
  // A fabric piece carries its handle and takes no descriptor; an unknown kind is refused.
  cuda_ipc::PieceRecord fabric = b;
  fabric.kind = static_cast<uint32_t>(ExportKind::kFabric);
  fabric.fd_index = 0;
  EXPECT_TRUE(cuda_ipc::ValidateRecords({a, fabric}, 1, 140).ok());
  EXPECT_THAT(cuda_ipc::ValidateRecords({a, fabric}, 2, 140).message(),
              HasSubstr("name 1 of 2 descriptors"));
  cuda_ipc::PieceRecord unknown = b;
  unknown.kind = static_cast<uint32_t>(ExportKind::kNotExportable);
  EXPECT_THAT(cuda_ipc::ValidateRecords({a, unknown}, 1, 140).message(),
              HasSubstr("has export kind 2"));
}

}  // namespace
}  // namespace ferry::internal
