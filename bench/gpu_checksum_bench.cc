// gpu_checksum_bench: the tree checksum ("xxh3-64-tree-64k", src/cuda/tree_checksum.h) on CPU
// threads and on the GPU, each beside a baseline measured in the same run on the same bytes.
//
// Workloads (--workload picks host, device or all):
//   host    TreeLeafHashes (xxh3_core.h) over --bytes of pre-faulted host memory, once per
//           --threads value; baseline: libxxhash's XXH3_64bits over the same leaves, split the
//           same way over the same number of threads (what the hand-written core costs)
//   device  DeviceChecksummer::LeafHashes over --bytes of device memory on device 0 (kernel, copy
//           of the leaf hashes back, wait); baseline: cuMemcpyDtoD of the same bytes (a copy reads
//           and writes each byte, so its gbps counts the bytes copied once). Every run's leaves are
//           checked against the host's. Skipped, with the driver's reason, without a usable GPU.
//
// Output: one JSON object per line and run on stdout:
//   {"workload":..., "bytes":..., "threads":..., "seconds":..., "gbps":..., "baseline":...,
//    "baseline_gbps":..., "ratio":...}
// or {"workload":"device","skipped":"<reason>"} (gbps = 1e9 bytes per second).
//
//   gpu_checksum_bench [--bytes 1073741824] [--threads 1,2,4] [--workload host|device|all]
//                      [--repeat 3] [--smoke]

#include <xxhash.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "baselines.h"
#include "cuda/device_checksum.h"
#include "cuda/driver.h"
#include "cuda/tree_checksum.h"

#ifdef FERRY_WITH_CUDA
#include "cuda/driver_api.h"
#endif

namespace {

namespace cuda = ::ferry::internal::cuda;
using ::ferry::bench::Buffer;
using ::ferry::bench::Now;

struct Flags {
  uint64_t bytes = 1ull << 30;
  std::vector<int> threads = {1, 2, 4};
  std::string workload = "all";
  int repeat = 3;
  bool smoke = false;
};

void PrintLine(const char* workload, uint64_t bytes, int threads, double seconds,
               const char* baseline, double baseline_seconds) {
  const double gbps = static_cast<double>(bytes) / seconds / 1e9;
  const double baseline_gbps = static_cast<double>(bytes) / baseline_seconds / 1e9;
  std::printf(
      "{\"workload\":\"%s\",\"bytes\":%llu,\"threads\":%d,\"seconds\":%.6f,\"gbps\":%.3f,"
      "\"baseline\":\"%s\",\"baseline_gbps\":%.3f,\"ratio\":%.3f}\n",
      workload, static_cast<unsigned long long>(bytes), threads, seconds, gbps, baseline,
      baseline_gbps, gbps / baseline_gbps);
  std::fflush(stdout);
}

// libxxhash over the same leaves and the same contiguous split as TreeLeafHashes.
void LibxxhashLeaves(const uint8_t* data, uint64_t n, uint64_t* out, int threads) {
  const uint64_t count = cuda::TreeLeafCount(n);
  const uint64_t workers = std::min<uint64_t>(std::max(threads, 1), count);
  auto run = [&](uint64_t first, uint64_t last) {
    for (uint64_t i = first; i < last; ++i) {
      const uint64_t begin = i * cuda::kTreeLeafBytes;
      out[i] = XXH3_64bits(data + begin, std::min(cuda::kTreeLeafBytes, n - begin));
    }
  };
  std::vector<std::thread> pool;
  uint64_t first = 0;
  for (uint64_t w = 0; w < workers; ++w) {
    const uint64_t last = first + count / workers + (w < count % workers ? 1 : 0);
    pool.emplace_back(run, first, last);
    first = last;
  }
  for (std::thread& t : pool) t.join();
}

void FillPattern(uint8_t* data, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) data[i] = static_cast<uint8_t>((i * 131) ^ (i >> 11) ^ 0x5a);
}

void RunHost(const Flags& f, const Buffer& buffer, std::vector<uint64_t>& reference) {
  const auto* data = reinterpret_cast<const uint8_t*>(buffer.data());
  std::vector<uint64_t> leaves(cuda::TreeLeafCount(f.bytes));
  LibxxhashLeaves(data, f.bytes, reference.data(), 1);
  for (int threads : f.threads) {
    for (int r = 0; r < f.repeat; ++r) {
      double t0 = Now();
      cuda::TreeLeafHashes(data, f.bytes, leaves.data(), threads);
      const double seconds = Now() - t0;
      t0 = Now();
      std::vector<uint64_t> baseline(leaves.size());
      LibxxhashLeaves(data, f.bytes, baseline.data(), threads);
      const double baseline_seconds = Now() - t0;
      if (leaves != reference) {
        std::fprintf(stderr, "host leaf hashes differ from libxxhash's\n");
        std::exit(1);
      }
      PrintLine("host", f.bytes, threads, seconds, "xxh3_libxxhash", baseline_seconds);
    }
  }
}

