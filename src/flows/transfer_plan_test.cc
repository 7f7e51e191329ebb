#include "flows/transfer_plan.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::weights::internal {
namespace {

using ::testing::HasSubstr;

ferry::v1::TensorEntry Entry(const std::string& name, uint64_t elements, uint32_t region,
                             uint64_t offset) {
  ferry::v1::TensorEntry e;
  e.set_name(name);
  e.set_dtype("U8");
  e.add_shape(elements);
  e.set_size(elements);
  e.set_region(region);
  e.set_offset(offset);
  return e;
}

TEST(TransferPlanTest, LaysTensorsOutInSourceOrderAndCoalescesAdjacentReads) {
  ferry::v1::GetTransferInfoResponse info;
  *info.add_tensors() = Entry("b", 16, 0, 100);
  *info.add_tensors() = Entry("a", 100, 0, 0);
  *info.add_tensors() = Entry("c", 8, 1, 0);
  auto plan = MakePlan(info);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->total, 124u);
  ASSERT_EQ(plan->local.size(), 3u);
  EXPECT_EQ(plan->local[0].name, "a");
  EXPECT_EQ(plan->local[1].offset, 100u);
  std::vector<uint8_t> buffer(plan->total);
  const std::vector<ReadOp> ops = MakeOps(*plan, buffer.data());
  ASSERT_EQ(ops.size(), 2u);  // a+b in region 0 are one read
  EXPECT_EQ(ops[0].length, 116u);
  EXPECT_EQ(ops[1].local, buffer.data() + 116);
}

// A hostile source announced tensors whose sizes, each consistent with its shape, wrapped the
// total around 2^64: the target allocated a few bytes and read 2^63 into them.
TEST(TransferPlanTest, SizesThatOverflowTogetherAreRefused) {
  ferry::v1::GetTransferInfoResponse info;
  *info.add_tensors() = Entry("huge.0", uint64_t{1} << 63, 0, 0);
  *info.add_tensors() = Entry("huge.1", uint64_t{1} << 63, 1, 0);
  *info.add_tensors() = Entry("small", 16, 2, 0);
  auto plan = MakePlan(info);
  ASSERT_EQ(plan.status().code(), absl::StatusCode::kFailedPrecondition) << plan.status();
  EXPECT_THAT(std::string(plan.status().message()),
              HasSubstr("the tensors' sizes together overflow 64 bits"));
}

}  // namespace
}  // namespace ferry::weights::internal
