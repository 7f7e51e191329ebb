// The CUDA Device (cuda_device.cc) on a real GPU: a round trip through pinned memory and device
// memory on one stream. Label `gpu`; skips with the reason where no driver or device is usable.
#include <cstring>
#include <vector>

#include "cuda/device.h"
#include "cuda/driver.h"
#include "gtest/gtest.h"
#ifdef FERRY_WITH_CUDA
#include "cuda/driver_api.h"
#endif

namespace ferry::internal::cuda {
namespace {

TEST(CudaDeviceTest, RoundTripThroughPinnedAndDeviceMemory) {
  auto driver = Driver::Default();
  if (!driver.ok()) GTEST_SKIP() << "no usable CUDA driver: " << driver.status();
  if ((*driver)->device_count() == 0) GTEST_SKIP() << "the CUDA driver lists no device";
#ifdef FERRY_WITH_CUDA
  auto device = OpenCudaDevice(**driver, 0);
  ASSERT_TRUE(device.ok()) << device.status();
  EXPECT_NE((*device)->name().find("cuda:0"), std::string::npos);
  auto stream = (*device)->CreateStream();
  ASSERT_TRUE(stream.ok()) << stream.status();
  constexpr uint64_t kBytes = 8 << 20;
  auto in = (*device)->AllocatePinned(kBytes);
  auto out = (*device)->AllocatePinned(kBytes);
  ASSERT_TRUE(in.ok() && out.ok());
  for (uint64_t i = 0; i < kBytes; ++i) (*in)->data()[i] = static_cast<char>(i * 7 + (i >> 12));
  std::memset((*out)->data(), 0, kBytes);
  const DriverApi& api = (*driver)->api();
  CUdeviceptr dev = 0;
  ASSERT_EQ(api.cuMemAlloc(&dev, kBytes), CUDA_SUCCESS);
  ASSERT_TRUE((*stream)->ToDevice(dev, (*in)->data(), kBytes).ok());
  ASSERT_TRUE((*stream)->ToHost((*out)->data(), dev, kBytes).ok());
  auto marker = (*stream)->Record();
  ASSERT_TRUE(marker.ok()) << marker.status();
  auto reached = (*stream)->WaitUntil(*marker, absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(reached.ok()) << reached.status();
  EXPECT_TRUE(*reached);
  EXPECT_EQ(std::memcmp((*in)->data(), (*out)->data(), kBytes), 0);
  stream->reset();
  api.cuMemFree(dev);
  EXPECT_FALSE(OpenCudaDevice(**driver, (*driver)->device_count()).ok());
#endif
}

}  // namespace
}  // namespace ferry::internal::cuda
