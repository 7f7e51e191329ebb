// ferry's error model: absl::Status / absl::StatusOr everywhere, plus two propagation macros.
//
// Codes are chosen by what the caller should do: Unavailable (retry later), NotFound (the thing
// is gone), Aborted (lost a race; re-read and retry), InvalidArgument (fix the input),
// FailedPrecondition (call things in the right order), PermissionDenied / Unauthenticated.
#ifndef FERRY_STATUS_H_
#define FERRY_STATUS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ferry {

using Status = absl::Status;
template <typename T>
using StatusOr = absl::StatusOr<T>;

}  // namespace ferry

#define FERRY_STATUS_CONCAT_INNER_(a, b) a##b
#define FERRY_STATUS_CONCAT_(a, b) FERRY_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define FERRY_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::absl::Status ferry_status_ = (expr);         \
    if (!ferry_status_.ok()) return ferry_status_; \
  } while (0)

// `lhs = value of expr` if `expr` (an absl::StatusOr) is OK; otherwise returns its status.
#define FERRY_ASSIGN_OR_RETURN(lhs, expr) \
  FERRY_ASSIGN_OR_RETURN_IMPL_(FERRY_STATUS_CONCAT_(ferry_statusor_, __LINE__), lhs, expr)
#define FERRY_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return std::move(tmp).status();     \
  lhs = std::move(tmp).value()

#endif  // FERRY_STATUS_H_
