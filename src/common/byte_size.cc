#include "common/byte_size.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace ferry::internal {
namespace {

constexpr char kAccepted[] =
    "use a whole number of bytes or a number with a binary unit B, KiB, MiB, GiB, TiB (or K, M, "
    "G, T; any case), e.g. 1073741824, 64MiB, 1.5GiB";

struct Unit {
  absl::string_view name;
  uint64_t multiplier;
};

// Longest names first, so that "MiB" is not read as "M" followed by "iB".
constexpr Unit kUnits[] = {
    {"kib", uint64_t{1} << 10}, {"mib", uint64_t{1} << 20}, {"gib", uint64_t{1} << 30},
    {"tib", uint64_t{1} << 40}, {"k", uint64_t{1} << 10},   {"m", uint64_t{1} << 20},
    {"g", uint64_t{1} << 30},   {"t", uint64_t{1} << 40},   {"b", 1},
};

bool AllDigits(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

}  // namespace

StatusOr<uint64_t> ParseByteSize(absl::string_view text, absl::string_view what) {
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, "='", text, "' is not a byte size (", why, "); ", kAccepted));
  };
  const std::string s = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  if (s.empty()) return invalid("it is empty");

  // Split NUMBER and UNIT at the first character that is neither a digit nor '.'.
  size_t split = 0;
  while (split < s.size() &&
         (absl::ascii_isdigit(static_cast<unsigned char>(s[split])) || s[split] == '.')) {
    ++split;
  }
  const absl::string_view number(s.data(), split);
  const absl::string_view unit =
      absl::StripLeadingAsciiWhitespace(absl::string_view(s).substr(split));
  if (s[0] == '-') return invalid("negative");
  if (number.empty()) return invalid("it does not start with a number");

  uint64_t multiplier = 1;
  if (!unit.empty()) {
    bool known = false;
    for (const Unit& u : kUnits) {
      if (unit == u.name) {
        multiplier = u.multiplier;
        known = true;
        break;
      }
    }
    if (!known) {
      if (unit == "kb" || unit == "mb" || unit == "gb" || unit == "tb") {
        return invalid(absl::StrCat("decimal unit '", unit,
                                    "': ferry's units are powers of 1024; write KiB, MiB, GiB or "
                                    "TiB"));
      }
      return invalid(absl::StrCat("unknown unit '", unit, "'"));
    }
  }

  const size_t dot = number.find('.');
  const absl::string_view whole = number.substr(0, dot);
  const absl::string_view fraction =
      dot == absl::string_view::npos ? absl::string_view() : number.substr(dot + 1);
  if (!AllDigits(whole) || (dot != absl::string_view::npos && !AllDigits(fraction))) {
    return invalid("expected a number such as 64 or 1.5 before the unit");
  }
  if (whole.size() > 20 || fraction.size() > 18) return invalid("too many digits");

  // Exact arithmetic: value = (whole * 10^f + fraction) * multiplier / 10^f.
  unsigned __int128 scale = 1;
  unsigned __int128 digits = 0;
  for (char c : whole) digits = digits * 10 + static_cast<unsigned>(c - '0');
  for (char c : fraction) {
    digits = digits * 10 + static_cast<unsigned>(c - '0');
    scale *= 10;
  }
  // digits < 10^38 fits in 128 bits; times the multiplier it may not: checked by dividing back.
  const unsigned __int128 scaled = digits * multiplier;
  if (scaled / multiplier != digits) return invalid("2^64 bytes or more");
  if (scaled % scale != 0) return invalid("not a whole number of bytes");
  const unsigned __int128 bytes = scaled / scale;
  if (bytes == 0) return invalid("zero; a size must be positive");
  if (bytes > UINT64_MAX) return invalid("2^64 bytes or more");
  return static_cast<uint64_t>(bytes);
}

}  // namespace ferry::internal
