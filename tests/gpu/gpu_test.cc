// Tests that need a GPU (ctest label gpu). Without a usable driver each skips with the driver's
// reason; scripts/gpu-check.sh runs them on a lent GPU machine.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cuda/driver.h"
#include "gpu_source.h"

namespace ferry::gpu {
namespace {

#define FERRY_REQUIRE_GPU()                                                               \
  do {                                                                                    \
    auto driver = internal::cuda::Driver::Default();                                      \
    if (!driver.ok()) GTEST_SKIP() << "no usable CUDA driver: " << driver.status();       \
    if ((*driver)->device_count() == 0) GTEST_SKIP() << "the CUDA driver sees no device"; \
  } while (0)

class CudaIpcPullTest : public ::testing::TestWithParam<const char*> {};

TEST_P(CudaIpcPullTest, PullFromAnotherProcessIsByteIdentical) {
  FERRY_REQUIRE_GPU();
  constexpr uint64_t kBytes = (256ull << 20) + 4096;  // 129 VMM chunks of 2 MiB
  auto source = SourceProcess::Start(GetParam(), kBytes);
  ASSERT_TRUE(source.ok()) << source.status();
  // This thread has no context; ferry's calls on it must leave it so.
  ASSERT_TRUE(ClearCurrentContext().ok());
  auto engine = CudaIpcEngine("gpu target");
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto dst = (*engine)->AllocateRegion(kBytes, {.kind = MemoryKind::kCuda});
  ASSERT_TRUE(dst.ok()) << dst.status();
  auto peer = (*engine)->Connect((*source)->blob());
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_EQ((*peer)->transport(), TransportKind::kCudaIpc);
  ReadOptions options;
  options.timeout = absl::Seconds(60);
  options.chunk_bytes = 64 << 20;
  ASSERT_TRUE((*peer)->Read({ReadOp{0, 0, (*dst)->data(), kBytes}}, options).ok());
  EXPECT_EQ(CurrentContext().value_or(1), 0u) << "ferry left a context current on the caller";
  auto mismatch = FirstDeviceMismatch(reinterpret_cast<uint64_t>((*dst)->data()), kBytes);
  ASSERT_TRUE(mismatch.ok()) << mismatch.status();
  EXPECT_EQ(*mismatch, -1);
}

INSTANTIATE_TEST_SUITE_P(Kinds, CudaIpcPullTest, ::testing::Values("legacy", "vmm"));

// Device to device over loopback TCP: the source stages its device memory into pinned slots
// ahead of each reply, the target stages into its device destination, through the engine.
TEST(StagedTcpPullTest, DeviceToDeviceThroughTheEngineIsByteIdenticalAndSaysStaged) {
  FERRY_REQUIRE_GPU();
  constexpr uint64_t kBytes = (192ull << 20) + 12345;
  auto source = SourceProcess::Start("legacy", kBytes, "tcp");
  ASSERT_TRUE(source.ok()) << source.status();
  ASSERT_TRUE(ClearCurrentContext().ok());
  auto engine = TcpEngine("gpu target");
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto dst = (*engine)->AllocateRegion(kBytes, {.kind = MemoryKind::kCuda});
  ASSERT_TRUE(dst.ok()) << dst.status();
  auto peer = (*engine)->Connect((*source)->blob());
  ASSERT_TRUE(peer.ok()) << peer.status();
  ASSERT_TRUE((*peer)->Read({ReadOp{0, 0, (*dst)->data(), kBytes}}, absl::Seconds(120)).ok());
  EXPECT_EQ((*peer)->path(), "tcp+staged");
  EXPECT_EQ(CurrentContext().value_or(1), 0u) << "ferry left a context current on the caller";
  auto mismatch = FirstDeviceMismatch(reinterpret_cast<uint64_t>((*dst)->data()), kBytes);
  ASSERT_TRUE(mismatch.ok()) << mismatch.status();
  EXPECT_EQ(*mismatch, -1);
  // A read landing in host and device memory at once is refused, naming what to do.
  std::vector<char> host(4096);
  Status mixed = (*peer)->Read(
      {ReadOp{0, 0, (*dst)->data(), 4096}, ReadOp{0, 4096, host.data(), 4096}}, absl::Seconds(30));
  EXPECT_EQ(mixed.code(), absl::StatusCode::kInvalidArgument) << mixed;
}

}  // namespace
}  // namespace ferry::gpu

int main(int argc, char** argv) {
  if (ferry::gpu::MaybeRunSource(argc, argv)) return 0;
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
