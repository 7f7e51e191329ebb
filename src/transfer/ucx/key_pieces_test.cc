#include "transfer/ucx/key_pieces.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::internal::ucx {
namespace {

using ::testing::HasSubstr;

ferry::v1::RegionInfo Region(uint64_t size, const std::vector<std::pair<uint64_t, uint64_t>>& p) {
  ferry::v1::RegionInfo r;
  r.set_id(3);
  r.set_size(size);
  for (const auto& [offset, length] : p) {
    auto* piece = r.add_ucx_pieces();
    piece->set_offset(offset);
    piece->set_length(length);
    piece->set_rkey("k");
  }
  return r;
}

std::vector<std::vector<uint64_t>> Spans(const std::vector<uint64_t>& starts, uint64_t size,
                                         uint64_t offset, uint64_t length) {
  std::vector<std::vector<uint64_t>> out;
  for (const KeySpan& s : SplitAtKeyEdges(starts, size, offset, length)) {
    out.push_back({s.piece, s.offset, s.length});
  }
  return out;
}

TEST(KeyPiecesTest, PiecesMustCoverTheRegionInOrderWithKeys) {
  EXPECT_TRUE(CheckKeyPieces(Region(100, {{0, 40}, {40, 60}})).ok());
  for (const auto& bad : {Region(100, {{0, 40}, {41, 59}}),           // a gap
                          Region(100, {{0, 40}, {30, 70}}),           // an overlap
                          Region(100, {{0, 40}, {40, 0}, {40, 60}}),  // an empty piece
                          Region(100, {{0, 40}, {40, 61}}),           // past the end
                          Region(100, {{0, 40}})}) {                  // short
    Status s = CheckKeyPieces(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_THAT(s.message(), HasSubstr("region 3: its UCX key pieces"));
  }
  ferry::v1::RegionInfo keyless = Region(100, {{0, 100}});
  keyless.mutable_ucx_pieces(0)->clear_rkey();
  EXPECT_EQ(CheckKeyPieces(keyless).code(), absl::StatusCode::kDataLoss);
  // A huge length cannot wrap around the size check.
  EXPECT_EQ(CheckKeyPieces(Region(100, {{0, 40}, {40, ~uint64_t{0}}})).code(),
            absl::StatusCode::kDataLoss);
}

TEST(KeyPiecesTest, ReadsSplitAtEveryEdgeTheyCross) {
  const std::vector<uint64_t> starts = {0, 40, 100, 130};  // four pieces of a 200-byte region
  using V = std::vector<std::vector<uint64_t>>;
  EXPECT_EQ(Spans(starts, 200, 0, 200), (V{{0, 0, 40}, {1, 40, 60}, {2, 100, 30}, {3, 130, 70}}));
  EXPECT_EQ(Spans(starts, 200, 10, 20), (V{{0, 10, 20}}));            // inside one piece
  EXPECT_EQ(Spans(starts, 200, 10, 30), (V{{0, 10, 30}}));            // ends on an edge
  EXPECT_EQ(Spans(starts, 200, 40, 60), (V{{1, 40, 60}}));            // exactly one piece
  EXPECT_EQ(Spans(starts, 200, 39, 2), (V{{0, 39, 1}, {1, 40, 1}}));  // one byte each side
  EXPECT_EQ(Spans(starts, 200, 99, 101), (V{{1, 99, 1}, {2, 100, 30}, {3, 130, 70}}));
  EXPECT_EQ(Spans(starts, 200, 199, 1), (V{{3, 199, 1}}));  // the last byte
  EXPECT_TRUE(Spans(starts, 200, 200, 0).empty());
  // Past the end (the caller checks first): the spans stop at the region's end, never loop.
  EXPECT_EQ(Spans(starts, 200, 150, 100), (V{{3, 150, 50}}));  // zero-length at the end
  EXPECT_EQ(Spans({0}, 50, 5, 45), (V{{0, 5, 45}}));           // host memory: one key
}

}  // namespace
}  // namespace ferry::internal::ucx
