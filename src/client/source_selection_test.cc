#include "client/source_selection.h"

#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry {
namespace {

using ::ferry::testing::IsOk;
using ::ferry::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

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

std::vector<std::string> WorkerIds(const std::vector<SourceInstanceRef>& refs) {
  std::vector<std::string> ids;
  for (const auto& r : refs) ids.push_back(r.worker_id());
  return ids;
}

SourceSelection Target() {
  SourceSelection sel;
  sel.model_name = "m";
  sel.target_worker_id = "target-1";
  return sel;
}

TEST(OrderCandidatesTest, LowerLoadFirstAndAllZeroIsRendezvousOrder) {
  std::vector<SourceInstanceRef> refs;
  for (int i = 0; i < 8; ++i) refs.push_back(Ref("s", absl::StrCat("w", i), 0));
  const std::vector<std::string> rendezvous = WorkerIds(OrderCandidates(refs, Target()));
  // Reported zeros (and no reports at all) leave the rendezvous order.
  for (auto& r : refs) r.set_source_load(0.0f);
  EXPECT_EQ(WorkerIds(OrderCandidates(refs, Target())), rendezvous);
  // A fully busy source sinks below every idle one, whatever its rendezvous score.
  const std::string busy = rendezvous.front();
  for (auto& r : refs) {
    if (r.worker_id() == busy) r.set_source_load(1.0f);
  }
  std::vector<std::string> ordered = WorkerIds(OrderCandidates(refs, Target()));
  EXPECT_EQ(ordered.back(), busy);
  ordered.pop_back();
  std::vector<std::string> rest(rendezvous.begin() + 1, rendezvous.end());
  EXPECT_EQ(ordered, rest);
  // load_weight 0 ignores loads.
  SourceSelection ignore = Target();
  ignore.load_weight = 0;
  EXPECT_EQ(WorkerIds(OrderCandidates(refs, ignore)), rendezvous);
}

TEST(OrderCandidatesTest, UnknownLoadRanksBetweenIdleAndBusy) {
  std::vector<SourceInstanceRef> refs = {Ref("s", "idle", 0), Ref("s", "unknown", 0),
                                         Ref("s", "busy", 0)};
  refs[0].set_source_load(0.0f);
  refs[2].set_source_load(1.0f);
  SourceSelection sel = Target();
  sel.load_weight = 10;  // the load term dominates the rendezvous term in [0, 1)
  EXPECT_THAT(WorkerIds(OrderCandidates(refs, sel)),
              ::testing::ElementsAre("idle", "unknown", "busy"));
}

TEST(OrderCandidatesTest, NarrowestSharedTopologyDomainFirst) {
  auto with = [](SourceInstanceRef r, std::map<std::string, std::string> topo) {
    r.mutable_topology()->insert(topo.begin(), topo.end());
    return r;
  };
  std::vector<SourceInstanceRef> refs = {
      with(Ref("s", "other-region", 0), {{"region", "eu"}, {"zone", "a"}, {"rack", "r3"}}),
      with(Ref("s", "same-zone", 0), {{"region", "us"}, {"zone", "a"}, {"rack", "r9"}}),
      with(Ref("s", "unknown", 0), {}),
      with(Ref("s", "same-rack", 0), {{"region", "us"}, {"zone", "a"}, {"rack", "r3"}}),
  };
  refs[3].set_source_load(0.9f);  // busy, but the only one on our rack: locality comes first
  SourceSelection sel = Target();
  sel.topology = {{"region", "us"}, {"zone", "a"}, {"rack", "r3"}};
  std::vector<std::string> ordered = WorkerIds(OrderCandidates(refs, sel));
  ASSERT_EQ(ordered.size(), 4u);
  EXPECT_EQ(ordered[0], "same-rack");
  EXPECT_EQ(ordered[1], "same-zone");
  // Neither shares a domain (depth -1): their order is the rendezvous one.
  EXPECT_THAT(std::vector<std::string>(ordered.begin() + 2, ordered.end()),
              ::testing::UnorderedElementsAre("other-region", "unknown"));
  // No target topology: pure rendezvous (with the load penalty).
  SourceSelection none = Target();
  std::vector<SourceInstanceRef> plain = refs;
  for (auto& r : plain) r.clear_topology();
  EXPECT_EQ(WorkerIds(OrderCandidates(refs, none)), WorkerIds(OrderCandidates(plain, none)));
}

TEST(SharedTopologyDepthTest, StopsAtTheFirstDisagreement) {
  const auto levels = SourceSelection::DefaultTopologyLevels();
  google::protobuf::Map<std::string, std::string> source;
  source["block"] = "b1";
  source["rack"] = "r3";
  EXPECT_EQ(SharedTopologyDepth(levels, {{"block", "b1"}, {"rack", "r3"}}, source), 4);
  EXPECT_EQ(SharedTopologyDepth(levels, {{"block", "b1"}, {"rack", "r4"}}, source), 3);
  // Another block that reuses the rack's label is not rack-adjacent.
  EXPECT_EQ(SharedTopologyDepth(levels, {{"block", "b2"}, {"rack", "r3"}}, source), -1);
  // A level known on one side only ends the prefix.
  EXPECT_EQ(SharedTopologyDepth(levels, {{"zone", "a"}, {"block", "b1"}}, source), -1);
  EXPECT_EQ(SharedTopologyDepth(levels, {}, source), -1);
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

// TryCandidates over sources that answer with `statuses`, one each, in order.
struct Tried {
  StatusOr<size_t> result;
  std::vector<SourceAttempt> attempts;
};
Tried TryWith(const std::vector<TryVerdict>& verdicts, int max_tries = 16) {
  std::vector<SourceInstanceRef> refs;
  for (size_t i = 0; i < verdicts.size(); ++i) refs.push_back(Ref("s", absl::StrCat("w", i), 0));
  Tried out{absl::UnknownError("not run"), {}};
  size_t calls = 0;
  out.result = TryCandidates(refs, max_tries, "model m", "nothing was written", &out.attempts,
                             [&](const SourceInstanceRef& ref, SourceAttempt* attempt) {
                               attempt->endpoint = absl::StrCat("10.0.0.", calls, ":1");
                               EXPECT_EQ(ref.worker_id(), absl::StrCat("w", calls));
                               return verdicts[calls++];
                             });
  EXPECT_EQ(calls, out.attempts.size());
  return out;
}

TEST(TryCandidatesTest, StopsAtTheFirstSuccess) {
  Tried t = TryWith({absl::UnavailableError("down"), absl::OkStatus(), absl::OkStatus()});
  ASSERT_THAT(t.result, IsOk());
  EXPECT_EQ(*t.result, 1u);
  ASSERT_EQ(t.attempts.size(), 2u);
  EXPECT_THAT(t.attempts[0].status, StatusIs(absl::StatusCode::kUnavailable, "down"));
  EXPECT_EQ(t.attempts[1].endpoint, "10.0.0.1:1");
}

TEST(TryCandidatesTest, MixedFailuresAreUnavailableAndListEveryAttempt) {
  Tried t = TryWith({absl::UnauthenticatedError("bad token"), absl::DataLossError("corrupt"),
                     absl::UnauthenticatedError("bad token")});
  EXPECT_THAT(t.result,
              StatusIs(absl::StatusCode::kUnavailable,
                       "could not pull model m: 3 of 3 READY source(s) tried, all failed "
                       "(nothing was written):\n  [1] worker w0 at 10.0.0.0:1: bad token\n"
                       "  [2] worker w1 at 10.0.0.1:1: corrupt\n"
                       "  [3] worker w2 at 10.0.0.2:1: bad token"));
  EXPECT_EQ(t.attempts.size(), 3u);
}

// Regression: a pull whose every source refused the target's token failed with UNAVAILABLE, so
// ferry.torch.pull_into reported "failed" (fall back) instead of raising as documented.
TEST(TryCandidatesTest, FailuresTheCallerMustActOnKeepTheirSharedCode) {
  for (absl::StatusCode code :
       {absl::StatusCode::kUnauthenticated, absl::StatusCode::kPermissionDenied,
        absl::StatusCode::kFailedPrecondition, absl::StatusCode::kInvalidArgument}) {
    Tried t = TryWith({Status(code, "no"), Status(code, "no")}, 2);
    EXPECT_THAT(t.result, StatusIs(code, AllOf(StartsWith("could not pull model m: 2 of 2 READY "
                                                          "source(s) tried, all failed"),
                                               HasSubstr("[2] worker w1 at 10.0.0.1:1: no"))))
        << code;
  }
  // A code that may pass with time stays UNAVAILABLE, shared or not.
  for (absl::StatusCode code :
       {absl::StatusCode::kUnavailable, absl::StatusCode::kDataLoss,
        absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kResourceExhausted,
        absl::StatusCode::kNotFound, absl::StatusCode::kAborted}) {
    EXPECT_THAT(TryWith({Status(code, "no"), Status(code, "no")}).result,
                StatusIs(absl::StatusCode::kUnavailable, HasSubstr("all failed")))
        << code;
  }
  // Only the attempts tried count: a third source never asked does not change the code.
  EXPECT_THAT(TryWith({absl::PermissionDeniedError("a"), absl::PermissionDeniedError("b"),
                       absl::UnavailableError("never tried")},
                      2)
                  .result,
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("2 of 3 READY")));
}

TEST(TryCandidatesTest, AStopVerdictEndsTheTriesWithItsStatusUnchanged) {
  Tried t = TryWith({absl::UnavailableError("down"),
                     StopTrying(absl::FailedPreconditionError("the model does not match")),
                     absl::OkStatus()});
  EXPECT_THAT(t.result,
              StatusIs(absl::StatusCode::kFailedPrecondition, "the model does not match"));
  ASSERT_EQ(t.attempts.size(), 2u);  // the third source was never tried
  EXPECT_THAT(t.attempts[1].status, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(t.attempts[1].endpoint, "10.0.0.1:1");
  // Any code: the verdict, not the code, stops the tries.
  EXPECT_THAT(TryWith({StopTrying(absl::DataLossError("x")), absl::OkStatus()}).result,
              StatusIs(absl::StatusCode::kDataLoss, "x"));
}

TEST(TryCandidatesTest, NoCandidateIsUnavailable) {
  EXPECT_THAT(TryWith({}).result,
              StatusIs(absl::StatusCode::kUnavailable,
                       "could not pull model m: 0 of 0 READY source(s) tried, all failed "
                       "(nothing was written):"));
}

}  // namespace
}  // namespace ferry
