// Logging goes through spdlog's default logger, to stderr. InitLogging sets the level once at
// startup; libraries log with spdlog::info/warn/error and never configure it themselves.
#ifndef FERRY_COMMON_LOGGING_H_
#define FERRY_COMMON_LOGGING_H_

#include <string_view>

#include "absl/strings/string_view.h"
#include "ferry/status.h"
#include "fmt/format.h"
#include "spdlog/spdlog.h"

// Debian's abseil has its own string_view type (absl::Status::message() returns it); let fmt
// and spdlog format it like std::string_view.
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<std::string_view> {
  template <typename Ctx>
  auto format(absl::string_view s, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(std::string_view(s.data(), s.size()), ctx);
  }
};

namespace ferry::internal {

// Accepts trace, debug, info, warn, error, off (any case). `what` names the flag for errors.
Status InitLogging(absl::string_view level, absl::string_view what = "--log-level");

}  // namespace ferry::internal

#endif  // FERRY_COMMON_LOGGING_H_
