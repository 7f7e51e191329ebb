#include "flows/transfer_plan.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "weights/dtype.h"

namespace ferry::weights::internal {

StatusOr<Plan> MakePlan(const ferry::v1::GetTransferInfoResponse& info) {
  if (info.tensors().empty()) {
    return absl::FailedPreconditionError(
        "the source serves 0 tensors; refusing an empty model (is it the right identity?)");
  }
  Plan plan;
  if (!info.checksum_algorithm().empty()) {
    auto algorithm = ParseChecksumAlgorithm(info.checksum_algorithm());
    if (!algorithm.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the source's ", algorithm.status().message(), "; this ferry cannot verify it"));
    }
    plan.algorithm = *algorithm;
  }
  plan.remote.assign(info.tensors().begin(), info.tensors().end());
  std::sort(plan.remote.begin(), plan.remote.end(), [](const auto& a, const auto& b) {
    return std::make_pair(a.region(), a.offset()) < std::make_pair(b.region(), b.offset());
  });
  for (const ferry::v1::TensorEntry& e : plan.remote) {
    FERRY_ASSIGN_OR_RETURN(DType dtype, ParseDType(e.dtype()));
    uint64_t elements = 1;
    for (uint64_t d : e.shape()) {
      if (d != 0 && elements > UINT64_MAX / d) {
        return absl::FailedPreconditionError(
            absl::StrCat("tensor ", e.name(), ": shape overflows 64 bits"));
      }
      elements *= d;
    }
    if (elements > UINT64_MAX / DTypeSize(dtype) || elements * DTypeSize(dtype) != e.size()) {
      return absl::FailedPreconditionError(absl::StrCat("tensor ", e.name(), ": size ", e.size(),
                                                        " does not match its shape and dtype ",
                                                        e.dtype()));
    }
    if (e.size() > UINT64_MAX - plan.total) {
      // A hostile source could otherwise wrap the total, get a small buffer allocated, and then
      // have more bytes written into it than it holds.
      return absl::FailedPreconditionError(
          absl::StrCat("tensor ", e.name(), ": the tensors' sizes together overflow 64 bits"));
    }
    TensorInfo& t = plan.local.emplace_back();
    t.name = e.name();
    t.dtype = dtype;
    t.shape.assign(e.shape().begin(), e.shape().end());
    t.offset = plan.total;
    t.size = e.size();
    plan.total += e.size();
  }
  plan.metadata.insert(info.metadata().begin(), info.metadata().end());
  return plan;
}

std::vector<ReadOp> MakeOps(const Plan& plan, uint8_t* base) {
  std::vector<ReadOp> ops;
  for (size_t i = 0; i < plan.remote.size(); ++i) {
    const ferry::v1::TensorEntry& e = plan.remote[i];
    if (e.size() == 0) continue;
    if (!ops.empty() && ops.back().remote_region == e.region() &&
        ops.back().remote_offset + ops.back().length == e.offset()) {
      ops.back().length += e.size();
      continue;
    }
    ops.push_back(ReadOp{e.region(), e.offset(), base + plan.local[i].offset, e.size()});
  }
  return ops;
}

}  // namespace ferry::weights::internal
