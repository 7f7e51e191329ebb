// gpu_bench: the GPU paths against same-run baselines on one lent GPU (scripts/gpu-check.sh).
//
// Workloads:
//   cuda_ipc   a CUDA IPC pull of --bytes from a source process (legacy cudaMalloc memory, then
//              cuMemCreate expandable-segment memory) into device memory; baseline: a
//              cuMemcpyDtoD of the same bytes between two device buffers of this process
//   staged     a pull of --bytes of device memory from a source process over loopback TCP into
//              device memory, staged through pinned host memory on both ends; baselines: the
//              same pull of host memory into host memory (ferry's TCP, which transfer_bench
//              holds to a raw socket pair in the same device check) and a pinned host-to-device
//              copy of the same bytes; the ratio is to the slower of the two
//
// Output: one JSON object per line:
//   {"workload":..., "kind":..., "bytes":..., "seconds":..., "gbps":..., "baseline":...,
//    "baseline_gbps":..., "ratio":...}
// (gbps = 1e9 bytes per second; the best of --repeat runs of each). Without a usable driver
// it prints {"skipped": "<reason>"} and exits 0.
//
//   gpu_bench [--bytes 4294967296] [--repeat 3]
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cuda/device.h"
#include "cuda/device_allocation.h"
#include "cuda/driver.h"
#include "cuda/driver_api.h"
#include "gpu_source.h"

