// SourceIdentity -> mx_source_id, exactly as the ModelExpress server computes it (contract
// section 3): full Unicode lowercasing, sorted compact JSON with raw UTF-8, SHA-256, the first
// 16 lowercase hex characters.
#ifndef FERRY_SOURCE_IDENTITY_H_
#define FERRY_SOURCE_IDENTITY_H_

#include <cstdint>
#include <optional>
#include <string>

#include "ferry/status.h"
#include "model_express/p2p.pb.h"

namespace ferry {

using SourceIdentity = ::model_express::p2p::SourceIdentity;

// The canonical JSON that is hashed. Fails with InvalidArgument if a string field is not valid
// UTF-8 (protobuf guarantees UTF-8 for parsed messages, so this only happens for messages built
// in C++ with bad bytes).
StatusOr<std::string> CanonicalIdentityJson(const SourceIdentity& identity);

// The 16-hex-character mx_source_id of `identity`.
StatusOr<std::string> ComputeMxSourceId(const SourceIdentity& identity);

// Checks the one rule ModelExpress has (model_name required) plus ferry's size limits, so that a
// hostile identity cannot make the server hash megabytes. The message names the field.
Status ValidateIdentity(const SourceIdentity& identity);

// "vllm", "sglang", "trt-llm" (also "trtllm", "tensorrt-llm"), "unknown" or "" (any case) ->
// the BackendFramework value. InvalidArgument listing the names otherwise.
StatusOr<::model_express::p2p::BackendFramework> ParseBackendFramework(const std::string& name);

// Derived ListSources fields (contract 5.3 step 9), read from the original-case
// extra_parameters: training_step (key "training_step", else "version"; u64 with an optional
// leading '+'; present-but-unparsable means absent) and layout_signature (absent when empty).
std::optional<uint64_t> TrainingStepOf(const SourceIdentity& identity);
std::optional<std::string> LayoutSignatureOf(const SourceIdentity& identity);

// Limits enforced by ValidateIdentity.
inline constexpr size_t kMaxIdentityStringBytes = 4096;
inline constexpr size_t kMaxExtraParameters = 1024;

}  // namespace ferry

#endif  // FERRY_SOURCE_IDENTITY_H_
