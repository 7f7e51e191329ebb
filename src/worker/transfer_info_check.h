// The checks every transfer info passes wherever it came from: a source's worker endpoint
// (WorkerClient::GetTransferInfo) or a record's centralized transfer info
// (DecodeCentralizedMetadata). A target relies on them before it plans a pull.
#ifndef FERRY_WORKER_TRANSFER_INFO_CHECK_H_
#define FERRY_WORKER_TRANSFER_INFO_CHECK_H_

#include <string>
#include <string_view>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "ferry/status.h"
#include "ferry/v1/worker.pb.h"

namespace ferry::worker {

// Names non-empty and unique (a target matches tensors by name): FailedPrecondition naming
// the first offender, prefixed by `what` ("GetTransferInfo to 10.0.0.5:6555").
template <typename Tensors>
Status CheckTensorNames(const Tensors& tensors, const std::string& what) {
  absl::flat_hash_set<std::string_view> names;
  names.reserve(tensors.size());
  for (int i = 0; i < tensors.size(); ++i) {
    const std::string& name = tensors[i].name();
    if (name.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": tensor ", i, " has an empty name; try another source"));
    }
    if (!names.insert(name).second) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": tensor name '", name, "' appears twice; try another source"));
    }
  }
  return absl::OkStatus();
}

// `answered` must be `worker_id` (when that is not empty): FailedPrecondition otherwise (another
// process now serves there; the target re-lists).
Status CheckWorkerId(const std::string& answered, const std::string& worker_id,
                     const std::string& what);

// CheckWorkerId, a checksum algorithm this ferry knows, CheckTensorNames, and tensor sizes that
// add up to total_bytes. FailedPrecondition prefixed by `what`, saying what to do next.
Status CheckTransferInfo(const ferry::v1::GetTransferInfoResponse& info,
                         const std::string& worker_id, const std::string& what);

}  // namespace ferry::worker

#endif  // FERRY_WORKER_TRANSFER_INFO_CHECK_H_