void RunDevice(const Flags& f, const Buffer& buffer, const std::vector<uint64_t>& reference) {
  auto driver_or = cuda::Driver::Default();
  if (!driver_or.ok() || (*driver_or)->device_count() == 0) {
    const std::string why =
        driver_or.ok() ? "no CUDA devices" : std::string(driver_or.status().message());
    std::printf("{\"workload\":\"device\",\"skipped\":\"%s\"}\n", why.c_str());
    return;
  }
#ifdef FERRY_WITH_CUDA
  const cuda::Driver& driver = **driver_or;
  const cuda::DriverApi& api = driver.api();
  auto summer = cuda::DeviceChecksummer::Create(driver, 0);
  if (!summer.ok()) {
    std::fprintf(stderr, "%s\n", summer.status().ToString().c_str());
    std::exit(1);
  }
  CUdevice device = 0;
  CUcontext context = nullptr;
  CUdeviceptr src = 0;
  CUdeviceptr dst = 0;
  if (api.cuDeviceGet(&device, 0) != CUDA_SUCCESS ||
      api.cuDevicePrimaryCtxRetain(&context, device) != CUDA_SUCCESS ||
      api.cuCtxSetCurrent(context) != CUDA_SUCCESS ||
      api.cuMemAlloc(&src, f.bytes) != CUDA_SUCCESS ||
      api.cuMemAlloc(&dst, f.bytes) != CUDA_SUCCESS ||
      api.cuMemcpyHtoDAsync(src, buffer.data(), f.bytes, nullptr) != CUDA_SUCCESS ||
      api.cuStreamSynchronize(nullptr) != CUDA_SUCCESS) {
    std::fprintf(stderr, "device setup failed (%llu bytes on device 0)\n",
                 static_cast<unsigned long long>(f.bytes));
    std::exit(1);
  }
  std::vector<uint64_t> leaves(reference.size());
  // One untimed run: module load, scratch allocation and first-launch costs stay out.
  (void)(*summer)->LeafHashes(src, f.bytes, leaves.data(), nullptr);
  for (int r = 0; r < f.repeat; ++r) {
    std::fill(leaves.begin(), leaves.end(), 0);
    double t0 = Now();
    const ferry::Status s = (*summer)->LeafHashes(src, f.bytes, leaves.data(), nullptr);
    const double seconds = Now() - t0;
    t0 = Now();
    if (api.cuMemcpyDtoDAsync(dst, src, f.bytes, nullptr) != CUDA_SUCCESS ||
        api.cuStreamSynchronize(nullptr) != CUDA_SUCCESS) {
      std::fprintf(stderr, "cuMemcpyDtoD baseline failed\n");
      std::exit(1);
    }
    const double baseline_seconds = Now() - t0;
    if (!s.ok() || leaves != reference) {
      std::fprintf(stderr, "device leaf hashes differ from the host's: %s\n", s.ToString().c_str());
      std::exit(1);
    }
    PrintLine("device", f.bytes, 0, seconds, "cuMemcpyDtoD", baseline_seconds);
  }
  api.cuMemFree(dst);
  api.cuMemFree(src);
  api.cuDevicePrimaryCtxRelease(device);
#endif
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{"tree checksum on CPU threads and on the GPU, against libxxhash and a device copy"};
  app.add_option("--bytes", f.bytes, "bytes per run");
  app.add_option("--threads", f.threads, "host thread counts to run")
      ->delimiter(',')
      ->check(CLI::Range(1, 256));
  app.add_option("--workload", f.workload, "host, device or all")
      ->check(CLI::IsMember({"host", "device", "all"}));
  app.add_option("--repeat", f.repeat, "runs per workload");
  app.add_flag("--smoke", f.smoke, "a quick run (16 MiB + 1000 bytes, 1 repeat)");
  CLI11_PARSE(app, argc, argv);
  if (f.smoke) {
    f.bytes = (16ull << 20) + 1000;
    f.repeat = 1;
  }
  Buffer buffer(f.bytes);
  FillPattern(reinterpret_cast<uint8_t*>(buffer.data()), f.bytes);
  std::vector<uint64_t> reference(cuda::TreeLeafCount(f.bytes));
  if (f.workload != "device") RunHost(f, buffer, reference);
  if (f.workload != "host") {
    if (f.workload == "device") {
      LibxxhashLeaves(reinterpret_cast<const uint8_t*>(buffer.data()), f.bytes, reference.data(),
                      4);
    }
    RunDevice(f, buffer, reference);
  }
  return 0;
}
