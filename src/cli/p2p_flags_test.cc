#include "cli/p2p_flags.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::cli {
namespace {

using ::testing::HasSubstr;

TEST(BuildIdentityTest, FillsEveryField) {
  IdentityFlags f;
  f.model = "org/model";
  f.framework = "vLLM";
  f.tp = 4;
  f.pp = 2;
  f.ep = 1;
  f.dtype = "bfloat16";
  f.quantization = "fp8";
  f.revision = "abc";
  f.extra = {"k=v", "a=b=c"};
  StatusOr<SourceIdentity> id = BuildIdentity(f);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->model_name(), "org/model");
  EXPECT_EQ(id->backend_framework(), model_express::p2p::BACKEND_FRAMEWORK_VLLM);
  EXPECT_EQ(id->mx_source_type(), model_express::p2p::MX_SOURCE_TYPE_WEIGHTS);
  EXPECT_EQ(id->tensor_parallel_size(), 4u);
  EXPECT_EQ(id->pipeline_parallel_size(), 2u);
  EXPECT_EQ(id->quantization(), "fp8");
  EXPECT_EQ(id->extra_parameters().at("k"), "v");
  EXPECT_EQ(id->extra_parameters().at("a"), "b=c");
}

TEST(BuildIdentityTest, RejectsBadFrameworkAndExtra) {
  IdentityFlags f;
  f.model = "m";
  f.framework = "pytorch";
  EXPECT_THAT(BuildIdentity(f).status().message(), HasSubstr("--framework"));
  f.framework = "sglang";
  f.extra = {"novalue"};
  EXPECT_THAT(BuildIdentity(f).status().message(), HasSubstr("--extra"));
}

TEST(ParseTopologyTest, KeyValuePairs) {
  auto topology = ParseTopology({"rack=r3", "block=b1", "host="});
  ASSERT_TRUE(topology.ok()) << topology.status();
  EXPECT_EQ(*topology,
            (std::map<std::string, std::string>{{"block", "b1"}, {"host", ""}, {"rack", "r3"}}));
  auto no_eq = ParseTopology({"rack"});
  EXPECT_EQ(no_eq.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(no_eq.status().message()),
              HasSubstr("--topology 'rack' is not KEY=VALUE"));
  EXPECT_EQ(ParseTopology({"=r3"}).status().code(), absl::StatusCode::kInvalidArgument);
  auto twice = ParseTopology({"rack=r3", "rack=r4"});
  EXPECT_THAT(std::string(twice.status().message()), HasSubstr("names 'rack' twice"));
}

TEST(BuildEngineOptionsTest, TransportPicksWhatIsEnabled) {
  EngineFlags flags;
  TransportKind kind;
  flags.transport = "tcp";
  StatusOr<TransferEngineOptions> o = BuildEngineOptions(flags, "t", &kind);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(kind, TransportKind::kTcp);
  EXPECT_TRUE(o->enable_tcp);
  EXPECT_FALSE(o->enable_ucx);
  EXPECT_FALSE(o->enable_shm);
  flags.transport = "auto";
  o = BuildEngineOptions(flags, "t", &kind);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->enable_shm && o->enable_ucx && o->enable_tcp);
  flags.transport = "carrier-pigeon";
  EXPECT_EQ(BuildEngineOptions(flags, "t", &kind).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ferry::cli
