#include "cuda/tree_checksum.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <xxhash.h>

#include <cstring>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "cuda/device_checksum.h"
#include "cuda/driver.h"
#include "cuda/tree_checksum_kernel.h"
#include "cuda/xxh3_core.h"

namespace ferry::internal::cuda {
namespace {

using ::testing::HasSubstr;

std::vector<uint8_t> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> bytes(n + 8);
  for (size_t i = 0; i < bytes.size(); i += 8) {
    const uint64_t v = rng();
    std::memcpy(&bytes[i], &v, std::min<size_t>(8, bytes.size() - i));
  }
  bytes.resize(n);
  return bytes;
}

// ---- xxh3_core.h against libxxhash ----

TEST(Xxh3CoreTest, EqualsLibxxhashForEveryLengthUpTo2100) {
  const std::vector<uint8_t> data = RandomBytes(2100 + 8, 1);
  for (size_t len = 0; len <= 2100; ++len) {
    // Every start offset modulo 8, so unaligned reads are covered too.
    const uint8_t* p = data.data() + len % 8;
    const uint64_t expected = XXH3_64bits(p, len);
    ASSERT_EQ(xxh3::Hash64(p, len), expected) << "len " << len;
    if (len > xxh3::kMidSizeMax) {
      ASSERT_EQ(xxh3::Hash64LongByLanes(p, len), expected) << "lane-split, len " << len;
    } else {
      ASSERT_EQ(xxh3::Hash64Short(p, len), expected) << "short, len " << len;
    }
  }
}

TEST(Xxh3CoreTest, EqualsLibxxhashAroundStripeAndBlockBoundariesUpToMiBs) {
  const size_t max_len = 5 * 1024 * 1024 + 1024;
  const std::vector<uint8_t> data = RandomBytes(max_len + 8, 2);
  std::set<size_t> lengths;
  for (size_t blocks : {1, 2, 3, 15, 16, 17, 63, 64, 65, 100, 1023, 1024, 1025, 4096, 5120}) {
    for (int delta : {-65, -64, -63, -2, -1, 0, 1, 2, 63, 64, 65}) {
      lengths.insert(blocks * xxh3::kBlockBytes + delta);
    }
  }
  for (size_t len : {241, 255, 256, 257, 511, 512, 513, 1000, 3 * 1024 * 1024 + 17}) {
    lengths.insert(len);
  }
  for (size_t len : lengths) {
    ASSERT_LE(len, max_len);
    for (size_t offset : {0, 3}) {
      const uint8_t* p = data.data() + offset;
      const uint64_t expected = XXH3_64bits(p, len);
      ASSERT_EQ(xxh3::Hash64(p, len), expected) << "len " << len << " offset " << offset;
      ASSERT_EQ(xxh3::Hash64LongByLanes(p, len), expected)
          << "lane-split, len " << len << " offset " << offset;
    }
  }
}

TEST(Xxh3CoreTest, EmptyInputMayBeNull) { EXPECT_EQ(xxh3::Hash64(nullptr, 0), XXH3_64bits("", 0)); }

// ---- the tree ----

// The tree computed directly from libxxhash, as the algorithm is specified.
struct Reference {
  std::vector<uint64_t> leaves;
  uint64_t root = 0;
};

Reference ReferenceTree(const uint8_t* data, uint64_t n) {
  Reference ref;
  for (uint64_t begin = 0; begin < n; begin += 65536) {
    ref.leaves.push_back(XXH3_64bits(data + begin, std::min<uint64_t>(65536, n - begin)));
  }
  std::vector<uint8_t> encoded;
  for (uint64_t leaf : ref.leaves) {
    for (int i = 0; i < 8; ++i) encoded.push_back(static_cast<uint8_t>(leaf >> (8 * i)));
  }
  ref.root = XXH3_64bits(encoded.data(), encoded.size());
  return ref;
}

TEST(TreeChecksumTest, NameAndLeafSize) {
  EXPECT_EQ(std::string_view(kTreeChecksumAlgorithm), "xxh3-64-tree-64k");
  EXPECT_EQ(kTreeLeafBytes, 65536u);
  EXPECT_EQ(TreeLeafCount(0), 0u);
  EXPECT_EQ(TreeLeafCount(1), 1u);
  EXPECT_EQ(TreeLeafCount(65536), 1u);
  EXPECT_EQ(TreeLeafCount(65537), 2u);
}

TEST(TreeChecksumTest, EmptyRangeHasNoLeavesAndTheEmptyHashAsRoot) {
  EXPECT_EQ(TreeRoot(nullptr, 0), XXH3_64bits("", 0));
  EXPECT_EQ(TreeChecksum(nullptr, 0, 1), XXH3_64bits("", 0));
  EXPECT_EQ(TreeChecksum(nullptr, 0, 4), XXH3_64bits("", 0));
}

TEST(TreeChecksumTest, MatchesTheLibxxhashReference) {
  const std::vector<uint8_t> data = RandomBytes(7 * 1024 * 1024 + 12345, 3);
  for (uint64_t n : {uint64_t{1}, uint64_t{240}, uint64_t{241}, uint64_t{65535}, uint64_t{65536},
                     uint64_t{65537}, uint64_t{65536 + 240}, uint64_t{65536 + 241},
                     uint64_t{3 * 65536}, uint64_t{data.size()}}) {
    const Reference ref = ReferenceTree(data.data(), n);
    ASSERT_EQ(TreeLeafCount(n), ref.leaves.size()) << "n " << n;
    for (int threads : {1, 4}) {
      std::vector<uint64_t> leaves(TreeLeafCount(n), 0);
      TreeLeafHashes(data.data(), n, leaves.data(), threads);
      EXPECT_EQ(leaves, ref.leaves) << "n " << n << " threads " << threads;
      EXPECT_EQ(TreeRoot(leaves.data(), leaves.size()), ref.root) << "n " << n;
      EXPECT_EQ(TreeChecksum(data.data(), n, threads), ref.root)
          << "n " << n << " threads " << threads;
    }
  }
}

TEST(TreeChecksumTest, ThreadCountsGiveIdenticalLeaves) {
  const std::vector<uint8_t> data = RandomBytes(5 * 1024 * 1024 + 777, 4);
  std::vector<uint64_t> one(TreeLeafCount(data.size()));
  TreeLeafHashes(data.data(), data.size(), one.data(), 1);
  // 4; 7 (uneven runs); more threads than leaves; 0 and negative mean the calling thread.
  for (int threads : {4, 7, 1000, 0, -3}) {
    std::vector<uint64_t> many(one.size(), 0);
    TreeLeafHashes(data.data(), data.size(), many.data(), threads);
    EXPECT_EQ(many, one) << "threads " << threads;
  }
}

TEST(TreeChecksumTest, EachLeafVerifiesAlone) {
  // A receiver checks each staged piece as it lands: the leaf hash of the piece's bytes equals
  // the sender's leaf hash.
  const std::vector<uint8_t> data = RandomBytes(3 * 65536 + 1000, 5);
  std::vector<uint64_t> leaves(TreeLeafCount(data.size()));
  TreeLeafHashes(data.data(), data.size(), leaves.data(), 2);
  for (uint64_t i = 0; i < leaves.size(); ++i) {
    const uint64_t begin = i * kTreeLeafBytes;
    const uint64_t size = std::min<uint64_t>(kTreeLeafBytes, data.size() - begin);
    std::vector<uint8_t> piece(data.begin() + begin, data.begin() + begin + size);
    EXPECT_EQ(TreeLeafHash(piece.data(), piece.size()), leaves[i]) << "leaf " << i;
  }
  std::vector<uint8_t> corrupted = data;
  corrupted[65536 + 17] ^= 1;
  EXPECT_NE(TreeLeafHash(corrupted.data() + 65536, 65536), leaves[1]);
  EXPECT_EQ(TreeLeafHash(corrupted.data(), 65536), leaves[0]);
}

// ---- the embedded kernel ----

#ifdef FERRY_WITH_CUDA

// One entry of a fatbin: the container is a 16-byte header (magic 0xBA55ED50, version, header
// size, payload size) followed by entries, each a header (kind 1 = PTX, 2 = ELF; header size;
// payload size; at byte 28 the SM the entry is for) and its payload.
struct FatbinEntry {
  uint16_t kind = 0;
  uint32_t arch = 0;
  std::string_view payload;
};

template <typename T>
T ReadAt(std::string_view bytes, size_t offset) {
  T v{};
  if (offset + sizeof(T) <= bytes.size()) std::memcpy(&v, bytes.data() + offset, sizeof(T));
  return v;
}

std::vector<FatbinEntry> ParseFatbin(std::string_view image) {
  std::vector<FatbinEntry> entries;
  const size_t end = ReadAt<uint16_t>(image, 6) + ReadAt<uint64_t>(image, 8);
  size_t offset = ReadAt<uint16_t>(image, 6);
  while (offset + 32 <= end && end <= image.size()) {
    FatbinEntry e;
    e.kind = ReadAt<uint16_t>(image, offset);
    const uint32_t header_size = ReadAt<uint32_t>(image, offset + 4);
    const uint64_t payload_size = ReadAt<uint64_t>(image, offset + 8);
    e.arch = ReadAt<uint32_t>(image, offset + 28);
    if (header_size == 0 || offset + header_size + payload_size > end) break;
    e.payload = image.substr(offset + header_size, payload_size);
    entries.push_back(e);
    offset += header_size + payload_size;
  }
  return entries;
}

TEST(TreeKernelFatbinTest, HasSassForSm80Sm90Sm100AndPtxForCompute100) {
  ASSERT_NE(TreeKernelFatbin(), nullptr);
  ASSERT_GT(TreeKernelFatbinSize(), 16u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(TreeKernelFatbin()) % 8, 0u);
  const std::string_view image(reinterpret_cast<const char*>(TreeKernelFatbin()),
                               TreeKernelFatbinSize());
  ASSERT_EQ(ReadAt<uint32_t>(image, 0), 0xBA55ED50u) << "not a fatbin";
  ASSERT_EQ(ReadAt<uint16_t>(image, 6) + ReadAt<uint64_t>(image, 8), image.size());

  std::set<uint32_t> elf_sms;
  std::set<uint32_t> ptx_sms;
  for (const FatbinEntry& e : ParseFatbin(image)) {
    if (e.kind == 2) {
      // A CUDA ELF (e_machine 190, EM_CUDA) whose e_flags name the same SM (bits 8-15 from ELF
      // ABI version 8 on, bits 0-7 before), holding the kernel's symbol.
      ASSERT_EQ(e.payload.substr(0, 4),
                "\x7f"
                "ELF");
      EXPECT_EQ(ReadAt<uint16_t>(e.payload, 18), 190);
      const uint32_t flags = ReadAt<uint32_t>(e.payload, 48);
      const uint32_t elf_sm =
          static_cast<uint8_t>(e.payload[8]) >= 8 ? (flags >> 8) & 0xff : flags & 0xff;
      EXPECT_EQ(elf_sm, e.arch);
      EXPECT_NE(e.payload.find(kTreeKernelName), std::string_view::npos) << "sm_" << e.arch;
      elf_sms.insert(e.arch);
    } else if (e.kind == 1) {
      // Uncompressed PTX text (nvcc --no-compress) for that virtual architecture.
      EXPECT_THAT(std::string(e.payload), HasSubstr(".target sm_" + std::to_string(e.arch)));
      EXPECT_THAT(std::string(e.payload), HasSubstr(std::string(".entry ") + kTreeKernelName));
      ptx_sms.insert(e.arch);
    }
  }
  EXPECT_EQ(elf_sms, (std::set<uint32_t>{80, 90, 100}));
  EXPECT_EQ(ptx_sms, (std::set<uint32_t>{100}));
}

#else  // FERRY_CUDA=OFF

TEST(DeviceChecksummerOffTest, NoDriverSoNoChecksummer) {
  // DeviceChecksummer::Create needs a Driver, and an OFF build has none to give: the way to it
  // (Driver::Default or Open) answers kBuiltWithoutCuda, which is what a caller sees.
  auto driver = Driver::Default();
  ASSERT_EQ(driver.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(driver.status().message(), kBuiltWithoutCuda);
}

#endif

}  // namespace
}  // namespace ferry::internal::cuda
