#include "artifacts/crc32c.h"

#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace ferry::artifacts {
namespace {

std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

nlohmann::json LoadCrcVectors() {
  std::ifstream in(std::string(FERRY_SPEC_DIR) + "/vectors/crc32c.json");
  EXPECT_TRUE(in.good()) << "cannot open " << FERRY_SPEC_DIR
                         << "/vectors/crc32c.json; the shared/ folder must sit beside the repo";
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> out(n);
  for (auto& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

TEST(Crc32cTest, EveryVectorThroughEveryImplementation) {
  nlohmann::json doc = LoadCrcVectors();
  ASSERT_GE(doc["vectors"].size(), 10u);
  for (const auto& v : doc["vectors"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    std::string data = FromHex(v["data_hex"].get<std::string>());
    std::string want = v["crc32c_hex"].get<std::string>();
    EXPECT_EQ(Crc32cHex(Crc32cPortable(data.data(), data.size())), want);
    EXPECT_EQ(Crc32cHex(Crc32c(data.data(), data.size())), want);
    if (Crc32cHardwareAvailable()) {
      EXPECT_EQ(Crc32cHex(Crc32cHardware(data.data(), data.size())), want);
    }
  }
}

TEST(Crc32cTest, ContractExampleAndHexFormat) {
  EXPECT_EQ(Crc32c("123456789", 9), 0xe3069283u);
  EXPECT_EQ(Crc32cHex(0xe3069283u), "e3069283");
  EXPECT_EQ(Crc32cHex(0), "00000000");
  EXPECT_EQ(Crc32cHex(0x0000abcdu), "0000abcd");
  EXPECT_EQ(Crc32c(nullptr, 0), 0u);
}

TEST(Crc32cTest, HardwareMatchesPortableOnRandomBuffersAndUnalignedStarts) {
  if (!Crc32cHardwareAvailable()) GTEST_SKIP() << "this CPU has no SSE4.2 crc32 instruction";
  // Sizes straddle the 8-byte, 3x256 and 3x8192 block boundaries of the hardware path.
  const size_t sizes[] = {0,    1,     7,     8,     9,     767,   768,    769,    1000,
                          4096, 24575, 24576, 24577, 49160, 65536, 100003, 1 << 20};
  std::vector<uint8_t> buf = RandomBytes((1 << 20) + 64, 7);
  for (size_t size : sizes) {
    for (size_t start = 0; start < 9; ++start) {
      SCOPED_TRACE(testing::Message() << "size " << size << " start " << start);
      const uint8_t* p = buf.data() + start;
      EXPECT_EQ(Crc32cHardware(p, size), Crc32cPortable(p, size));
      EXPECT_EQ(Crc32cHardware(p, size, 0x12345678u), Crc32cPortable(p, size, 0x12345678u));
    }
  }
}

TEST(Crc32cTest, IncrementalEqualsOneShotOnRandomSplits) {
  std::vector<uint8_t> buf = RandomBytes(300000, 11);
  const uint32_t whole = Crc32cPortable(buf.data(), buf.size());
  ASSERT_EQ(Crc32c(buf.data(), buf.size()), whole);
  std::mt19937 rng(3);
  for (int trial = 0; trial < 50; ++trial) {
    size_t pos = 0;
    uint32_t hw = 0;
    uint32_t portable = 0;
    while (pos < buf.size()) {
      size_t n = std::min<size_t>(buf.size() - pos, rng() % 70000);
      if (trial % 2 == 0) n = std::min<size_t>(buf.size() - pos, rng() % 40);
      hw = Crc32c(buf.data() + pos, n, hw);
      portable = Crc32cPortable(buf.data() + pos, n, portable);
      pos += n;
    }
    EXPECT_EQ(hw, whole) << "trial " << trial;
    EXPECT_EQ(portable, whole) << "trial " << trial;
  }
}

TEST(Crc32cTest, DetectsASingleFlippedBit) {
  std::vector<uint8_t> buf = RandomBytes(50000, 5);
  uint32_t before = Crc32c(buf.data(), buf.size());
  buf[31337] ^= 0x10;
  EXPECT_NE(Crc32c(buf.data(), buf.size()), before);
  EXPECT_EQ(Crc32c(buf.data(), buf.size()), Crc32cPortable(buf.data(), buf.size()));
}

}  // namespace
}  // namespace ferry::artifacts
