#include "gpu_source.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cuda/device_allocation.h"
#include "cuda/driver.h"
#include "cuda/driver_api.h"
#include "cuda/primary_context.h"
#include "transfer/transfer_test_util.h"

namespace ferry::gpu {
namespace {

using internal::cuda::Driver;
using internal::cuda::DriverApi;

bool WriteFull(int fd, const void* data, size_t len) {
  const char* p = static_cast<const char*>(data);
  while (len > 0) {
    const ssize_t n = ::write(fd, p, len);
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool ReadFull(int fd, void* data, size_t len) {
  char* p = static_cast<char*>(data);
  while (len > 0) {
    const ssize_t n = ::read(fd, p, len);
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// Device 0's primary context, current on this thread (retained for the process's life).
StatusOr<const Driver*> Current() {
  FERRY_ASSIGN_OR_RETURN(const Driver* driver, Driver::Default());
  static auto* const context = new StatusOr<std::unique_ptr<internal::cuda::PrimaryContext>>(
      internal::cuda::PrimaryContext::Retain(*driver, 0));
  if (!context->ok()) return context->status();
  FERRY_RETURN_IF_ERROR((**context)->Enter());
  return driver;
}

// `bytes` of VMM memory (rounded up to the granularity) in 2 MiB-granular chunks mapped back
// to back, exportable as POSIX descriptors. Never freed (the process exits).
StatusOr<uint64_t> AllocateVmm(const Driver& driver, uint64_t bytes) {
  const DriverApi& api = driver.api();
  CUmemAllocationProp prop = {};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = 0;
  prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  size_t granularity = 0;
  FERRY_RETURN_IF_ERROR(driver.Check(
      api.cuMemGetAllocationGranularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
      "cuMemGetAllocationGranularity"));
  const uint64_t chunk = std::max<uint64_t>(granularity, 2 << 20);
  const uint64_t chunks = (bytes + chunk - 1) / chunk;
  CUdeviceptr base = 0;
  FERRY_RETURN_IF_ERROR(
      driver.Check(api.cuMemAddressReserve(&base, chunks * chunk, 0, 0, 0), "cuMemAddressReserve"));
  for (uint64_t i = 0; i < chunks; ++i) {
    CUmemGenericAllocationHandle h;
    FERRY_RETURN_IF_ERROR(driver.Check(api.cuMemCreate(&h, chunk, &prop, 0), "cuMemCreate"));
    FERRY_RETURN_IF_ERROR(driver.Check(api.cuMemMap(base + i * chunk, chunk, 0, h, 0), "cuMemMap"));
    api.cuMemRelease(h);
  }
  CUmemAccessDesc access = {};
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = 0;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  FERRY_RETURN_IF_ERROR(
      driver.Check(api.cuMemSetAccess(base, chunks * chunk, &access, 1), "cuMemSetAccess"));
  return base;
}

Status FillDevice(const Driver& driver, uint64_t ptr, uint64_t bytes) {
  std::vector<char> host(bytes);
  ferry::testing::FillPattern(host.data(), bytes);
  const DriverApi& api = driver.api();
  FERRY_RETURN_IF_ERROR(
      driver.Check(api.cuMemcpyHtoDAsync(ptr, host.data(), bytes, nullptr), "cuMemcpyHtoDAsync"));
  return driver.Check(api.cuCtxSynchronize(), "cuCtxSynchronize");
}

// argv[0] of this process (MaybeRunSource records it): the program to run as the source.
std::string& SelfPath() {
  static std::string* path = new std::string("/proc/self/exe");
  return *path;
}

[[noreturn]] void Fail(const Status& s) {
  std::fprintf(stderr, "gpu-source: %s\n", std::string(s.message()).c_str());
  ::_exit(2);
}

}  // namespace

StatusOr<std::unique_ptr<TransferEngine>> CudaIpcEngine(const std::string& name) {
  TransferEngineOptions o;
  o.name = name;
  o.enable_shm = o.enable_ucx = o.enable_tcp = false;
  o.enable_cuda_ipc = true;
  return TransferEngine::Create(o);
}

StatusOr<std::unique_ptr<TransferEngine>> TcpEngine(const std::string& name) {
  TransferEngineOptions o;
  o.name = name;
  o.enable_shm = o.enable_ucx = o.enable_cuda_ipc = false;
  o.tcp_listen = "127.0.0.1:0";
  return TransferEngine::Create(o);
}

bool MaybeRunSource(int argc, char** argv) {
  if (argc > 0 && std::strchr(argv[0], '/') != nullptr) SelfPath() = argv[0];
  if (argc != 5 || std::string(argv[1]) != "gpu-source") return false;
  const std::string kind = argv[2];
  const uint64_t bytes = std::stoull(argv[3]);
  const std::string transport = argv[4];
  auto driver = Current();
  if (!driver.ok()) Fail(driver.status());
  auto engine = transport == "tcp" ? TcpEngine("gpu source") : CudaIpcEngine("gpu source");
  if (!engine.ok()) Fail(engine.status());
  std::unique_ptr<Region> region;
  if (kind == "host") {
    auto r = (*engine)->AllocateRegion(bytes);
    if (!r.ok()) Fail(r.status());
    region = std::move(*r);
    ferry::testing::FillPattern(region->data(), bytes);
  } else if (kind == "legacy") {
    auto r = (*engine)->AllocateRegion(bytes, {.kind = MemoryKind::kCuda});
    if (!r.ok()) Fail(r.status());
    region = std::move(*r);
  } else {
    auto base = AllocateVmm(**driver, bytes);
    if (!base.ok()) Fail(base.status());
    auto r = (*engine)->RegisterRegion(reinterpret_cast<void*>(*base), bytes, MemoryKind::kCuda);
    if (!r.ok()) Fail(r.status());
    region = std::move(*r);
  }
  if (kind != "host") {
    if (Status s = FillDevice(**driver, reinterpret_cast<uint64_t>(region->data()), bytes);
        !s.ok()) {
      Fail(s);
    }
  }
  const std::string blob = (*engine)->ExportBlob();
  const uint32_t len = static_cast<uint32_t>(blob.size());
  if (!WriteFull(1, &len, sizeof(len)) || !WriteFull(1, blob.data(), len)) ::_exit(3);
  char c;
  while (::read(0, &c, 1) > 0) {
  }
  region.reset();
  ::_exit(0);
}

StatusOr<std::unique_ptr<SourceProcess>> SourceProcess::Start(const std::string& kind,
                                                              uint64_t bytes,
                                                              const std::string& transport) {
  int to_child[2], from_child[2];
  if (::pipe(to_child) != 0 || ::pipe(from_child) != 0) {
    return absl::InternalError("pipe failed");
  }
  const pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    ::dup2(to_child[0], 0);
    ::dup2(from_child[1], 1);
    ::close(to_child[1]);
    ::close(from_child[0]);
    const std::string size = std::to_string(bytes);
    // Under scripts/gpu-check.sh's bundled loader, /proc/self/exe is the loader: run the program
    // through it again (run.sh names it and its library path).
    const char* loader = std::getenv("FERRY_GPU_LOADER");
    const char* libs = std::getenv("FERRY_GPU_LIBRARY_PATH");
    if (loader != nullptr && libs != nullptr) {
      ::execl(loader, loader, "--library-path", libs, SelfPath().c_str(), "gpu-source",
              kind.c_str(), size.c_str(), transport.c_str(), nullptr);
    } else {
      ::execl("/proc/self/exe", "gpu-source", "gpu-source", kind.c_str(), size.c_str(),
              transport.c_str(), nullptr);
    }
    ::_exit(127);
  }
  ::close(to_child[0]);
  ::close(from_child[1]);
  uint32_t len = 0;
  std::string blob;
  bool ok = ReadFull(from_child[0], &len, sizeof(len));
  if (ok) {
    blob.resize(len);
    ok = ReadFull(from_child[0], blob.data(), len);
  }
  ::close(from_child[0]);
  std::unique_ptr<SourceProcess> p(new SourceProcess(pid, to_child[1], std::move(blob)));
  if (!ok) {
    return absl::InternalError(
        absl::StrCat("the ", kind, " source process did not start (see its stderr)"));
  }
  return p;
}

SourceProcess::~SourceProcess() {
  ::close(stdin_fd_);
  int status = 0;
  ::waitpid(pid_, &status, 0);
}

StatusOr<int64_t> FirstDeviceMismatch(uint64_t device_ptr, uint64_t bytes) {
  FERRY_ASSIGN_OR_RETURN(const Driver* driver, Current());
  std::vector<char> host(bytes);
  const DriverApi& api = driver->api();
  FERRY_RETURN_IF_ERROR(driver->Check(
      api.cuMemcpyDtoHAsync(host.data(), device_ptr, bytes, nullptr), "cuMemcpyDtoHAsync"));
  FERRY_RETURN_IF_ERROR(driver->Check(api.cuCtxSynchronize(), "cuCtxSynchronize"));
  return ferry::testing::FirstMismatch(host.data(), bytes, 0);
}

StatusOr<uintptr_t> CurrentContext() {
  FERRY_ASSIGN_OR_RETURN(const Driver* driver, Driver::Default());
  CUcontext current = nullptr;
  FERRY_RETURN_IF_ERROR(driver->Check(driver->api().cuCtxGetCurrent(&current), "cuCtxGetCurrent"));
  return reinterpret_cast<uintptr_t>(current);
}

Status ClearCurrentContext() {
  FERRY_ASSIGN_OR_RETURN(const Driver* driver, Driver::Default());
  return driver->Check(driver->api().cuCtxSetCurrent(nullptr), "cuCtxSetCurrent(null)");
}

}  // namespace ferry::gpu
