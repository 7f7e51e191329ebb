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
