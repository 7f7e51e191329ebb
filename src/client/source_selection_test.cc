#include "client/source_selection.h"

#include <map>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry {
namespace {

SourceInstanceRef Ref(std::string source, std::string worker, uint32_t rank,
                      std::string accelerator = "") {
  SourceInstanceRef r;
  r.set_mx_source_id(std::move(source));
  r.set_worker_id(std::move(worker));
  r.set_worker_rank(rank);
  r.set_accelerator(std::move(accelerator));
  return r;
}

TEST(AcceleratorsCompatibleTest, FollowsModelExpressRules) {
  EXPECT_TRUE(AcceleratorsCompatible("", "cuda", "bfloat16", ""));
  EXPECT_TRUE(AcceleratorsCompatible("cpu", "", "bfloat16", ""));
  EXPECT_TRUE(AcceleratorsCompatible("CUDA", "cuda", "fp8", "fp8"));
  EXPECT_TRUE(AcceleratorsCompatible("cuda", "xpu", "torch.bfloat16", "none"));
  EXPECT_FALSE(AcceleratorsCompatible("cuda", "xpu", "bfloat16", "awq"));
  EXPECT_FALSE(AcceleratorsCompatible("xpu", "cuda", "int8", ""));
  EXPECT_FALSE(AcceleratorsCompatible("cuda", "cpu", "bfloat16", ""));
}

TEST(OrderCandidatesTest, KeepsRankAndCompatibleAcceleratorOnly) {
  SourceSelection sel{
      .model_name = "m", .worker_rank = 1, .accelerator = "cpu", .target_worker_id = "t"};
  std::vector<SourceInstanceRef> refs = {Ref("s", "a", 0, "cpu"), Ref("s", "b", 1, "cpu"),
                                         Ref("s", "c", 1, "cuda"), Ref("s", "d", 1, "")};
  std::vector<SourceInstanceRef> out = OrderCandidates(refs, sel);
  std::set<std::string> ids;
  for (const auto& r : out) ids.insert(r.worker_id());
  EXPECT_EQ(ids, (std::set<std::string>{"b", "d"}));
}

TEST(OrderCandidatesTest, OrderIsByDescendingScoreAndStable) {
  SourceSelection sel{.model_name = "m", .worker_rank = 0, .target_worker_id = "target-1"};
  std::vector<SourceInstanceRef> refs;
  for (int i = 0; i < 20; ++i) refs.push_back(Ref("s", "w" + std::to_string(i), 0));
  std::vector<SourceInstanceRef> out = OrderCandidates(refs, sel);
  ASSERT_EQ(out.size(), 20u);
  for (size_t i = 1; i < out.size(); ++i) {
    EXPECT_GE(RendezvousScore("m", "target-1", 0, out[i - 1]),
              RendezvousScore("m", "target-1", 0, out[i]));
  }
  std::reverse(refs.begin(), refs.end());
  std::vector<SourceInstanceRef> again = OrderCandidates(refs, sel);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i].worker_id(), again[i].worker_id());
}

TEST(OrderCandidatesTest, ManyTargetsSpreadOverSources) {
  // 4 sources, 400 targets: each source is some target's first choice about 100 times.
  std::vector<SourceInstanceRef> refs;
  for (int i = 0; i < 4; ++i) refs.push_back(Ref("s", "w" + std::to_string(i), 0));
  std::map<std::string, int> first;
  for (int t = 0; t < 400; ++t) {
    SourceSelection sel{
        .model_name = "m", .worker_rank = 0, .target_worker_id = "t" + std::to_string(t)};
    first[OrderCandidates(refs, sel).front().worker_id()]++;
  }
  ASSERT_EQ(first.size(), 4u);
  for (const auto& [id, n] : first) {
    EXPECT_GT(n, 60) << id;
    EXPECT_LT(n, 140) << id;
  }
}

}  // namespace
}  // namespace ferry
