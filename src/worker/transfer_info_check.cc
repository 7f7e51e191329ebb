#include "worker/transfer_info_check.h"

#include "weights/tensor_checksum.h"

namespace ferry::worker {

Status CheckWorkerId(const std::string& answered, const std::string& worker_id,
                     const std::string& what) {
  if (worker_id.empty() || answered == worker_id) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(what, ": the source answered for worker '", answered, "', not '", worker_id,
                   "'; another process now serves this endpoint: re-list sources"));
}

Status CheckTransferInfo(const ferry::v1::GetTransferInfoResponse& info,
                         const std::string& worker_id, const std::string& what) {
  FERRY_RETURN_IF_ERROR(CheckWorkerId(info.worker_id(), worker_id, what));
  if (auto algorithm = weights::ParseChecksumAlgorithm(info.checksum_algorithm());
      !algorithm.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": ", algorithm.status().message(),
                     "; this ferry cannot verify that source: try another source"));
  }
  FERRY_RETURN_IF_ERROR(CheckTensorNames(info.tensors(), what));
  uint64_t total = 0;
  for (const ferry::v1::TensorEntry& t : info.tensors()) total += t.size();
  if (total != info.total_bytes()) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": tensor sizes add up to ", total,
                                                      " bytes but total_bytes is ",
                                                      info.total_bytes(), "; try another source"));
  }
  return absl::OkStatus();
}

}  // namespace ferry::worker
