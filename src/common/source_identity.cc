#include "ferry/source_identity.h"

#include <algorithm>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/hashing.h"
#include "common/unicode_lower.h"
#include "nlohmann/json.hpp"

namespace ferry {
namespace {

using ::ferry::internal::Sha256Hex;

// The identity's string fields, one table for the canonical JSON and the size checks: each is
// lowercased into the JSON, the first five always, the others only when set (contract 3.1).
struct StringField {
  const char* name;
  const std::string& (SourceIdentity::*get)() const;
  bool always;
};
constexpr StringField kStringFields[] = {
    {"model_name", &SourceIdentity::model_name, true},
    {"mx_version", &SourceIdentity::mx_version, true},
    {"dtype", &SourceIdentity::dtype, true},
    {"quantization", &SourceIdentity::quantization, true},
    {"revision", &SourceIdentity::revision, true},
    {"backend_framework_version", &SourceIdentity::backend_framework_version, false},
    {"torch_version", &SourceIdentity::torch_version, false},
    {"cuda_version", &SourceIdentity::cuda_version, false},
    {"triton_version", &SourceIdentity::triton_version, false},
    {"gpu_arch", &SourceIdentity::gpu_arch, false},
    {"compile_config_digest", &SourceIdentity::compile_config_digest, false},
};

// Rust's u64::from_str: an optional leading '+', then one or more ASCII digits, no overflow.
std::optional<uint64_t> ParseU64(std::string_view s) {
  if (!s.empty() && s.front() == '+') s.remove_prefix(1);
  if (s.empty()) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

}  // namespace

StatusOr<std::string> CanonicalIdentityJson(const SourceIdentity& id) {
  // nlohmann::json keeps object keys in a std::map, so every level is sorted bytewise, and
  // dump() with the default ensure_ascii=false writes non-ASCII and U+007F raw, like serde_json.
  // Full Unicode lowercasing (common/unicode_lower.h); the first failure is returned.
  Status failed;
  auto lower = [&failed](std::string_view s) -> std::string {
    StatusOr<std::string> result = internal::UnicodeLower(s);
    if (result.ok()) return *std::move(result);
    if (failed.ok()) failed = result.status();
    return std::string();
  };
  nlohmann::json j;
  j["backend_framework"] = static_cast<int32_t>(id.backend_framework());
  j["expert_parallel_size"] = id.expert_parallel_size();
  j["mx_source_type"] = static_cast<int32_t>(id.mx_source_type());
  j["pipeline_parallel_size"] = id.pipeline_parallel_size();
  j["tensor_parallel_size"] = id.tensor_parallel_size();
  for (const StringField& f : kStringFields) {
    const std::string& value = (id.*f.get)();
    if (f.always || !value.empty()) j[f.name] = lower(value);
  }

  // Sort the original pairs by original key bytes; after lowercasing the key, the first pair
  // wins a collision (contract 3.1 step 2).
  std::vector<std::pair<std::string_view, std::string_view>> pairs;
  pairs.reserve(id.extra_parameters_size());
  for (const auto& [k, v] : id.extra_parameters()) pairs.emplace_back(k, v);
  std::sort(pairs.begin(), pairs.end());
  nlohmann::json extra = nlohmann::json::object();
  for (const auto& [k, v] : pairs) {
    std::string lk = lower(k);
    if (!extra.contains(lk)) extra[lk] = lower(v);
  }
  j["extra_parameters"] = std::move(extra);
  if (!failed.ok()) {
    return Status(failed.code(), absl::StrCat("source identity for model '", id.model_name(),
                                              "': ", failed.message()));
  }
  try {
    return j.dump();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("source identity for model '", id.model_name(),
                                                   "' has a string that is not valid UTF-8 (",
                                                   e.what(), "); send UTF-8 text"));
  }
}

StatusOr<std::string> ComputeMxSourceId(const SourceIdentity& identity) {
  FERRY_ASSIGN_OR_RETURN(std::string json, CanonicalIdentityJson(identity));
  return Sha256Hex(json).substr(0, 16);
}

StatusOr<::model_express::p2p::BackendFramework> ParseBackendFramework(const std::string& name) {
  namespace p2p = ::model_express::p2p;
  const std::string fw = absl::AsciiStrToLower(name);
  if (fw == "vllm") return p2p::BACKEND_FRAMEWORK_VLLM;
  if (fw == "sglang") return p2p::BACKEND_FRAMEWORK_SGLANG;
  if (fw == "trt-llm" || fw == "trtllm" || fw == "tensorrt-llm")
    return p2p::BACKEND_FRAMEWORK_TRT_LLM;
  if (fw == "unknown" || fw.empty()) return p2p::BACKEND_FRAMEWORK_UNKNOWN;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown framework '", name, "'; use vllm, sglang, trt-llm or unknown"));
}

Status ValidateIdentity(const SourceIdentity& id) {
  if (id.model_name().empty()) return absl::InvalidArgumentError("identity.model_name is required");
  for (const StringField& f : kStringFields) {
    const std::string& value = (id.*f.get)();
    if (value.size() > kMaxIdentityStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat("identity.", f.name, " is ", value.size(),
                                                     " bytes; the limit is ",
                                                     kMaxIdentityStringBytes, " bytes"));
    }
  }
  if (static_cast<size_t>(id.extra_parameters_size()) > kMaxExtraParameters) {
    return absl::InvalidArgumentError(absl::StrCat("identity.extra_parameters has ",
                                                   id.extra_parameters_size(),
                                                   " entries; the limit is ", kMaxExtraParameters));
  }
  for (const auto& [k, v] : id.extra_parameters()) {
    if (k.size() > kMaxIdentityStringBytes || v.size() > kMaxIdentityStringBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("identity.extra_parameters entry '", k.substr(0, 64), "' is longer than ",
                       kMaxIdentityStringBytes, " bytes (key or value)"));
    }
  }
  return absl::OkStatus();
}

std::optional<uint64_t> TrainingStepOf(const SourceIdentity& identity) {
  const auto& extra = identity.extra_parameters();
  if (auto it = extra.find("training_step"); it != extra.end()) return ParseU64(it->second);
  if (auto it = extra.find("version"); it != extra.end()) return ParseU64(it->second);
  return std::nullopt;
}

std::optional<std::string> LayoutSignatureOf(const SourceIdentity& identity) {
  const auto& extra = identity.extra_parameters();
  auto it = extra.find("layout_signature");
  if (it == extra.end() || it->second.empty()) return std::nullopt;
  return it->second;
}

}  // namespace ferry
