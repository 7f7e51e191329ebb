// How a target lays out what a source's GetTransferInfo describes: the source's tensors, checked
// and ordered by (region, offset), and where each lands in one contiguous local buffer. The
// answer comes from the network (a hostile or broken source), so every size is checked before it
// is used to size or address local memory.
#ifndef FERRY_FLOWS_TRANSFER_PLAN_H_
#define FERRY_FLOWS_TRANSFER_PLAN_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ferry/status.h"
#include "ferry/transfer.h"
#include "ferry/v1/worker.pb.h"
#include "weights/safetensors.h"
#include "weights/tensor_checksum.h"

namespace ferry::weights::internal {

// Tensor i of `remote` goes to local offset `local[i].offset`, contiguous in that order;
// `total` is the sum of the sizes.
struct Plan {
  std::vector<ferry::v1::TensorEntry> remote;
  std::vector<TensorInfo> local;
  std::map<std::string, std::string> metadata;
  uint64_t total = 0;
  ChecksumAlgorithm algorithm = ChecksumAlgorithm::kXxh3_64;  // of the remote checksums
};

// FailedPrecondition naming the tensor when the answer is empty, a dtype is unknown, a shape
// overflows or does not match the size, or the sizes together overflow 64 bits; or naming the
// checksum algorithm when this ferry does not know it (an empty one is "xxh3-64", the only one
// before the tree checksum).
StatusOr<Plan> MakePlan(const ferry::v1::GetTransferInfoResponse& info);

// One read per run of tensors that are adjacent in the remote region (they are adjacent
// locally by construction), so that the op count does not grow with the tensor count. `base`
// is the start of a local buffer of plan.total bytes.
std::vector<ReadOp> MakeOps(const Plan& plan, uint8_t* base);

}  // namespace ferry::weights::internal

#endif  // FERRY_FLOWS_TRANSFER_PLAN_H_
