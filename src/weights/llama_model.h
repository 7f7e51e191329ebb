// Synthetic Llama-shaped bf16 models of a requested size, for tests and benchmarks: realistic
// tensor names and shapes (Llama-3-8B proportions scaled down or up), deterministic
// pseudo-random contents.
//
// Shape rule, from hidden size h (a multiple of 64): layers = round(h / 128) (at least 1);
// intermediate = 3.5 h; 32 attention heads (16 below h = 2048, 8 below 1024) of h / heads each;
// 8 kv heads (GQA, as Llama 3); the vocabulary is the fine knob. At h = 4096 this is exactly
// Llama-3-8B's body (32 layers, 32 heads of 128, 8 kv heads, intermediate 14336).
// ChooseLlamaConfig picks the largest h whose model with vocab 16 h fits, then the largest vocab
// that fits, so the total is at most the request and within 4 h + 1 bytes of it. Measured:
// 1 MiB -> h 64, 1 layer, 128 bytes short; 64 MiB -> h 512, 4 layers, 1 KiB short;
// 1 GiB -> h 1600, 13 layers, 4 224 bytes short; 16 GiB -> h 4224, 33 layers, 7 936 bytes short.
#ifndef FERRY_WEIGHTS_LLAMA_MODEL_H_
#define FERRY_WEIGHTS_LLAMA_MODEL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "ferry/status.h"
#include "weights/safetensors.h"

namespace ferry::weights {

// Largest approx_bytes accepted (layouts only; writing needs the disk space).
inline constexpr uint64_t kMaxLlamaBytes = 1ull << 40;

struct LlamaConfig {
  uint64_t hidden_size = 0;
  uint64_t intermediate_size = 0;
  uint64_t num_layers = 0;
  uint64_t num_heads = 0;
  uint64_t num_kv_heads = 0;
  uint64_t head_dim = 0;
  uint64_t vocab_size = 0;
};

// The configuration whose bf16 size is closest to approx_bytes from below (see above).
// InvalidArgument if approx_bytes is below the smallest such model (h = 64, one layer: about
// 380 KiB) or above kMaxLlamaBytes; the message gives the bounds.
StatusOr<LlamaConfig> ChooseLlamaConfig(uint64_t approx_bytes);

// The model's tensors, all BF16, in the order embed_tokens, then per layer
// self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, input_layernorm,
// post_attention_layernorm, then model.norm and lm_head; offsets contiguous from 0.
std::vector<TensorInfo> LlamaTensors(const LlamaConfig& config);

// LlamaTensors(ChooseLlamaConfig(approx_bytes)).
StatusOr<std::vector<TensorInfo>> LlamaLayout(uint64_t approx_bytes);

// Writes bytes [begin, begin + size) of tensor `tensor`'s contents into dst. The contents
// depend only on (seed, tensor.name, byte position), so any piece can be generated
// independently and tensors keep their bytes when the layout around them changes.
// REQUIRES: begin + size <= tensor.size.
void FillTensorBytes(const TensorInfo& tensor, uint64_t seed, uint64_t begin, uint8_t* dst,
                     uint64_t size);

// Fills every tensor's range of the data section `data` (FillTensorBytes of the whole tensor).
// REQUIRES: data covers every tensor's [offset, offset + size).
void FillTensorData(const std::vector<TensorInfo>& tensors, uint8_t* data, uint64_t seed);

// Writes LlamaLayout(approx_bytes) filled by FillTensorData(seed) to `path` atomically
// (SafetensorsWriter), generating the data section in 64 MiB pieces so memory stays small for
// any size. Metadata: format=pt and ferry.* keys recording the generator, seed and config.
Status WriteLlamaModel(const std::string& path, uint64_t approx_bytes, uint64_t seed);

}  // namespace ferry::weights

#endif  // FERRY_WEIGHTS_LLAMA_MODEL_H_
