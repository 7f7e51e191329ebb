#include "ferry/source_identity.h"

#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace ferry {
namespace {

using ::testing::HasSubstr;

nlohmann::json LoadVectors(const std::string& file) {
  std::ifstream in(std::string(FERRY_SPEC_DIR) + "/vectors/" + file);
  EXPECT_TRUE(in.good()) << "cannot open " << FERRY_SPEC_DIR << "/vectors/" << file
                         << "; the shared/ folder must sit beside the repository";
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

SourceIdentity FromJson(const nlohmann::json& j) {
  SourceIdentity id;
  auto st = google::protobuf::util::JsonStringToMessage(j.dump(), &id);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return id;
}

TEST(SourceIdentityTest, EveryPublicVectorMatchesTheServer) {
  nlohmann::json doc = LoadVectors("source-identity.json");
  ASSERT_GE(doc["vectors"].size(), 10u);
  for (const auto& v : doc["vectors"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    SourceIdentity id = FromJson(v["identity"]);
    auto json = CanonicalIdentityJson(id);
    ASSERT_TRUE(json.ok()) << json.status();
    EXPECT_EQ(*json, v["server_canonical_json"].get<std::string>());
    auto sid = ComputeMxSourceId(id);
    ASSERT_TRUE(sid.ok());
    EXPECT_EQ(*sid, v["expected_mx_source_id"].get<std::string>());
  }
}

TEST(SourceIdentityTest, UpstreamPins) {
  SourceIdentity id;
  id.set_mx_version("0.5.0");
  id.set_model_name("deepseek-ai/DeepSeek-V3");
  id.set_backend_framework(model_express::p2p::BACKEND_FRAMEWORK_VLLM);
  id.set_tensor_parallel_size(8);
  id.set_pipeline_parallel_size(1);
  id.set_dtype("bfloat16");
  EXPECT_EQ(*ComputeMxSourceId(id), "5a5f555570065064");
  SourceIdentity rev = id;
  rev.set_revision("abc123def4567890");
  EXPECT_EQ(*ComputeMxSourceId(rev), "d0c184b2a9a34c82");
  SourceIdentity extra = id;
  (*extra.mutable_extra_parameters())["Foo"] = "a";
  (*extra.mutable_extra_parameters())["foo"] = "b";
  EXPECT_EQ(*ComputeMxSourceId(extra), "bf71fb9340cd940a");
  // Empty artifact fields hash like missing ones.
  SourceIdentity empty_artifact = id;
  empty_artifact.set_gpu_arch("");
  EXPECT_EQ(*ComputeMxSourceId(empty_artifact), "5a5f555570065064");
  // A set artifact field changes the id, ignoring case.
  SourceIdentity arch = id;
  arch.set_gpu_arch("SM90");
  SourceIdentity arch_lower = id;
  arch_lower.set_gpu_arch("sm90");
  EXPECT_NE(*ComputeMxSourceId(arch), "5a5f555570065064");
  EXPECT_EQ(*ComputeMxSourceId(arch), *ComputeMxSourceId(arch_lower));
}

// Rules beyond the public vectors, with the canonical JSON written out by hand from the contract
// (section 3.1): full Unicode lowercasing and serde_json's escaping.
TEST(SourceIdentityTest, UnicodeAndEscapingFollowTheServerRule) {
  auto model_json = [](const std::string& model_name) {
    SourceIdentity id;
    id.set_model_name(model_name);
    auto json = CanonicalIdentityJson(id);
    EXPECT_TRUE(json.ok());
    const std::string key = "\"model_name\":\"";
    size_t start = json->find(key) + key.size();
    size_t end = json->find("\",\"mx_source_type\"");
    return json->substr(start, end - start);
  };
  // Final capital sigma lowercases to final small sigma (U+03C2), others to U+03C3.
  EXPECT_EQ(model_json("ΟΔΟΣ"), "οδος");
  // U+0130 becomes i + U+0307 (one code point into two).
  EXPECT_EQ(model_json("İ"), "i\xcc\x87");
  // DEL, U+2028 and '/' are raw; control characters use \u00xx with lowercase hex.
  EXPECT_EQ(model_json("a\x7f/\xe2\x80\xa8"), "a\x7f/\xe2\x80\xa8");
  EXPECT_EQ(model_json(std::string("\x1f\x01", 2)), "\\u001f\\u0001");
  EXPECT_EQ(model_json("\b\f\r"), "\\b\\f\\r");
  // Characters outside the BMP stay raw UTF-8 (no surrogate pairs).
  EXPECT_EQ(model_json("\xf0\x9f\x98\x80"), "\xf0\x9f\x98\x80");
}

TEST(SourceIdentityTest, ExtraParameterCollisionFirstOriginalKeyWins) {
  SourceIdentity id;
  id.set_model_name("m");
  (*id.mutable_extra_parameters())["b"] = "X";
  (*id.mutable_extra_parameters())["B"] = "Y";
  (*id.mutable_extra_parameters())["a"] = "1";
  auto json = CanonicalIdentityJson(id);
  ASSERT_TRUE(json.ok());
  EXPECT_THAT(*json, HasSubstr("\"extra_parameters\":{\"a\":\"1\",\"b\":\"y\"}"));
}

TEST(SourceIdentityTest, ValidateIdentityNamesTheField) {
  SourceIdentity id;
  EXPECT_EQ(ValidateIdentity(id).message(), "identity.model_name is required");
  id.set_model_name("m");
  EXPECT_TRUE(ValidateIdentity(id).ok());
  id.set_dtype(std::string(kMaxIdentityStringBytes + 1, 'x'));
  EXPECT_THAT(std::string(ValidateIdentity(id).message()), HasSubstr("identity.dtype"));
  id.clear_dtype();
  for (size_t i = 0; i <= kMaxExtraParameters; ++i) {
    (*id.mutable_extra_parameters())[std::to_string(i)] = "v";
  }
  Status st = ValidateIdentity(id);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("extra_parameters"));
}

TEST(SourceIdentityTest, TrainingStepAndLayoutSignatureVectors) {
  nlohmann::json doc = LoadVectors("extra-parameters-parsing.json");
  for (const auto& v : doc["training_step"]) {
    SourceIdentity id = FromJson(nlohmann::json{{"extra_parameters", v["extra_parameters"]}});
    SCOPED_TRACE(v["extra_parameters"].dump());
    auto got = TrainingStepOf(id);
    if (v["training_step"].is_null()) {
      EXPECT_FALSE(got.has_value());
    } else {
      ASSERT_TRUE(got.has_value());
      EXPECT_EQ(*got, v["training_step"].get<uint64_t>());
    }
  }
  for (const auto& v : doc["layout_signature"]) {
    SourceIdentity id = FromJson(nlohmann::json{{"extra_parameters", v["extra_parameters"]}});
    auto got = LayoutSignatureOf(id);
    if (v["layout_signature"].is_null()) {
      EXPECT_FALSE(got.has_value());
    } else {
      EXPECT_EQ(got, v["layout_signature"].get<std::string>());
    }
  }
}

}  // namespace
}  // namespace ferry
