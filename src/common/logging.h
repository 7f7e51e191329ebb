// Logging goes through spdlog's default logger, to stderr. InitLogging sets the level once at
// startup; libraries log with spdlog::info/warn/error and never configure it themselves.
#ifndef FERRY_COMMON_LOGGING_H_
#define FERRY_COMMON_LOGGING_H_

#include <string_view>

#include "absl/strings/string_view.h"
#include "ferry/status.h"

namespace ferry::internal {

// Accepts trace, debug, info, warn, error, off (any case). `what` names the flag for errors.
Status InitLogging(absl::string_view level, absl::string_view what = "--log-level");

}  // namespace ferry::internal

#endif  // FERRY_COMMON_LOGGING_H_
