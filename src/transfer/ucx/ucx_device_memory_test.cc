// Device memory over UCX (GPUDirect RDMA): every allocation behind a region registered on its
// own, one key each, and reads that cross allocation edges split per key. Without a GPU, host
// memory stands in for device allocations (UcxTuning::device_memory, registered as host memory),
// so the registration, the blob and the target's splitting run against real UCX; Debian's UCX
// has no CUDA, so the default transport serves no device memory and says why.
#include <sys/mman.h>

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transfer/transfer_test_util.h"
#include "transfer/transport.h"
#include "transfer/ucx/ucx_transport.h"

namespace ferry::internal {
namespace {

using ::ferry::testing::FillPattern;
using ::ferry::testing::FirstMismatch;
using ::ferry::testing::Running;
using ::testing::HasSubstr;

constexpr uint64_t kAllocation = 1 << 20;  // one stand-in "device allocation"

// Host memory cut into stand-in allocations: a table of [base, base + size).
class TableQuery : public cuda::AllocationQuery {
 public:
  void Add(const char* base, uint64_t size, bool rdma_capable = true) {
    table_[reinterpret_cast<uint64_t>(base)] = {size, rdma_capable};
  }
  StatusOr<cuda::AllocationInfo> Find(uint64_t address) const override {
    auto it = table_.upper_bound(address);
    if (it == table_.begin()) return absl::NotFoundError("below every allocation");
    --it;
    if (address - it->first >= it->second.first) return absl::NotFoundError("in a hole");
    return cuda::AllocationInfo{it->first, it->second.first, cuda::ExportKind::kNotExportable, 0,
                                it->second.second};
  }

 private:
  std::map<uint64_t, std::pair<uint64_t, bool>> table_;  // base: size, RDMA capable
};

class UcxDeviceMemoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    memory_ = static_cast<char*>(::mmap(nullptr, kMemory, PROT_READ | PROT_WRITE,
                                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0));
    ASSERT_NE(memory_, MAP_FAILED);
    query_ = std::make_shared<TableQuery>();
  }
  void TearDown() override {
    for (auto* t : {&target_, &source_}) {
      if (*t != nullptr) (*t)->Stop();
      t->reset();
    }
    ::munmap(memory_, kMemory);
  }

  std::unique_ptr<Transport> Create(bool stand_in) {
    TransferEngineOptions o;
    o.name = "ucx device test";
    o.ucx_net_devices = "lo";
    UcxTuning tuning;
    if (stand_in) tuning.device_memory = UcxDeviceMemory{query_, UCS_MEMORY_TYPE_HOST};
    auto t = CreateUcxTransport(o, tuning);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *std::move(t) : nullptr;
  }

  // Registers [data, data + size) as device region 0 of the source and describes it.
  ferry::v1::TransferBlob Serve(char* data, uint64_t size) {
    FillPattern(data, size);
    EXPECT_TRUE(source_->AddRegion(0, data, size, MemoryKind::kCuda, nullptr).ok());
    ferry::v1::TransferBlob blob;
    blob.set_version(1);
    auto* r = blob.add_regions();
    r->set_id(0);
    r->set_size(size);
    r->set_kind(ferry::v1::MEMORY_KIND_CUDA);
    r->set_base_address(reinterpret_cast<uint64_t>(data));
    source_->Describe(&blob);
    return blob;
  }

  static constexpr uint64_t kMemory = 8 * kAllocation;
  char* memory_ = nullptr;
  std::shared_ptr<TableQuery> query_;
  std::unique_ptr<Transport> source_;
  std::unique_ptr<Transport> target_;
};

