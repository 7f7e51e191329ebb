#include "weights/tensor_checksum.h"

#include <xxhash.h>

#include <string>
#include <vector>

#include "cuda/tree_checksum.h"
#include "gtest/gtest.h"

namespace ferry::weights {
namespace {

// Expected values come from an independent Python implementation of XXH3-64 (seed 0) for
// inputs up to 16 bytes, written from the XXH3 specification; the empty-input value is also the
// one the xxHash documentation lists.
TEST(TensorChecksumTest, KnownValues) {
  struct Case {
    std::string input;
    uint64_t expected;
  };
  const Case cases[] = {
      {"", 0x2d06800538d394c2ull},
      {"a", 0xe6c632b61e964e1full},
      {"abc", 0x78af5f94892f3950ull},
      {"ferry", 0xd152ce34ff76fb2bull},
      {"abcdefgh", 0x6f45a76842a96483ull},
      {"safetensors", 0x5fd741dc87c667e8ull},
      {"0123456789abcdef", 0x64439946d8fa212dull},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.input);
    EXPECT_EQ(TensorChecksum(c.input.data(), c.input.size()), c.expected);
  }
  EXPECT_EQ(TensorChecksum(nullptr, 0), 0x2d06800538d394c2ull);
}

TEST(ChecksumAlgorithmTest, NamesRoundTripAndUnknownNamesAreRefusedListingTheKnownOnes) {
  for (ChecksumAlgorithm a : {ChecksumAlgorithm::kXxh3_64, ChecksumAlgorithm::kXxh3Tree64k}) {
    auto parsed = ParseChecksumAlgorithm(ChecksumAlgorithmName(a));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, a);
  }
  EXPECT_STREQ(ChecksumAlgorithmName(ChecksumAlgorithm::kXxh3_64), "xxh3-64");
  EXPECT_STREQ(ChecksumAlgorithmName(ChecksumAlgorithm::kXxh3Tree64k), "xxh3-64-tree-64k");
  auto bad = ParseChecksumAlgorithm("crc32");
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(),
            "unknown checksum algorithm 'crc32'; known: xxh3-64, xxh3-64-tree-64k");
}

std::vector<uint8_t> Pattern(size_t size) {
  std::vector<uint8_t> v(size);
  uint64_t x = 88172645463325252ull;
  for (uint8_t& b : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<uint8_t>(x);
  }
  return v;
}

// The tree algorithm is the tree checksum of src/cuda/, whatever the thread count.
TEST(ChecksumAlgorithmTest, TreeIsTheCudaLayersTreeChecksum) {
  const std::vector<uint8_t> data = Pattern(3 * (64 << 10) + 77);
  const uint64_t tree = internal::cuda::TreeChecksum(data.data(), data.size(), 1);
  EXPECT_EQ(TensorChecksum(data.data(), data.size(), ChecksumAlgorithm::kXxh3Tree64k), tree);
  EXPECT_NE(tree, TensorChecksum(data.data(), data.size()));
  std::vector<ByteRange> ranges = {{data.data(), data.size()}, {data.data(), 100}, {nullptr, 0}};
  std::vector<uint64_t> sums = ChecksumRanges(ranges, 3, ChecksumAlgorithm::kXxh3Tree64k);
  EXPECT_EQ(sums[0], tree);
  EXPECT_EQ(sums[1], internal::cuda::TreeChecksum(data.data(), 100, 1));
  EXPECT_EQ(sums[2], internal::cuda::TreeChecksum(nullptr, 0, 1));
}

// Long inputs take XXH3's other code paths; the streaming API fed in odd pieces is a second way
// to the same value.
TEST(TensorChecksumTest, LongInputMatchesStreamingApi) {
  const std::vector<uint8_t> data = Pattern((1 << 20) + 3);
  XXH3_state_t* state = XXH3_createState();
  ASSERT_NE(state, nullptr);
  ASSERT_EQ(XXH3_64bits_reset(state), XXH_OK);
  for (size_t pos = 0; pos < data.size(); pos += 4093) {
    const size_t n = std::min<size_t>(4093, data.size() - pos);
    ASSERT_EQ(XXH3_64bits_update(state, data.data() + pos, n), XXH_OK);
  }
  const uint64_t streamed = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  EXPECT_EQ(TensorChecksum(data.data(), data.size()), streamed);
  // One flipped bit changes the value.
  std::vector<uint8_t> flipped = data;
  flipped[data.size() / 2] ^= 1;
  EXPECT_NE(TensorChecksum(flipped.data(), flipped.size()), streamed);
}

TEST(TensorChecksumTest, ParallelMatchesSerialForAnyThreadCount) {
  const std::vector<uint8_t> data = Pattern(3 << 20);
  std::vector<TensorInfo> tensors;
  uint64_t offset = 0;
  // Mixed sizes, including empty tensors and one that dominates.
  for (uint64_t size : {uint64_t{2 << 20}, uint64_t{0}, uint64_t{1}, uint64_t{4096}, uint64_t{0},
                        uint64_t{12345}, uint64_t{(1 << 20) - 4096 - 12345 - 1}}) {
    tensors.push_back({"t" + std::to_string(tensors.size()), DType::kU8, {size}, offset, size});
    offset += size;
  }
  ASSERT_EQ(offset, data.size());
  std::vector<uint64_t> expected;
  for (const TensorInfo& t : tensors) {
    expected.push_back(TensorChecksum(data.data() + t.offset, t.size));
  }
  for (int threads : {-1, 0, 1, 2, 3, 8, 64}) {
    SCOPED_TRACE(threads);
    EXPECT_EQ(ChecksumTensors(data.data(), tensors, threads), expected);
  }
  EXPECT_TRUE(ChecksumTensors(data.data(), {}, 4).empty());
}

}  // namespace
}  // namespace ferry::weights
