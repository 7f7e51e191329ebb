#include "cuda/driver.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/testing/status_matchers.h"

namespace ferry::internal::cuda {
namespace {

using ::testing::HasSubstr;

#ifdef FERRY_WITH_CUDA

TEST(DriverTest, BuiltWithCuda) { EXPECT_TRUE(BuiltWithCuda()); }

TEST(DriverTest, MissingLibraryIsFailedPreconditionNamingIt) {
  auto driver = Driver::Open({.library = "/nonexistent/libcuda.so.1"});
  ASSERT_EQ(driver.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(driver.status().message(), HasSubstr("the CUDA driver (/nonexistent/libcuda.so.1) "
                                                   "could not be loaded"));
  EXPECT_THAT(driver.status().message(), HasSubstr("install the NVIDIA driver"));
}

TEST(DriverTest, LibraryThatIsNotADriverIsRefused) {
  // libm loads but has no cuInit.
  auto driver = Driver::Open({.library = "libm.so.6"});
  ASSERT_EQ(driver.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(driver.status().message(), HasSubstr("libm.so.6 has no cuInit"));
}

TEST(DriverTest, StubDriverIsUnusableWithTheDriversOwnReason) {
  const std::string stub = FERRY_STUB_DRIVER;
  ASSERT_FALSE(stub.empty()) << "the CUDA build found no stub libcuda in the toolkit";
  auto driver = Driver::Open({.library = stub});
  ASSERT_EQ(driver.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(driver.status().message(), HasSubstr("is not usable: cuInit failed: "));
  EXPECT_THAT(driver.status().message(), HasSubstr("CUDA_ERROR_STUB_LIBRARY"));
}

TEST(DriverTest, DefaultGivesTheSameAnswerEveryTime) {
  auto first = Driver::Default();
  auto second = Driver::Default();
  ASSERT_EQ(first.ok(), second.ok());
  if (first.ok()) {
    EXPECT_EQ(*first, *second);
    EXPECT_GE((*first)->version(), 12000);
  } else {
    EXPECT_EQ(first.status(), second.status());
    EXPECT_EQ(first.status().code(), absl::StatusCode::kFailedPrecondition);
  }
}

#else  // FERRY_CUDA=OFF

TEST(DriverTest, OffBuildAnswersBuiltWithoutCuda) {
  EXPECT_FALSE(BuiltWithCuda());
  auto driver = Driver::Open({});
  ASSERT_EQ(driver.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(driver.status().message(), HasSubstr("built without CUDA"));
  EXPECT_EQ(Driver::Default().status().message(), kBuiltWithoutCuda);
}

#endif

}  // namespace
}  // namespace ferry::internal::cuda
