// Named tensors that live in caller-owned memory (a Python framework's parameters), published in
// place or pulled into in place. The caller describes its allocations (spans: a torch storage
// each) and the tensors inside them; every span is registered with the transfer engine once,
// however many tensors it holds.
#ifndef FERRY_FLOWS_BUFFERS_H_
#define FERRY_FLOWS_BUFFERS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "ferry/status.h"
#include "ferry/transfer.h"
#include "flows/landing_verifier.h"
#include "flows/weight_puller.h"
#include "flows/weight_source.h"
#include "weights/dtype.h"

namespace ferry::weights {

// One allocation of caller memory (a storage). Borrowed: must stay valid while in use.
struct MemorySpan {
  void* data = nullptr;
  uint64_t size = 0;
  int device = -1;  // -1: host memory; N: device memory of GPU N (a CUDA tensor's storage)
};

// One named tensor: `size` bytes at `data`, inside one span, row-major and contiguous.
struct NamedBuffer {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  void* data = nullptr;
  uint64_t size = 0;  // product(shape) * DTypeSize(dtype)
};

struct BufferSet {
  std::vector<MemorySpan> spans;
  std::vector<NamedBuffer> buffers;
};

// The limits of a buffer set, so that a wrong argument fails with a message instead of
// registering absurd ranges.
inline constexpr size_t kMaxBuffers = 1'000'000;

// InvalidArgument naming the buffer (or span) when: there are no buffers or no byte to move;
// a name is empty or repeated; size is not product(shape) * element size; a non-empty buffer
// lies in no span; spans overlap; two buffers overlap without being the same range (tied
// weights, the same range under two names, are allowed).
Status ValidateBufferSet(const BufferSet& set);

// Registers every non-empty span with `engine` and builds a ServedModel of `set`'s tensors in
// place (not copied), checksummed on `threads` threads (xxh3-64; the tree checksum, on the GPU,
// when any span is device memory). The caller's memory must outlive the
// model and must not change while it is served: targets verify the checksums taken here.
StatusOr<ServedModel> ServeBuffers(TransferEngine& engine, const BufferSet& set, int threads = 2);

// A tensor's checksum with `algorithm` wherever it lies among `spans`: on the GPU for device
// spans, on the CPU otherwise. FailedPrecondition where a device span's GPU cannot be used.
StatusOr<ChecksumFunction> SpanChecksum(const std::vector<MemorySpan>& spans,
                                        ChecksumAlgorithm algorithm);

// Pulls a source's tensors into `into` in place: like PullWeights (same options, listing, order
// and failover), but every source tensor must match a buffer of the same name, dtype and shape,
// and the model must have no tensor the source lacks. A mismatch is FailedPrecondition naming
// the tensor and both shapes or dtypes; it is found before any byte moves, and no other source is
// tried (sources of one identity share a layout). Every buffer is verified against the source's
// checksum. The buffers' spans are registered with options.engine for the call.
// On failure after bytes moved (every source failed), buffers may hold partial data: the caller
// must not use them (load them another way). result.model is empty.
StatusOr<PullResult> PullIntoBuffers(const PullOptions& options, const BufferSet& into);

}  // namespace ferry::weights

#endif  // FERRY_FLOWS_BUFFERS_H_