namespace ferry::gpu {
namespace {

using internal::cuda::Driver;

struct Args {
  uint64_t bytes = 4ull << 30;
  int repeat = 3;
};

void Line(const std::string& workload, const std::string& kind, uint64_t bytes, double seconds,
          const std::string& baseline, double baseline_seconds) {
  const double gbps = bytes / seconds / 1e9;
  const double base = bytes / baseline_seconds / 1e9;
  std::printf(
      "{\"workload\":\"%s\",\"kind\":\"%s\",\"bytes\":%llu,\"seconds\":%.6f,\"gbps\":%.2f,"
      "\"baseline\":\"%s\",\"baseline_gbps\":%.2f,\"ratio\":%.3f}\n",
      workload.c_str(), kind.c_str(), static_cast<unsigned long long>(bytes), seconds, gbps,
      baseline.c_str(), base, gbps / base);
  std::fflush(stdout);
}

// Seconds for the best of `repeat` device-to-device copies of `bytes`.
StatusOr<double> DeviceCopySeconds(TransferEngine& engine, uint64_t bytes, int repeat) {
  FERRY_ASSIGN_OR_RETURN(const Driver* driver, Driver::Default());
  const auto& api = driver->api();
  FERRY_ASSIGN_OR_RETURN(auto a, engine.AllocateRegion(bytes, {.kind = MemoryKind::kCuda}));
  FERRY_ASSIGN_OR_RETURN(auto b, engine.AllocateRegion(bytes, {.kind = MemoryKind::kCuda}));
  double best = 1e30;
  for (int i = 0; i < repeat; ++i) {
    const absl::Time start = absl::Now();
    FERRY_RETURN_IF_ERROR(driver->Check(
        api.cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(b->data()),
                              reinterpret_cast<CUdeviceptr>(a->data()), bytes, nullptr),
        "cuMemcpyDtoDAsync"));
    FERRY_RETURN_IF_ERROR(driver->Check(api.cuCtxSynchronize(), "cuCtxSynchronize"));
    best = std::min(best, absl::ToDoubleSeconds(absl::Now() - start));
  }
  return best;
}

Status CudaIpc(const Args& args) {
  FERRY_ASSIGN_OR_RETURN(auto engine, CudaIpcEngine("gpu bench target"));
  FERRY_ASSIGN_OR_RETURN(double baseline, DeviceCopySeconds(*engine, args.bytes, args.repeat));
  for (const char* kind : {"legacy", "vmm"}) {
    FERRY_ASSIGN_OR_RETURN(auto source, SourceProcess::Start(kind, args.bytes));
    FERRY_ASSIGN_OR_RETURN(auto dst,
                           engine->AllocateRegion(args.bytes, {.kind = MemoryKind::kCuda}));
    double best = 1e30;
    for (int i = 0; i < args.repeat; ++i) {
      // A fresh connection each time: a starting replica imports the source's memory anew.
      const absl::Time start = absl::Now();
      FERRY_ASSIGN_OR_RETURN(auto peer, engine->Connect(source->blob()));
      ReadOptions options;
      options.chunk_bytes = 64 << 20;
      FERRY_RETURN_IF_ERROR(peer->Read({ReadOp{0, 0, dst->data(), args.bytes}}, options));
      best = std::min(best, absl::ToDoubleSeconds(absl::Now() - start));
    }
    FERRY_ASSIGN_OR_RETURN(
        int64_t mismatch, FirstDeviceMismatch(reinterpret_cast<uint64_t>(dst->data()), args.bytes));
    if (mismatch != -1) {
      return absl::DataLossError(absl::StrCat(kind, ": byte ", mismatch, " differs"));
    }
    Line("cuda_ipc", kind, args.bytes, best, "cuMemcpyDtoD", baseline);
  }
  return absl::OkStatus();
}

// Seconds for the best of `repeat` pulls of `bytes` from a `kind` source over TCP into `dst`.
StatusOr<double> TcpPullSeconds(const std::string& kind, uint64_t bytes, void* dst, int repeat,
                                std::string* path) {
  FERRY_ASSIGN_OR_RETURN(auto source, SourceProcess::Start(kind, bytes, "tcp"));
  FERRY_ASSIGN_OR_RETURN(auto engine, TcpEngine("gpu bench target"));
  std::unique_ptr<Region> registered;
  if (kind != "host") {
    // The destination is device memory of this engine: reads into it are staged.
    FERRY_ASSIGN_OR_RETURN(registered, engine->RegisterRegion(dst, bytes, MemoryKind::kCuda));
  }
  double best = 1e30;
  for (int i = 0; i < repeat; ++i) {
    FERRY_ASSIGN_OR_RETURN(auto peer, engine->Connect(source->blob()));
    const absl::Time start = absl::Now();
    FERRY_RETURN_IF_ERROR(peer->Read({ReadOp{0, 0, dst, bytes}}, absl::Seconds(600)));
    best = std::min(best, absl::ToDoubleSeconds(absl::Now() - start));
    *path = peer->path();
  }
  return best;
}

Status Staged(const Args& args) {
  FERRY_ASSIGN_OR_RETURN(const Driver* driver, Driver::Default());
  FERRY_ASSIGN_OR_RETURN(auto device, internal::cuda::OpenCudaDevice(*driver, 0));
  // Baseline 1: a pinned host-to-device copy of the same bytes.
  FERRY_ASSIGN_OR_RETURN(auto pinned, device->AllocatePinned(args.bytes));
  FERRY_ASSIGN_OR_RETURN(auto stream, device->CreateStream());
  FERRY_ASSIGN_OR_RETURN(auto on_device,
                         internal::cuda::DeviceAllocation::Create(*driver, 0, args.bytes));
  double pinned_seconds = 1e30;
  for (int i = 0; i < args.repeat; ++i) {
    const absl::Time start = absl::Now();
    FERRY_RETURN_IF_ERROR(stream->ToDevice(on_device->address(), pinned->data(), args.bytes));
    FERRY_ASSIGN_OR_RETURN(internal::cuda::CopyMarker marker, stream->Record());
    FERRY_RETURN_IF_ERROR(stream->WaitUntil(marker, absl::InfiniteFuture()).status());
    pinned_seconds = std::min(pinned_seconds, absl::ToDoubleSeconds(absl::Now() - start));
  }
  // Baseline 2: the same pull of host memory into host memory.
  std::string path;
  FERRY_ASSIGN_OR_RETURN(double host_seconds,
                         TcpPullSeconds("host", args.bytes, pinned->data(), args.repeat, &path));
  // The staged pull, device to device.
  FERRY_ASSIGN_OR_RETURN(
      double staged_seconds,
      TcpPullSeconds("legacy", args.bytes, on_device->data(), args.repeat, &path));
  if (path != "tcp+staged") {
    return absl::InternalError(absl::StrCat("the staged pull moved over ", path));
  }
  FERRY_ASSIGN_OR_RETURN(int64_t mismatch, FirstDeviceMismatch(on_device->address(), args.bytes));
  if (mismatch != -1) return absl::DataLossError(absl::StrCat("staged: byte ", mismatch));
  Line("staged", "tcp_host", args.bytes, host_seconds, "pinned_h2d", pinned_seconds);
  const bool tcp_slower = host_seconds > pinned_seconds;
  Line("staged", "legacy", args.bytes, staged_seconds, tcp_slower ? "tcp_host" : "pinned_h2d",
       tcp_slower ? host_seconds : pinned_seconds);
  return absl::OkStatus();
}

}  // namespace
}  // namespace ferry::gpu

int main(int argc, char** argv) {
  if (ferry::gpu::MaybeRunSource(argc, argv)) return 0;
  ferry::gpu::Args args;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--bytes") {
      args.bytes = std::stoull(argv[i + 1]);
    } else if (flag == "--repeat") {
      args.repeat = std::stoi(argv[i + 1]);
    } else {
      std::fprintf(stderr, "gpu_bench: unknown flag %s; use --bytes N --repeat N\n", argv[i]);
      return 2;
    }
  }
  auto driver = ferry::internal::cuda::Driver::Default();
  if (!driver.ok()) {
    std::printf("{\"skipped\":\"%s\"}\n", std::string(driver.status().message()).c_str());
    return 0;
  }
  int rc = 0;
  for (auto* workload : {&ferry::gpu::CudaIpc, &ferry::gpu::Staged}) {
    if (ferry::Status s = (*workload)(args); !s.ok()) {
      std::fprintf(stderr, "gpu_bench: %s\n", std::string(s.message()).c_str());
      rc = 1;
    }
  }
  return rc;
}
