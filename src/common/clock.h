#ifndef FERRY_COMMON_CLOCK_H_
#define FERRY_COMMON_CLOCK_H_

#include <cstdint>

#include "absl/time/clock.h"

namespace ferry::internal {

// Wall-clock unix time in milliseconds: the unit of WorkerMetadata.updated_at.
inline int64_t NowMillis() { return absl::ToUnixMillis(absl::Now()); }

}  // namespace ferry::internal

#endif  // FERRY_COMMON_CLOCK_H_
