// Shared by the GPU test and the GPU benchmark: a source process holding a region of device
// memory filled with the transfer tests' pattern, served over CUDA IPC. The source runs as a
// fresh exec of the calling binary ("<binary> gpu-source <kind> <bytes>"), never a bare fork: a
// process that initialised CUDA cannot use it in a forked child.
//
// Kinds: "legacy" (one cuMemAlloc block, exported by a legacy IPC handle), "vmm" (2 MiB-
// granular cuMemCreate chunks mapped back to back, like PyTorch's expandable segments, exported
// as POSIX descriptors) and "host" (host memory, the baseline of staged pulls).
#ifndef FERRY_TESTS_GPU_GPU_SOURCE_H_
#define FERRY_TESTS_GPU_GPU_SOURCE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "ferry/status.h"
#include "ferry/transfer.h"

namespace ferry::gpu {

// Runs the source side when argv asks for it ("gpu-source <kind> <bytes> <transport>", transport
// cuda_ipc or tcp: over TCP the source stages its device memory): writes its blob to
// stdout (4-byte length, then the bytes) and serves until stdin closes, then exits. Returns
// false (doing nothing) for any other argv.
bool MaybeRunSource(int argc, char** argv);

// A running source process.
class SourceProcess {
 public:
  static StatusOr<std::unique_ptr<SourceProcess>> Start(const std::string& kind, uint64_t bytes,
                                                        const std::string& transport = "cuda_ipc");
  ~SourceProcess();  // closes its stdin and waits for it
  const std::string& blob() const { return blob_; }

 private:
  SourceProcess(int pid, int stdin_fd, std::string blob)
      : pid_(pid), stdin_fd_(stdin_fd), blob_(std::move(blob)) {}
  int pid_;
  int stdin_fd_;
  std::string blob_;
};

// The engine of a target that reads device memory over CUDA IPC only.
StatusOr<std::unique_ptr<TransferEngine>> CudaIpcEngine(const std::string& name);
// An engine serving and reading over TCP on loopback only (device memory staged on both ends).
StatusOr<std::unique_ptr<TransferEngine>> TcpEngine(const std::string& name);

// Copies device memory at `device_ptr` to the host and returns the first offset that differs
// from the pattern (-1: none).
StatusOr<int64_t> FirstDeviceMismatch(uint64_t device_ptr, uint64_t bytes);

// The calling thread's current CUDA context, as a number (0: none), and a way to clear it: ferry
// must leave the caller's context as it found it (PyTorch's current device follows it).
StatusOr<uintptr_t> CurrentContext();
Status ClearCurrentContext();

}  // namespace ferry::gpu

#endif  // FERRY_TESTS_GPU_GPU_SOURCE_H_
