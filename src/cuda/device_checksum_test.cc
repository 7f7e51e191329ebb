// Tests that need a GPU (ctest label gpu, binary cuda_gpu_test): each skips, with the driver's
// reason, on a machine where no CUDA driver and device are usable.
#include "cuda/device_checksum.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "cuda/driver.h"
#include "cuda/tree_checksum.h"

#ifdef FERRY_WITH_CUDA
#include "cuda/driver_api.h"
#endif

namespace ferry::internal::cuda {
namespace {

using ::testing::HasSubstr;

// The process's driver, or a skip naming why there is none.
#define FERRY_DRIVER_OR_SKIP(var)                                          \
  auto var##_or = Driver::Default();                                       \
  if (!var##_or.ok()) GTEST_SKIP() << var##_or.status().message();         \
  if ((*var##_or)->device_count() == 0) GTEST_SKIP() << "no CUDA devices"; \
  const Driver& var = **var##_or

#ifdef FERRY_WITH_CUDA

std::vector<uint8_t> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> bytes(n);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
  return bytes;
}

// Device 0's primary context, current on this thread, and a device buffer holding `bytes`.
class DeviceBytes {
 public:
  DeviceBytes(const Driver& driver, const std::vector<uint8_t>& bytes) : driver_(driver) {
    const DriverApi& api = driver.api();
    EXPECT_EQ(api.cuDeviceGet(&device_, 0), CUDA_SUCCESS);
    EXPECT_EQ(api.cuDevicePrimaryCtxRetain(&context_, device_), CUDA_SUCCESS);
    EXPECT_EQ(api.cuCtxSetCurrent(context_), CUDA_SUCCESS);
    EXPECT_EQ(api.cuMemAlloc(&ptr_, bytes.size()), CUDA_SUCCESS);
    EXPECT_EQ(api.cuMemcpyHtoDAsync(ptr_, bytes.data(), bytes.size(), nullptr), CUDA_SUCCESS);
    EXPECT_EQ(api.cuStreamSynchronize(nullptr), CUDA_SUCCESS);
  }
  ~DeviceBytes() {
    driver_.api().cuMemFree(ptr_);
    driver_.api().cuDevicePrimaryCtxRelease(device_);
  }
  uint64_t ptr() const { return ptr_; }

 private:
  const Driver& driver_;
  CUdevice device_ = 0;
  CUcontext context_ = nullptr;
  CUdeviceptr ptr_ = 0;
};

TEST(DeviceChecksummerTest, LeafHashesEqualTheHostsForEveryShapeAndAlignment) {
  FERRY_DRIVER_OR_SKIP(driver);
  auto summer = DeviceChecksummer::Create(driver, 0);
  ASSERT_TRUE(summer.ok()) << summer.status();
  // Room for the largest n at the largest offset: every range lies inside the allocation.
  const std::vector<uint8_t> bytes = RandomBytes(9 * 1024 * 1024 + 8192, 7);
  DeviceBytes device(driver, bytes);
  for (uint64_t offset : {0, 1, 3, 8, 4096}) {
    for (uint64_t n : {uint64_t{1}, uint64_t{16}, uint64_t{240}, uint64_t{241}, uint64_t{65535},
                       uint64_t{65536}, uint64_t{65537}, uint64_t{65536 + 100},
                       uint64_t{65536 + 241}, uint64_t{9 * 1024 * 1024 + 17}}) {
      std::vector<uint64_t> expected(TreeLeafCount(n));
      TreeLeafHashes(bytes.data() + offset, n, expected.data(), 4);
      std::vector<uint64_t> got(expected.size(), 0);
      ASSERT_TRUE((*summer)->LeafHashes(device.ptr() + offset, n, got.data(), nullptr).ok())
          << "n " << n << " offset " << offset;
      EXPECT_EQ(got, expected) << "n " << n << " offset " << offset;
    }
  }
}

TEST(DeviceChecksummerTest, RunsOnTheCallersStream) {
  FERRY_DRIVER_OR_SKIP(driver);
  auto summer = DeviceChecksummer::Create(driver, 0);
  ASSERT_TRUE(summer.ok()) << summer.status();
  const std::vector<uint8_t> bytes = RandomBytes(3 * 65536 + 5, 8);
  DeviceBytes device(driver, bytes);
  CUstream stream = nullptr;
  ASSERT_EQ(driver.api().cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  std::vector<uint64_t> got(TreeLeafCount(bytes.size()));
  ASSERT_TRUE((*summer)->LeafHashes(device.ptr(), bytes.size(), got.data(), stream).ok());
  EXPECT_EQ(TreeRoot(got.data(), got.size()), TreeChecksum(bytes.data(), bytes.size(), 1));
  driver.api().cuStreamDestroy(stream);
}

TEST(DeviceChecksummerTest, EmptyRangeWritesNothing) {
  FERRY_DRIVER_OR_SKIP(driver);
  auto summer = DeviceChecksummer::Create(driver, 0);
  ASSERT_TRUE(summer.ok()) << summer.status();
  EXPECT_TRUE((*summer)->LeafHashes(0, 0, nullptr, nullptr).ok());
}

TEST(DeviceChecksummerTest, RefusesPointersThatAreNotDeviceMemoryBeforeLaunching) {
  FERRY_DRIVER_OR_SKIP(driver);
  auto summer = DeviceChecksummer::Create(driver, 0);
  ASSERT_TRUE(summer.ok()) << summer.status();
  std::vector<uint64_t> out(64);  // room for every leaf of the ranges asked about
  Status s = (*summer)->LeafHashes(0, 10, out.data(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("device_ptr is null"));
  s = (*summer)->LeafHashes(0x1000, 10, out.data(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("has a hole at 0x1000"));
  // Past the end of an allocation: every byte of the range is checked, not only the first.
  const std::vector<uint8_t> bytes = RandomBytes(65536, 9);
  DeviceBytes device(driver, bytes);
  s = (*summer)->LeafHashes(device.ptr() + 1, 65536 * 64, out.data(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("has a hole at 0x"));
  // The context is still usable afterwards.
  std::vector<uint64_t> one(1);
  EXPECT_TRUE((*summer)->LeafHashes(device.ptr(), bytes.size(), one.data(), nullptr).ok());
  EXPECT_EQ(one[0], TreeLeafHash(bytes.data(), bytes.size()));
}

TEST(DeviceChecksummerTest, UnknownDeviceIsInvalidArgument) {
  FERRY_DRIVER_OR_SKIP(driver);
  auto summer = DeviceChecksummer::Create(driver, driver.device_count());
  EXPECT_EQ(summer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(summer.status().message(), HasSubstr("does not exist"));
}

#else  // FERRY_CUDA=OFF: there is never a driver; the test says so as its skip reason.

TEST(DeviceChecksummerTest, NeedsACudaBuild) {
  FERRY_DRIVER_OR_SKIP(driver);
  FAIL() << "an OFF build opened a CUDA driver";
}

#endif

}  // namespace
}  // namespace ferry::internal::cuda
