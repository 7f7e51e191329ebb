// Pipelined staging on a real GPU (label `gpu`): a region of device memory served by TcpServer
// through StagedSource and read over loopback TCP into device memory through StagedConnection,
// both on CUDA device 0. Skips with the reason where no driver or device is usable.
#include <cstring>
#include <memory>
#include <string>

#include "cuda/device.h"
#include "cuda/driver.h"
#include "gtest/gtest.h"
#include "transfer/staging/staged_connection.h"
#include "transfer/tcp/tcp_peer.h"
#include "transfer/tcp/tcp_server.h"
#include "transfer/transfer_test_util.h"
#ifdef FERRY_WITH_CUDA
#include "cuda/driver_api.h"
#endif

namespace ferry::internal::staging {
namespace {

using ::ferry::testing::FillPattern;
using ::ferry::testing::FirstMismatch;
using ::ferry::testing::Running;

TEST(StagedGpuTest, DeviceRegionOverTcpIntoDeviceMemory) {
  auto driver = cuda::Driver::Default();
  if (!driver.ok()) GTEST_SKIP() << "no usable CUDA driver: " << driver.status();
  if ((*driver)->device_count() == 0) GTEST_SKIP() << "the CUDA driver lists no device";
#ifdef FERRY_WITH_CUDA
  constexpr uint64_t kSize = 256ull << 20;
  auto device = cuda::OpenCudaDevice(**driver, 0);
  ASSERT_TRUE(device.ok()) << device.status();
  const cuda::DriverApi& api = (*driver)->api();
  CUdeviceptr src = 0;
  CUdeviceptr dst = 0;
  ASSERT_EQ(api.cuMemAlloc(&src, kSize), CUDA_SUCCESS);
  ASSERT_EQ(api.cuMemAlloc(&dst, kSize), CUDA_SUCCESS);
  auto host = (*device)->AllocatePinned(kSize);
  ASSERT_TRUE(host.ok()) << host.status();
  FillPattern((*host)->data(), kSize);
  {
    auto stream = (*device)->CreateStream();
    ASSERT_TRUE(stream.ok()) << stream.status();
    ASSERT_TRUE((*stream)->ToDevice(src, (*host)->data(), kSize).ok());
    ASSERT_TRUE((*stream)->ToDevice(dst, (*host)->data() + 1, kSize - 1).ok());  // not the answer
    auto m = (*stream)->Record();
    ASSERT_TRUE(m.ok() && *(*stream)->WaitUntil(*m, absl::Now() + absl::Seconds(30)));
  }
  const std::string secret(tcp::kSecretBytes, 'g');
  auto server = tcp::TcpServer::Create(tcp::HostPort{"127.0.0.1", 0}, 0, secret);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE((*server)->AddRegion(0, reinterpret_cast<void*>(src), kSize, device->get()).ok());
  auto peer = tcp::TcpPeerConnection::Create(tcp::HostPort{"127.0.0.1", (*server)->port()}, secret,
                                             tcp::TcpPeerOptions{}, "gpu source");
  ASSERT_TRUE(peer.ok()) << peer.status();
  auto conn =
      StagedConnection::Create(std::move(*peer), device->get(), StagingOptions{}, "gpu source");
  ASSERT_TRUE(conn.ok()) << conn.status();
  Running running;
  running.chunk_bytes = 8 << 20;
  Status s = running.Read(**conn, {ReadOp{0, 0, reinterpret_cast<void*>(dst), kSize}});
  ASSERT_TRUE(s.ok()) << s;
  std::memset((*host)->data(), 0, kSize);
  {
    auto stream = (*device)->CreateStream();
    ASSERT_TRUE((*stream)->ToHost((*host)->data(), dst, kSize).ok());
    auto m = (*stream)->Record();
    ASSERT_TRUE(m.ok() && *(*stream)->WaitUntil(*m, absl::Now() + absl::Seconds(30)));
  }
  EXPECT_EQ(FirstMismatch((*host)->data(), kSize, 0), -1);
  EXPECT_GT((*conn)->stats().landed_while_copying, 0u);
  conn->reset();
  (*server)->Stop();
  api.cuMemFree(src);
  api.cuMemFree(dst);
#endif
}

}  // namespace
}  // namespace ferry::internal::staging
