// DeviceChecksummer for CUDA builds: the embedded kernel, loaded and launched through the driver.
#include "cuda/device_checksum.h"

#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cuda/allocation_pieces.h"
#include "cuda/driver_api.h"
#include "cuda/primary_context.h"
#include "cuda/tree_checksum.h"
#include "cuda/tree_checksum_kernel.h"

namespace ferry::internal::cuda {
namespace {

// A loaded module. Reset() unloads it; REQUIRES: its context is current.
class Module {
 public:
  explicit Module(const Driver& driver) : driver_(driver) {}
  ~Module() { Reset(); }
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  void Reset(CUmodule module = nullptr) {
    if (module_ != nullptr) driver_.api().cuModuleUnload(module_);
    module_ = module;
  }
  CUmodule get() const { return module_; }

 private:
  const Driver& driver_;
  CUmodule module_ = nullptr;
};

// A cuMemAlloc'ed buffer. Reset() frees it; REQUIRES: its context is current.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(const Driver& driver) : driver_(driver) {}
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void Reset(CUdeviceptr ptr = 0, size_t size = 0) {
    if (ptr_ != 0) driver_.api().cuMemFree(ptr_);
    ptr_ = ptr;
    size_ = size;
  }
  CUdeviceptr get() const { return ptr_; }
  size_t size() const { return size_; }

 private:
  const Driver& driver_;
  CUdeviceptr ptr_ = 0;
  size_t size_ = 0;
};

}  // namespace

struct DeviceChecksummer::Impl {
  Impl(const Driver& d, std::unique_ptr<PrimaryContext> ctx, std::unique_ptr<AllocationQuery> q)
      : driver(d), context(std::move(ctx)), query(std::move(q)), module(d), scratch(d) {}
  // The module and the scratch buffer go while the context is current and still retained; the
  // context member is released after this body.
  ~Impl() {
    ScopedContext current(driver);
    if (current.Enter(context->get(), absl::StatusCode::kInternal).ok()) {
      absl::MutexLock lock(&mu);
      scratch.Reset();
      module.Reset();
    }
  }

  const Driver& driver;
  std::unique_ptr<PrimaryContext> context;
  const std::unique_ptr<AllocationQuery> query;  // checks each range before a launch
  Module module;
  CUfunction function = nullptr;
  absl::Mutex mu;
  // Leaf hashes land here before the copy to the host; grown on demand, never shrunk.
  DeviceBuffer scratch ABSL_GUARDED_BY(mu);
};

DeviceChecksummer::DeviceChecksummer(std::unique_ptr<Impl> impl, int device)
    : impl_(std::move(impl)), device_(device) {}

DeviceChecksummer::~DeviceChecksummer() = default;

StatusOr<std::unique_ptr<DeviceChecksummer>> DeviceChecksummer::Create(const Driver& driver,
                                                                       int device) {
  const DriverApi& api = driver.api();
  constexpr auto kCode = absl::StatusCode::kFailedPrecondition;
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<PrimaryContext> primary,
                         PrimaryContext::Retain(driver, device));
  const CUcontext context = primary->get();
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<AllocationQuery> query, DriverAllocationQuery(driver));
  auto impl = std::make_unique<Impl>(driver, std::move(primary), std::move(query));
  ScopedContext current(driver);
  FERRY_RETURN_IF_ERROR(current.Enter(context, kCode));
  CUmodule module = nullptr;
  Status loaded =
      driver.Check(api.cuModuleLoadData(&module, TreeKernelFatbin()), "cuModuleLoadData", kCode);
  if (!loaded.ok()) {
    return Status(kCode, absl::StrCat("loading the tree checksum kernel on CUDA device ", device,
                                      ": ", loaded.message(),
                                      "; the embedded kernel has code for sm_80, sm_90, sm_100 "
                                      "and PTX for compute_100"));
  }
  impl->module.Reset(module);
  FERRY_RETURN_IF_ERROR(
      driver.Check(api.cuModuleGetFunction(&impl->function, module, kTreeKernelName),
                   "cuModuleGetFunction(ferry_tree_leaf_hashes)", kCode));
  return std::unique_ptr<DeviceChecksummer>(new DeviceChecksummer(std::move(impl), device));
}

