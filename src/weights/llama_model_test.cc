#include "weights/llama_model.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/testing/test_certs.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "weights/tensor_checksum.h"

namespace ferry::weights {
namespace {

using ::ferry::testing::TempDir;
using ::testing::HasSubstr;

uint64_t Total(const std::vector<TensorInfo>& tensors) {
  return tensors.back().offset + tensors.back().size;
}

TEST(LlamaModelTest, LayoutTotalIsJustUnderTheRequest) {
  for (uint64_t request : {1ull << 20, 64ull << 20, 1ull << 30, 16ull << 30, 1000003ull}) {
    SCOPED_TRACE(request);
    StatusOr<LlamaConfig> config = ChooseLlamaConfig(request);
    ASSERT_TRUE(config.ok()) << config.status();
    StatusOr<std::vector<TensorInfo>> layout = LlamaLayout(request);
    ASSERT_TRUE(layout.ok()) << layout.status();
    const uint64_t total = Total(*layout);
    EXPECT_LE(total, request);
    EXPECT_LE(request - total, 4 * config->hidden_size + 1);
    // Contiguous bf16 tensors with consistent sizes.
    uint64_t offset = 0;
    for (const TensorInfo& t : *layout) {
      EXPECT_EQ(t.offset, offset) << t.name;
      EXPECT_EQ(t.dtype, DType::kBF16);
      uint64_t bytes = 2;
      for (uint64_t d : t.shape) bytes *= d;
      EXPECT_EQ(t.size, bytes) << t.name;
      offset += t.size;
    }
  }
}

TEST(LlamaModelTest, NamesAndShapesFollowLlama) {
  StatusOr<LlamaConfig> config = ChooseLlamaConfig(64ull << 20);
  ASSERT_TRUE(config.ok()) << config.status();
  const LlamaConfig& c = *config;
  EXPECT_EQ(c.hidden_size % 64, 0u);
  EXPECT_EQ(c.intermediate_size, c.hidden_size * 7 / 2);
  EXPECT_EQ(c.num_heads * c.head_dim, c.hidden_size);
  EXPECT_EQ(c.num_heads % c.num_kv_heads, 0u);
  const std::vector<TensorInfo> tensors = LlamaTensors(c);
  ASSERT_EQ(tensors.size(), 3 + 9 * c.num_layers);
  const uint64_t h = c.hidden_size;
  const uint64_t kv = c.num_kv_heads * c.head_dim;
  EXPECT_EQ(tensors[0].name, "model.embed_tokens.weight");
  EXPECT_EQ(tensors[0].shape, (std::vector<uint64_t>{c.vocab_size, h}));
  const std::string last_layer = absl::StrCat("model.layers.", c.num_layers - 1, ".");
  const std::vector<std::pair<std::string, std::vector<uint64_t>>> layer = {
      {"self_attn.q_proj.weight", {h, h}},
      {"self_attn.k_proj.weight", {kv, h}},
      {"self_attn.v_proj.weight", {kv, h}},
      {"self_attn.o_proj.weight", {h, h}},
      {"mlp.gate_proj.weight", {c.intermediate_size, h}},
      {"mlp.up_proj.weight", {c.intermediate_size, h}},
      {"mlp.down_proj.weight", {h, c.intermediate_size}},
      {"input_layernorm.weight", {h}},
      {"post_attention_layernorm.weight", {h}},
  };
  const size_t base = 1 + 9 * (c.num_layers - 1);
  for (size_t i = 0; i < layer.size(); ++i) {
    EXPECT_EQ(tensors[base + i].name, last_layer + layer[i].first);
    EXPECT_EQ(tensors[base + i].shape, layer[i].second) << layer[i].first;
  }
  EXPECT_EQ(tensors[tensors.size() - 2].name, "model.norm.weight");
  EXPECT_EQ(tensors.back().name, "lm_head.weight");
  EXPECT_EQ(tensors.back().shape, (std::vector<uint64_t>{c.vocab_size, h}));
}

TEST(LlamaModelTest, SixteenGibIsShapedLikeLlama3_8B) {
  StatusOr<LlamaConfig> c = ChooseLlamaConfig(16ull << 30);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_heads, 32u);
  EXPECT_EQ(c->head_dim * 32, c->hidden_size);
  EXPECT_EQ(c->num_kv_heads, 8u);
  EXPECT_EQ(c->intermediate_size, c->hidden_size * 7 / 2);
  EXPECT_GE(c->hidden_size, 4096u);
  EXPECT_LE(c->hidden_size, 4608u);
  EXPECT_EQ(c->num_layers, (c->hidden_size + 64) / 128);
}

TEST(LlamaModelTest, OutOfRangeSizesAreInvalid) {
  for (uint64_t request : {uint64_t{0}, uint64_t{1000}, kMaxLlamaBytes + 1}) {
    SCOPED_TRACE(request);
    StatusOr<std::vector<TensorInfo>> layout = LlamaLayout(request);
    ASSERT_FALSE(layout.ok());
    EXPECT_EQ(layout.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(
        std::string(layout.status().message()),
        HasSubstr(absl::StrCat("Llama model size ", request, " bytes is out of range; ask for ")));
    EXPECT_THAT(std::string(layout.status().message()),
                HasSubstr(absl::StrCat(" to ", kMaxLlamaBytes, " bytes")));
  }
}

TEST(LlamaModelTest, FillIsDeterministicAndSeekable) {
  StatusOr<std::vector<TensorInfo>> layout = LlamaLayout(1 << 20);
  ASSERT_TRUE(layout.ok()) << layout.status();
  const uint64_t total = Total(*layout);
  std::vector<uint8_t> a(total), b(total), c(total);
  FillTensorData(*layout, a.data(), 7);
  FillTensorData(*layout, b.data(), 7);
  FillTensorData(*layout, c.data(), 8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(ChecksumTensors(a.data(), *layout, 2), ChecksumTensors(c.data(), *layout, 2));
  // Tensors get different bytes from each other.
  const TensorInfo& n1 = (*layout)[8];  // input_layernorm of layer 0
  const TensorInfo& n2 = (*layout)[9];  // post_attention_layernorm of layer 0
  ASSERT_EQ(n1.size, n2.size);
  EXPECT_NE(TensorChecksum(a.data() + n1.offset, n1.size),
            TensorChecksum(a.data() + n2.offset, n2.size));
  // Any piece, at any alignment, matches the whole fill.
  const TensorInfo& t = (*layout)[0];
  for (uint64_t begin : {0ull, 1ull, 7ull, 8ull, 13ull, 1001ull}) {
    for (uint64_t size : {0ull, 1ull, 5ull, 8ull, 9ull, 4097ull}) {
      std::vector<uint8_t> piece(size);
      FillTensorBytes(t, 7, begin, piece.data(), size);
      EXPECT_TRUE(std::equal(piece.begin(), piece.end(), a.begin() + t.offset + begin))
          << begin << "+" << size;
    }
  }
}

TEST(LlamaModelTest, WrittenModelReadsBackWithTheGeneratedBytes) {
  TempDir dir;
  const std::string path = dir.path() + "/llama.safetensors";
  ASSERT_TRUE(WriteLlamaModel(path, 3 << 20, 42).ok());
  StatusOr<SafetensorsLayout> read = ReadSafetensorsLayout(path);
  ASSERT_TRUE(read.ok()) << read.status();
  StatusOr<std::vector<TensorInfo>> layout = LlamaLayout(3 << 20);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(read->tensors, *layout);
  EXPECT_EQ(read->metadata.at("format"), "pt");
  EXPECT_EQ(read->metadata.at("ferry.seed"), "42");
  EXPECT_THAT(read->metadata.at("ferry.config"), HasSubstr("hidden_size="));
  std::vector<uint8_t> data(read->data_size), expected(read->data_size);
  ASSERT_TRUE(ReadSafetensorsData(path, *read, data.data(), data.size()).ok());
  FillTensorData(*layout, expected.data(), 42);
  EXPECT_EQ(data, expected);
}

TEST(LlamaModelTest, WriteFailureNamesThePath) {
  TempDir dir;
  const std::string path = dir.path() + "/missing/llama.safetensors";
  const Status s = WriteLlamaModel(path, 1 << 20, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("writing safetensors file " + path));
}

}  // namespace
}  // namespace ferry::weights
