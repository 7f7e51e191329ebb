#include "weights/llama_model.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"

namespace ferry::weights {
namespace {

constexpr uint64_t kBytesPerParam = 2;  // bf16
constexpr uint64_t kHiddenStep = 64;
constexpr uint64_t kMaxHidden = 1 << 16;
constexpr uint64_t kWriteChunkBytes = 64ull << 20;

// The shape rule of the header comment, for hidden size h, with the vocabulary left at 0.
LlamaConfig ShapeFor(uint64_t h) {
  LlamaConfig c;
  c.hidden_size = h;
  c.intermediate_size = h * 7 / 2;
  c.num_layers = std::max<uint64_t>(1, (h + 64) / 128);
  // h is a multiple of 64, so head_dim = h / num_heads is a whole (even) number.
  c.num_heads = h >= 2048 ? 32 : (h >= 1024 ? 16 : 8);
  c.head_dim = h / c.num_heads;
  c.num_kv_heads = 8;
  return c;
}

// Parameters other than embed_tokens and lm_head.
uint64_t BodyParams(const LlamaConfig& c) {
  const uint64_t h = c.hidden_size;
  const uint64_t kv_dim = c.num_kv_heads * c.head_dim;
  const uint64_t per_layer = 2 * h * h + 2 * h * kv_dim + 3 * h * c.intermediate_size + 2 * h;
  return c.num_layers * per_layer + h;
}

uint64_t TotalBytes(const LlamaConfig& c) {
  return kBytesPerParam * (BodyParams(c) + 2 * c.vocab_size * c.hidden_size);
}

uint64_t SplitMix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

}  // namespace

StatusOr<LlamaConfig> ChooseLlamaConfig(uint64_t approx_bytes) {
  auto min_model = [](uint64_t h) {
    LlamaConfig c = ShapeFor(h);
    c.vocab_size = 16 * h;
    return c;
  };
  const uint64_t smallest = TotalBytes(min_model(kHiddenStep));
  if (approx_bytes < smallest || approx_bytes > kMaxLlamaBytes) {
    return absl::InvalidArgumentError(absl::StrCat("Llama model size ", approx_bytes,
                                                   " bytes is out of range; ask for ", smallest,
                                                   " to ", kMaxLlamaBytes, " bytes"));
  }
  uint64_t h = kHiddenStep;
  while (h + kHiddenStep <= kMaxHidden && TotalBytes(min_model(h + kHiddenStep)) <= approx_bytes) {
    h += kHiddenStep;
  }
  LlamaConfig c = ShapeFor(h);
  c.vocab_size = (approx_bytes / kBytesPerParam - BodyParams(c)) / (2 * h);
  return c;
}

std::vector<TensorInfo> LlamaTensors(const LlamaConfig& c) {
  const uint64_t h = c.hidden_size;
  const uint64_t kv_dim = c.num_kv_heads * c.head_dim;
  std::vector<TensorInfo> tensors;
  tensors.reserve(4 + 9 * c.num_layers);
  uint64_t offset = 0;
  auto add = [&](std::string name, std::vector<uint64_t> shape) {
    uint64_t bytes = kBytesPerParam;
    for (uint64_t d : shape) bytes *= d;
    tensors.push_back({std::move(name), DType::kBF16, std::move(shape), offset, bytes});
    offset += bytes;
  };
  add("model.embed_tokens.weight", {c.vocab_size, h});
  for (uint64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    add(p + "self_attn.q_proj.weight", {h, h});
    add(p + "self_attn.k_proj.weight", {kv_dim, h});
    add(p + "self_attn.v_proj.weight", {kv_dim, h});
    add(p + "self_attn.o_proj.weight", {h, h});
    add(p + "mlp.gate_proj.weight", {c.intermediate_size, h});
    add(p + "mlp.up_proj.weight", {c.intermediate_size, h});
    add(p + "mlp.down_proj.weight", {h, c.intermediate_size});
    add(p + "input_layernorm.weight", {h});
    add(p + "post_attention_layernorm.weight", {h});
  }
  add("model.norm.weight", {h});
  add("lm_head.weight", {c.vocab_size, h});
  return tensors;
}

StatusOr<std::vector<TensorInfo>> LlamaLayout(uint64_t approx_bytes) {
  FERRY_ASSIGN_OR_RETURN(LlamaConfig config, ChooseLlamaConfig(approx_bytes));
  return LlamaTensors(config);
}

void FillTensorBytes(const TensorInfo& tensor, uint64_t seed, uint64_t begin, uint8_t* dst,
                     uint64_t size) {
  // Byte p of the tensor is byte p % 8 (little-endian) of SplitMix64(key + (p / 8) * kGolden):
  // a counter-based generator, so any range can be produced on its own.
  const uint64_t key = SplitMix64(seed ^ XXH3_64bits(tensor.name.data(), tensor.name.size()));
  uint64_t word = begin / 8;
  uint64_t skip = begin % 8;
  while (size > 0) {
    if (skip == 0 && size >= 8) {
      // Whole words; the loop below is the hot path.
      const uint64_t words = size / 8;
      for (uint64_t i = 0; i < words; ++i) {
        const uint64_t w = SplitMix64(key + (word + i) * kGolden);
        std::memcpy(dst + 8 * i, &w, 8);
      }
      word += words;
      dst += 8 * words;
      size -= 8 * words;
      continue;
    }
    const uint64_t v = SplitMix64(key + word * kGolden);
    uint8_t bytes[8];
    std::memcpy(bytes, &v, 8);
    const uint64_t n = std::min<uint64_t>(8 - skip, size);
    std::memcpy(dst, bytes + skip, n);
    dst += n;
    size -= n;
    skip = 0;
    ++word;
  }
}

void FillTensorData(const std::vector<TensorInfo>& tensors, uint8_t* data, uint64_t seed) {
  for (const TensorInfo& t : tensors) FillTensorBytes(t, seed, 0, data + t.offset, t.size);
}

Status WriteLlamaModel(const std::string& path, uint64_t approx_bytes, uint64_t seed) {
  FERRY_ASSIGN_OR_RETURN(LlamaConfig c, ChooseLlamaConfig(approx_bytes));
  const std::vector<TensorInfo> tensors = LlamaTensors(c);
  const uint64_t data_size = tensors.back().offset + tensors.back().size;
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"},
      {"ferry.generator", "llama_model"},
      {"ferry.seed", absl::StrCat(seed)},
      {"ferry.config",
       absl::StrCat("hidden_size=", c.hidden_size, " intermediate_size=", c.intermediate_size,
                    " num_layers=", c.num_layers, " num_heads=", c.num_heads, " num_kv_heads=",
                    c.num_kv_heads, " head_dim=", c.head_dim, " vocab_size=", c.vocab_size)},
  };
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                         SafetensorsWriter::Create(path, tensors, metadata, data_size));
  const uint64_t chunk = std::min(kWriteChunkBytes, data_size);
  std::unique_ptr<uint8_t[]> buffer(new uint8_t[chunk]);
  size_t ti = 0;
  for (uint64_t pos = 0; pos < data_size;) {
    const uint64_t len = std::min(chunk, data_size - pos);
    for (uint64_t p = pos; p < pos + len;) {
      while (tensors[ti].offset + tensors[ti].size <= p) ++ti;
      const TensorInfo& t = tensors[ti];
      const uint64_t n = std::min(t.offset + t.size, pos + len) - p;
      FillTensorBytes(t, seed, p - t.offset, buffer.get() + (p - pos), n);
      p += n;
    }
    FERRY_RETURN_IF_ERROR(writer->Append(buffer.get(), len));
    pos += len;
  }
  return writer->Commit();
}

}  // namespace ferry::weights