TEST_F(UcxDeviceMemoryTest, EachAllocationIsRegisteredApartAndReadsCrossTheirEdges) {
  // Four allocations back to back, of different sizes; the region starts inside the first and
  // ends inside the last (a storage inside caching-allocator blocks or expandable segments).
  const uint64_t sizes[] = {kAllocation, 2 * kAllocation, kAllocation / 2, kAllocation};
  char* at = memory_;
  for (uint64_t size : sizes) {
    query_->Add(at, size);
    at += size;
  }
  char* data = memory_ + 1000;
  const uint64_t size = (at - memory_) - 1000 - 5000;
  source_ = Create(/*stand_in=*/true);
  target_ = Create(/*stand_in=*/true);
  ASSERT_NE(source_, nullptr);
  ASSERT_NE(target_, nullptr);
  const ferry::v1::TransferBlob blob = Serve(data, size);

  // One key per allocation, in region order, covering the region; no region-wide key.
  const auto& region = blob.regions(0);
  EXPECT_TRUE(region.ucx_rkey().empty());
  ASSERT_EQ(region.ucx_pieces_size(), 4);
  const uint64_t offsets[] = {0, kAllocation - 1000, 3 * kAllocation - 1000,
                              3 * kAllocation + kAllocation / 2 - 1000};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(region.ucx_pieces(i).offset(), offsets[i]) << i;
    EXPECT_EQ(region.ucx_pieces(i).length(), (i < 3 ? offsets[i + 1] : size) - offsets[i]) << i;
    EXPECT_FALSE(region.ucx_pieces(i).rkey().empty()) << i;
  }
  EXPECT_TRUE(target_->Serves(region).ok());
  EXPECT_TRUE(target_->Writes(MemoryKind::kCuda));

  auto peer = target_->Connect(blob, "device source");
  ASSERT_TRUE(peer.ok()) << peer.status();
  // Pieces of 3 MiB cross every edge; then odd ops, some straddling an edge by a byte.
  std::vector<char> dst(size, 0);
  Running whole;
  whole.chunk_bytes = 3 * kAllocation;
  ASSERT_TRUE(whole.Read(**peer, {ReadOp{0, 0, dst.data(), size}}).ok());
  EXPECT_EQ(FirstMismatch(dst.data(), size, 0), -1);
  std::vector<ReadOp> ops;
  std::mt19937_64 rng(7);
  std::vector<char> odd(size, 0);
  for (uint64_t edge : {offsets[1], offsets[2], offsets[3]}) {
    ops.push_back(ReadOp{0, edge - 1, odd.data() + edge - 1, 2});
  }
  for (int i = 0; i < 50; ++i) {
    const uint64_t off = rng() % (size - 1) + 1;
    const uint64_t len = std::min<uint64_t>(1 + rng() % 700000, size - off);
    ops.push_back(ReadOp{0, off, odd.data() + off, len});
  }
  Running some;
  some.chunk_bytes = 256 << 10;
  ASSERT_TRUE(some.Read(**peer, ops).ok());
  for (const ReadOp& op : ops) {
    ASSERT_EQ(FirstMismatch(op.local, op.length, op.remote_offset), -1)
        << "op at " << op.remote_offset << " of " << op.length;
  }
}

TEST_F(UcxDeviceMemoryTest, ARegionWithAHoleIsNotServedAndTheTargetSaysSo) {
  query_->Add(memory_, kAllocation);
  query_->Add(memory_ + 2 * kAllocation, kAllocation);  // a hole between
  source_ = Create(/*stand_in=*/true);
  target_ = Create(/*stand_in=*/false);
  ASSERT_NE(source_, nullptr);
  ASSERT_NE(target_, nullptr);
  const ferry::v1::TransferBlob blob = Serve(memory_, 3 * kAllocation);
  EXPECT_EQ(blob.regions(0).ucx_pieces_size(), 0);
  EXPECT_TRUE(blob.regions(0).ucx_rkey().empty());
  // Debian's UCX has no CUDA: this target neither reads into device memory over UCX nor finds
  // the region served, and names both.
  EXPECT_FALSE(target_->Writes(MemoryKind::kCuda));
  Status s = target_->Serves(blob.regions(0));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("only with GPUDirect RDMA, and the peer does not serve it"));
  EXPECT_THAT(s.message(), HasSubstr("the UCX loaded here has no CUDA support"));
}

TEST_F(UcxDeviceMemoryTest, AnAllocationNotCapableOfGpuDirectRdmaLeavesTheRegionUnserved) {
  query_->Add(memory_, kAllocation);
  query_->Add(memory_ + kAllocation, kAllocation, /*rdma_capable=*/false);
  source_ = Create(/*stand_in=*/true);
  ASSERT_NE(source_, nullptr);
  const ferry::v1::TransferBlob blob = Serve(memory_, 2 * kAllocation);
  EXPECT_EQ(blob.regions(0).ucx_pieces_size(), 0);
  EXPECT_TRUE(blob.regions(0).ucx_rkey().empty());
}

TEST_F(UcxDeviceMemoryTest, KeyPiecesThatDoNotCoverTheRegionAreRefusedAtConnect) {
  query_->Add(memory_, kAllocation);
  query_->Add(memory_ + kAllocation, kAllocation);
  source_ = Create(/*stand_in=*/true);
  target_ = Create(/*stand_in=*/true);
  ASSERT_NE(source_, nullptr);
  ASSERT_NE(target_, nullptr);
  ferry::v1::TransferBlob blob = Serve(memory_, 2 * kAllocation);
  ASSERT_EQ(blob.regions(0).ucx_pieces_size(), 2);
  blob.mutable_regions(0)->mutable_ucx_pieces(1)->set_offset(kAllocation + 1);  // a gap
  auto peer = target_->Connect(blob, "device source");
  // The source's blob is corrupt: DataLoss (auto does not take it for an unreachable peer).
  ASSERT_EQ(peer.status().code(), absl::StatusCode::kDataLoss) << peer.status();
  EXPECT_THAT(peer.status().message(), HasSubstr("do not cover its 2097152 bytes in order"));
}

}  // namespace
}  // namespace ferry::internal
