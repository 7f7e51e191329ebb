#include "worker/worker_state.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "weights/dtype.h"

namespace ferry::worker {
namespace {

using ::testing::HasSubstr;

ferry::v1::TensorEntry Entry(std::string name, std::string dtype, uint32_t region, uint64_t offset,
                             uint64_t size) {
  ferry::v1::TensorEntry t;
  t.set_name(std::move(name));
  t.set_dtype(std::move(dtype));
  t.set_region(region);
  t.set_offset(offset);
  t.set_size(size);
  t.set_checksum(0x1234);
  return t;
}

WorkerManifest TwoTensors() {
  WorkerManifest m;
  m.worker_id = "w-1";
  m.worker_rank = 3;
  m.region_base_addresses = {0x10000, 0x90000};
  m.tensors = {Entry("a", "BF16", 0, 0, 64), Entry("b", "F8_E4M3", 1, 128, 32)};
  return m;
}

// The worker serves whatever the safetensors parser accepts (one dtype table, weights/dtype.h):
// a manifest with one tensor of every dtype is valid and each descriptor carries the torch name.
TEST(WorkerStateTest, AcceptsEveryDTypeTheParserAccepts) {
  WorkerManifest m;
  m.worker_id = "w-all";
  m.region_base_addresses = {0x10000};
  uint64_t offset = 0;
  for (const weights::DTypeInfo& d : weights::AllDTypes()) {
    ASSERT_TRUE(weights::ParseDTypeName(d.name).ok());
    m.tensors.push_back(Entry(std::string(d.name), std::string(d.name), 0, offset, 2 * d.size));
    offset += 2 * d.size;
  }
  auto state = WorkerState::Create(m);
  ASSERT_TRUE(state.ok()) << state.status();
  const auto& descriptors = (*state)->tensor_source().tensors();
  ASSERT_EQ(static_cast<size_t>(descriptors.size()), weights::AllDTypes().size());
  for (size_t i = 0; i < weights::AllDTypes().size(); ++i) {
    EXPECT_EQ(descriptors[static_cast<int>(i)].dtype(), weights::AllDTypes()[i].torch_name);
  }
  EXPECT_EQ(descriptors[5].dtype(), "torch.float8_e8m0fnu");  // F8_E8M0
  EXPECT_EQ(descriptors[16].dtype(), "torch.complex64");      // C64
}

TEST(WorkerStateTest, PreparesDescriptorsAndTotals) {
  auto state = WorkerState::Create(TwoTensors());
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ((*state)->total_bytes(), 96u);
  const auto& d = (*state)->tensor_source().tensors();
  ASSERT_EQ(d.size(), 2);
  EXPECT_EQ(d[0].name(), "a");
  EXPECT_EQ(d[0].addr(), 0x10000u);
  EXPECT_EQ(d[0].dtype(), "torch.bfloat16");
  EXPECT_EQ(d[1].addr(), 0x90000u + 128);
  EXPECT_EQ(d[1].size(), 32u);
  EXPECT_EQ(d[1].device_id(), 0u);
  EXPECT_EQ(d[1].dtype(), "torch.float8_e4m3fn");
}

TEST(WorkerStateTest, RejectsUnusableManifests) {
  struct Case {
    std::function<void(WorkerManifest*)> mutate;
    std::string message;
  };
  const Case cases[] = {
      {[](WorkerManifest* m) { m->worker_id.clear(); }, "WorkerManifest.worker_id is empty"},
      {[](WorkerManifest* m) { m->tensors[1].set_name(""); }, "has an empty name"},
      {[](WorkerManifest* m) { m->tensors[1].set_name("a"); },
       "tensors[1] 'a' of worker w-1: "
       "repeats a name"},
      {[](WorkerManifest* m) { m->tensors[0].set_dtype("Q4"); },
       "tensors[0] 'a' of worker w-1: unknown dtype \"Q4\"; valid dtypes: BOOL, U8"},
      {[](WorkerManifest* m) { m->tensors[0].set_dtype("torch.bfloat16"); },
       "unknown dtype \"torch.bfloat16\""},
      {[](WorkerManifest* m) { m->tensors[1].set_region(2); },
       "is in region 2 but region_base_addresses has 2 entries"},
      {[](WorkerManifest* m) { m->tensors[1].set_offset(UINT64_MAX - 8); }, "overflow 64 bits"},
  };
  for (const Case& c : cases) {
    WorkerManifest m = TwoTensors();
    c.mutate(&m);
    auto state = WorkerState::Create(std::move(m));
    ASSERT_FALSE(state.ok()) << c.message;
    EXPECT_EQ(state.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(state.status().message(), HasSubstr(c.message));
  }
}

TEST(WorkerStateTest, ChecksIds) {
  auto state = WorkerState::Create(TwoTensors());
  ASSERT_TRUE(state.ok()) << state.status();
  std::string now;
  EXPECT_TRUE((*state)->CheckRequest("", nullptr, &now).ok());
  EXPECT_EQ(now, "");
  Status s = (*state)->CheckRequest("abc", nullptr, &now);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("mx_source_id mismatch: expected (not yet published), got "
                                     "abc"));
  (*state)->SetMxSourceId("abc");
  EXPECT_TRUE((*state)->CheckRequest("abc", nullptr, &now).ok());
  EXPECT_EQ(now, "abc");
  const std::string other = "w-2";
  s = (*state)->CheckRequest("", &other, &now);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("serves worker w-1, not w-2; the source restarted"));
}

}  // namespace
}  // namespace ferry::worker
