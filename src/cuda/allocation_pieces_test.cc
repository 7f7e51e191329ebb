#include "cuda/allocation_pieces.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>

#include "absl/strings/str_format.h"

namespace ferry::internal::cuda {
namespace {

using ::testing::HasSubstr;

// A table of allocations standing in for the driver, built on the real interface.
class TableQuery : public AllocationQuery {
 public:
  void Add(uint64_t base, uint64_t size, ExportKind kind) { table_[base] = {base, size, kind}; }
  void FailWith(Status s) { failure_ = std::move(s); }
  void Lie() { lie_ = true; }

  StatusOr<AllocationInfo> Find(uint64_t address) const override {
    ++calls;
    if (!failure_.ok()) return failure_;
    auto it = table_.upper_bound(address);
    if (it == table_.begin()) return absl::NotFoundError("none");
    --it;
    if (address - it->second.base >= it->second.size) return absl::NotFoundError("none");
    AllocationInfo info = it->second;
    if (lie_) info.base = address + 1;
    return info;
  }
  mutable int calls = 0;

 private:
  std::map<uint64_t, AllocationInfo> table_;
  Status failure_;
  bool lie_ = false;
};

constexpr uint64_t kMiB = 1 << 20;

TEST(AllocationPiecesTest, OneAllocationExportedByItsBaseForAnInteriorRegion) {
  // A caching-allocator block: the tensor starts 1 MiB into a 20 MiB cudaMalloc block.
  TableQuery q;
  q.Add(0x7f0000000000, 20 * kMiB, ExportKind::kLegacyIpc);
  auto pieces = FindAllocationPieces(0x7f0000000000 + kMiB, 3 * kMiB, q, true);
  ASSERT_TRUE(pieces.ok()) << pieces.status();
  ASSERT_EQ(pieces->size(), 1u);
  const AllocationPiece& p = (*pieces)[0];
  EXPECT_EQ(p.allocation.base, 0x7f0000000000u);  // never the interior pointer
  EXPECT_EQ(p.allocation.size, 20 * kMiB);
  EXPECT_EQ(p.offset, kMiB);
  EXPECT_EQ(p.region_offset, 0u);
  EXPECT_EQ(p.length, 3 * kMiB);
  EXPECT_EQ(p.allocation.kind, ExportKind::kLegacyIpc);
}

TEST(AllocationPiecesTest, ExpandableSegmentSpanningManyChunks) {
  // 40 cuMemCreate chunks of 2 MiB mapped back to back; the region starts inside the 3rd and
  // ends inside the 38th.
  TableQuery q;
  const uint64_t base = 0x7e0000000000;
  for (int i = 0; i < 40; ++i) q.Add(base + i * 2 * kMiB, 2 * kMiB, ExportKind::kPosixFd);
  const uint64_t start = base + 2 * 2 * kMiB + 4096;
  const uint64_t size = 35 * 2 * kMiB;
  auto pieces = FindAllocationPieces(start, size, q, true);
  ASSERT_TRUE(pieces.ok()) << pieces.status();
  ASSERT_EQ(pieces->size(), 36u);
  uint64_t covered = 0;
  for (size_t i = 0; i < pieces->size(); ++i) {
    const AllocationPiece& p = (*pieces)[i];
    EXPECT_EQ(p.allocation.base, base + (i + 2) * 2 * kMiB) << i;
    EXPECT_EQ(p.allocation.size, 2 * kMiB) << i;
    EXPECT_EQ(p.region_offset, covered) << i;
    EXPECT_EQ(p.offset, i == 0 ? 4096u : 0u) << i;
    covered += p.length;
  }
  EXPECT_EQ(covered, size);
  EXPECT_EQ(pieces->front().length, 2 * kMiB - 4096);
  EXPECT_EQ(pieces->back().length, 4096u);
  EXPECT_EQ(q.calls, 36);  // one query per allocation, not per page
}

TEST(AllocationPiecesTest, TwoRegionsInOneSharedBlockNameTheSameAllocation) {
  TableQuery q;
  q.Add(0x10000000, 8 * kMiB, ExportKind::kLegacyIpc);
  auto a = FindAllocationPieces(0x10000000, kMiB, q, true);
  auto b = FindAllocationPieces(0x10000000 + 5 * kMiB, 2 * kMiB, q, true);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ((*a)[0].allocation.base, (*b)[0].allocation.base);
  EXPECT_EQ((*a)[0].offset, 0u);
  EXPECT_EQ((*b)[0].offset, 5 * kMiB);
}

TEST(AllocationPiecesTest, HoleIsRefusedNamingTheAddress) {
  TableQuery q;
  q.Add(0x20000000, 2 * kMiB, ExportKind::kPosixFd);
  q.Add(0x20000000 + 4 * kMiB, 2 * kMiB, ExportKind::kPosixFd);  // a gap of 2 MiB before it
  auto pieces = FindAllocationPieces(0x20000000, 6 * kMiB, q, true);
  ASSERT_EQ(pieces.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(pieces.status().message(),
              HasSubstr(absl::StrFormat("has a hole at 0x%x", 0x20000000 + 2 * kMiB)));
  EXPECT_THAT(pieces.status().message(), HasSubstr("register only memory the CUDA allocator"));
}

TEST(AllocationPiecesTest, NonExportableMemoryIsRefusedOnlyWhenExportIsRequired) {
  TableQuery q;
  q.Add(0x30000000, 2 * kMiB, ExportKind::kLegacyIpc);
  q.Add(0x30000000 + 2 * kMiB, 2 * kMiB, ExportKind::kNotExportable);
  auto refused = FindAllocationPieces(0x30000000, 4 * kMiB, q, true);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(),
              HasSubstr(absl::StrFormat("lies in the allocation [0x%x, 0x%x)",
                                        0x30000000 + 2 * kMiB, 0x30000000 + 4 * kMiB)));
  EXPECT_THAT(refused.status().message(), HasSubstr("stage it through host memory"));
  auto staged = FindAllocationPieces(0x30000000, 4 * kMiB, q, false);
  ASSERT_TRUE(staged.ok()) << staged.status();
  ASSERT_EQ(staged->size(), 2u);
  EXPECT_EQ((*staged)[1].allocation.kind, ExportKind::kNotExportable);
}

TEST(AllocationPiecesTest, QueryFailuresKeepTheirCodeAndNameTheRegion) {
  TableQuery q;
  q.FailWith(absl::InternalError("cuMemGetAddressRange failed: CUDA_ERROR_ILLEGAL_ADDRESS"));
  auto pieces = FindAllocationPieces(0x40000000, kMiB, q, true);
  ASSERT_EQ(pieces.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(pieces.status().message(),
              HasSubstr("device region [0x40000000, 0x40100000): cuMemGetAddressRange failed"));
}

TEST(AllocationPiecesTest, AQueryThatDoesNotContainTheAddressIsCaught) {
  TableQuery q;
  q.Add(0x50000000, 2 * kMiB, ExportKind::kLegacyIpc);
  q.Lie();
  auto pieces = FindAllocationPieces(0x50000000, kMiB, q, true);
  ASSERT_EQ(pieces.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(pieces.status().message(), HasSubstr("which it does not contain"));
}

TEST(AllocationPiecesTest, EmptyOrWrappingRegionIsInvalid) {
  TableQuery q;
  EXPECT_EQ(FindAllocationPieces(0x1000, 0, q, true).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FindAllocationPieces(~0ull - 10, 100, q, true).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ferry::internal::cuda
