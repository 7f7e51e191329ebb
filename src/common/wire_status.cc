#include "common/wire_status.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace ferry::internal {

std::string StatusCodeMetadataValue(absl::StatusCode code) {
  return absl::StrCat(static_cast<int>(code));
}

std::optional<absl::StatusCode> ParseStatusCodeMetadata(absl::string_view value) {
  if (value.empty() || value.size() > 2 || (value.size() == 2 && value[0] == '0')) {
    return std::nullopt;
  }
  int number = 0;
  for (char c : value) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return std::nullopt;
    number = number * 10 + (c - '0');
  }
  // 1 (CANCELLED) .. 16 (UNAUTHENTICATED): every canonical code but OK.
  if (number < static_cast<int>(absl::StatusCode::kCancelled) ||
      number > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return std::nullopt;
  }
  return static_cast<absl::StatusCode>(number);
}

}  // namespace ferry::internal
