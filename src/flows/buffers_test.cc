#include "flows/buffers.h"

#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "weights/tensor_checksum.h"

namespace ferry::weights {
namespace {

using ::testing::HasSubstr;

// Two allocations: `a` (64 floats) holds three tensors (two of them the same range, tied), `b`
// (16 bytes) one.
struct Fixture {
  std::vector<float> a = std::vector<float>(64);
  std::vector<uint8_t> b = std::vector<uint8_t>(16);
  Fixture() {
    std::iota(a.begin(), a.end(), 1.0f);
    std::iota(b.begin(), b.end(), 100);
  }
  BufferSet Set() {
    BufferSet set;
    set.spans = {{a.data(), a.size() * 4}, {b.data(), b.size()}};
    set.buffers = {
        {"first", DType::kF32, {4, 4}, a.data(), 64},
        {"second", DType::kF32, {32}, a.data() + 16, 128},
        {"tied", DType::kF32, {32}, a.data() + 16, 128},
        {"bytes", DType::kU8, {2, 8}, b.data(), 16},
        {"empty", DType::kBF16, {0, 7}, nullptr, 0},
    };
    return set;
  }
};

TEST(BuffersTest, ValidSetWithViewsTiesAndEmptyTensors) {
  Fixture f;
  EXPECT_TRUE(ValidateBufferSet(f.Set()).ok());
}

TEST(BuffersTest, RefusalsNameTheTensor) {
  struct Case {
    std::function<void(BufferSet&)> edit;
    std::string message;
  };
  Fixture f;
  const Case cases[] = {
      {[](BufferSet& s) { s.buffers.clear(); }, "no tensors were given"},
      {[](BufferSet& s) { s.buffers[1].name = ""; }, "a tensor has an empty name"},
      {[](BufferSet& s) { s.buffers[1].name = "first"; }, "tensor first is given twice"},
      {[](BufferSet& s) {
         s.buffers[0].shape = {4, 5};
       },
       "tensor first: 64 bytes do not match shape [4, 5] of F32"},
      {[](BufferSet& s) { s.buffers[3].data = static_cast<uint8_t*>(s.buffers[3].data) + 1; },
       "tensor bytes (16 bytes) lies outside every memory span given"},
      {[](BufferSet& s) {
         s.spans[1] = {s.spans[0].data, 8};
       },
       "two memory spans overlap"},
      {[&f](BufferSet& s) { s.buffers[2].data = f.a.data() + 8; },
       "overlap in memory without being the same range"},
      {[](BufferSet& s) {
         s.buffers = {{"e", DType::kF32, {0}, nullptr, 0}};
       },
       "every tensor is empty"},
      {[](BufferSet& s) {
         s.buffers[0].shape = {UINT64_MAX, 4};
       },
       "overflows"},
  };
  for (const Case& c : cases) {
    BufferSet set = f.Set();
    c.edit(set);
    Status s = ValidateBufferSet(set);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message));
  }
}

TEST(BuffersTest, ServeBuffersRegistersEachSpanOnceInPlace) {
  Fixture f;
  TransferEngineOptions o;
  o.name = "buffers test";
  o.enable_ucx = false;
  o.tcp_listen = "127.0.0.1:0";
  StatusOr<std::unique_ptr<TransferEngine>> engine = TransferEngine::Create(o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  BufferSet set = f.Set();
  StatusOr<ServedModel> model = ServeBuffers(**engine, set);
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_NE(model->region, nullptr);
  ASSERT_EQ(model->extra_regions.size(), 1u);    // two spans, two regions
  EXPECT_EQ(model->region->data(), f.a.data());  // in place, not copied
  EXPECT_EQ(model->extra_regions[0]->data(), f.b.data());
  ASSERT_EQ(model->tensors.size(), 5u);
  ASSERT_EQ(model->tensor_regions.size(), 5u);
  const uint32_t ra = model->region->id();
  const uint32_t rb = model->extra_regions[0]->id();
  EXPECT_EQ(model->tensor_regions, (std::vector<uint32_t>{ra, ra, ra, rb, ra}));
  EXPECT_EQ(model->tensors[1].offset, 64u);
  EXPECT_EQ(model->tensors[2].offset, 64u);
  EXPECT_EQ(model->tensors[3].offset, 0u);
  EXPECT_EQ(model->total_bytes, 64u + 128 + 128 + 16);
  for (size_t i = 0; i < set.buffers.size(); ++i) {
    EXPECT_EQ(model->checksums[i], TensorChecksum(set.buffers[i].data, set.buffers[i].size))
        << set.buffers[i].name;
  }
  (*engine)->Stop();
}

TEST(BuffersTest, ChecksumRangesMatchesOneByOne) {
  std::vector<uint8_t> data(1 << 16);
  std::iota(data.begin(), data.end(), 0);
  std::vector<ByteRange> ranges = {{data.data(), 100},
                                   {data.data() + 7, 60000},
                                   {nullptr, 0},
                                   {data.data() + 100, 1},
                                   {data.data(), 1 << 16}};
  for (int threads : {1, 2, 4}) {
    std::vector<uint64_t> sums = ChecksumRanges(ranges, threads);
    ASSERT_EQ(sums.size(), ranges.size());
    for (size_t i = 0; i < ranges.size(); ++i) {
      EXPECT_EQ(sums[i], TensorChecksum(ranges[i].data, ranges[i].size)) << i;
    }
  }
}

}  // namespace
}  // namespace ferry::weights