Status DeviceChecksummer::LeafHashes(uint64_t device_ptr, uint64_t n, uint64_t* host_out,
                                     void* stream) {
  if (n == 0) return absl::OkStatus();
  if (host_out == nullptr || device_ptr == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tree checksum of ", n, " device bytes: ", host_out == nullptr ? "host_out" : "device_ptr",
        " is null"));
  }
  const Driver& driver = impl_->driver;
  const DriverApi& api = driver.api();
  const uint64_t leaf_count = TreeLeafCount(n);
  const uint64_t blocks =
      (leaf_count * kTreeKernelThreadsPerLeaf + kTreeKernelThreadsPerBlock - 1) /
      kTreeKernelThreadsPerBlock;
  if (blocks > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat("tree checksum of ", n, " device bytes: too large for one launch"));
  }
  absl::MutexLock lock(&impl_->mu);
  ScopedContext current(driver);
  FERRY_RETURN_IF_ERROR(current.Enter(impl_->context->get(), absl::StatusCode::kInternal));

  // A kernel that faults leaves the (shared, primary) context unusable, so the whole range is
  // checked first: device memory the driver knows, without holes, none of it on another device
  // (addressable too, but the kernel may not read it; a device the driver does not report passes).
  auto pieces = FindAllocationPieces(device_ptr, n, *impl_->query, /*require_exportable=*/false);
  if (!pieces.ok()) {
    return Status(pieces.status().code(), absl::StrCat("tree checksum on CUDA device ", device_,
                                                       ": ", pieces.status().message()));
  }
  for (const AllocationPiece& piece : *pieces) {
    if (piece.allocation.device >= 0 && piece.allocation.device != device_) {
      return absl::InvalidArgumentError(
          absl::StrCat("tree checksum of device bytes [0x", absl::Hex(device_ptr), ", +", n,
                       ") on CUDA device ", device_, ": the allocation at 0x",
                       absl::Hex(piece.allocation.base), " is on device ", piece.allocation.device,
                       "; checksum it with that device's "
                       "DeviceChecksummer"));
    }
  }

  const size_t scratch_bytes = leaf_count * sizeof(uint64_t);
  if (impl_->scratch.size() < scratch_bytes) {
    impl_->scratch.Reset();
    CUdeviceptr scratch = 0;
    const CUresult r = api.cuMemAlloc(&scratch, scratch_bytes);
    if (r != CUDA_SUCCESS) {
      return driver.Check(r, "cuMemAlloc(tree checksum scratch)",
                          r == CUDA_ERROR_OUT_OF_MEMORY ? absl::StatusCode::kResourceExhausted
                                                        : absl::StatusCode::kInternal);
    }
    impl_->scratch.Reset(scratch, scratch_bytes);
  }

  auto cu_stream = static_cast<CUstream>(stream);
  CUdeviceptr data = device_ptr;
  CUdeviceptr out = impl_->scratch.get();
  unsigned long long size = n;             // NOLINT(runtime/int): the kernel's parameter type
  unsigned long long leaves = leaf_count;  // NOLINT(runtime/int)
  void* args[] = {&data, &size, &out, &leaves};
  FERRY_RETURN_IF_ERROR(driver.Check(
      api.cuLaunchKernel(impl_->function, static_cast<unsigned>(blocks), 1, 1,
                         kTreeKernelThreadsPerBlock, 1, 1, 0, cu_stream, args, nullptr),
      "cuLaunchKernel(ferry_tree_leaf_hashes)"));
  FERRY_RETURN_IF_ERROR(driver.Check(api.cuMemcpyDtoHAsync(host_out, out, scratch_bytes, cu_stream),
                                     "cuMemcpyDtoHAsync"));
  return driver.Check(api.cuStreamSynchronize(cu_stream), "cuStreamSynchronize");
}

}  // namespace ferry::internal::cuda
