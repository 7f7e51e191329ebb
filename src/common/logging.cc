#include "common/logging.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace ferry::internal {

Status InitLogging(absl::string_view level, absl::string_view what) {
  const std::string l = absl::AsciiStrToLower(level);
  spdlog::level::level_enum lvl;
  if (l == "trace") {
    lvl = spdlog::level::trace;
  } else if (l == "debug") {
    lvl = spdlog::level::debug;
  } else if (l == "info") {
    lvl = spdlog::level::info;
  } else if (l == "warn" || l == "warning") {
    lvl = spdlog::level::warn;
  } else if (l == "error") {
    lvl = spdlog::level::err;
  } else if (l == "off") {
    lvl = spdlog::level::off;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        what, "='", level, "' is not a log level; use trace, debug, info, warn, error or off"));
  }
  auto logger = spdlog::stderr_color_mt("ferry");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(lvl);
  return absl::OkStatus();
}

}  // namespace ferry::internal
