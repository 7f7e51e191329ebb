#include "common/unicode_lower.h"

#include <dlfcn.h>
#include <unicode/ustring.h>
#include <unicode/uvernum.h>

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace ferry::internal {

namespace {

// ICU renames every C entry point with its version (u_strToLower -> u_strToLower_72); these
// macros give the names of the version these headers describe.
#define FERRY_ICU_STR2(x) #x
#define FERRY_ICU_STR(x) FERRY_ICU_STR2(x)

constexpr UChar kReplacement = 0xFFFD;

// The three ICU functions used, resolved once per library.
struct Icu {
  decltype(&u_strFromUTF8WithSub) from_utf8 = nullptr;
  decltype(&u_strToLower) to_lower = nullptr;
  decltype(&u_strToUTF8WithSub) to_utf8 = nullptr;
  std::string error;  // why it could not be opened; empty when usable
};

Icu Open(const char* library) {
  Icu icu;
  // Never closed: the functions stay in use for the life of the process.
  void* handle = ::dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = ::dlerror();
    icu.error = absl::StrCat("cannot open ", library, " (", why != nullptr ? why : "unknown",
                             "): lowercasing a non-ASCII source identity needs ICU ", U_ICU_VERSION,
                             "; install it (Debian: libicu", U_ICU_VERSION_SHORT,
                             ") or use ASCII identity fields");
    return icu;
  }
  icu.from_utf8 = reinterpret_cast<decltype(icu.from_utf8)>(
      ::dlsym(handle, FERRY_ICU_STR(u_strFromUTF8WithSub)));
  icu.to_lower =
      reinterpret_cast<decltype(icu.to_lower)>(::dlsym(handle, FERRY_ICU_STR(u_strToLower)));
  icu.to_utf8 =
      reinterpret_cast<decltype(icu.to_utf8)>(::dlsym(handle, FERRY_ICU_STR(u_strToUTF8WithSub)));
  if (icu.from_utf8 == nullptr || icu.to_lower == nullptr || icu.to_utf8 == nullptr) {
    icu.error = absl::StrCat(library, " lacks ", FERRY_ICU_STR(u_strToLower),
                             " or its UTF-8 conversions: not ICU ", U_ICU_VERSION);
  }
  return icu;
}

// Runs an ICU call that fills `out` and returns the length it needs; when the capacity was too
// small (U_BUFFER_OVERFLOW_ERROR) it runs it once more with that length.
template <typename T, typename Call>
StatusOr<std::vector<T>> Sized(int32_t guess, Call&& call, const char* what) {
  std::vector<T> out(static_cast<size_t>(std::max(guess, 1)));
  for (int attempt = 0; attempt < 2; ++attempt) {
    UErrorCode err = U_ZERO_ERROR;
    const int32_t n = call(out.data(), static_cast<int32_t>(out.size()), &err);
    if (err == U_BUFFER_OVERFLOW_ERROR) {
      out.resize(static_cast<size_t>(n));
      continue;
    }
    if (U_FAILURE(err)) {
      return absl::InternalError(absl::StrCat("ICU ", what, " failed with error ", err));
    }
    out.resize(static_cast<size_t>(n));
    return out;
  }
  return absl::InternalError(absl::StrCat("ICU ", what, " kept asking for more room"));
}

StatusOr<std::string> LowerWith(std::string_view text, const Icu& icu) {
  if (!icu.error.empty()) return absl::FailedPreconditionError(icu.error);
  const int32_t len = static_cast<int32_t>(text.size());
  FERRY_ASSIGN_OR_RETURN(std::vector<UChar> utf16,
                         Sized<UChar>(
                             len,
                             [&](UChar* out, int32_t cap, UErrorCode* err) {
                               int32_t n = 0;
                               icu.from_utf8(out, cap, &n, text.data(), len, kReplacement, nullptr,
                                             err);
                               return n;
                             },
                             "UTF-8 decoding"));
  const int32_t n16 = static_cast<int32_t>(utf16.size());
  FERRY_ASSIGN_OR_RETURN(std::vector<UChar> lower,
                         Sized<UChar>(
                             n16 + 8,
                             [&](UChar* out, int32_t cap, UErrorCode* err) {
                               return icu.to_lower(out, cap, utf16.data(), n16, "", err);
                             },
                             "lowercasing"));
  const int32_t nl = static_cast<int32_t>(lower.size());
  FERRY_ASSIGN_OR_RETURN(std::vector<char> utf8, Sized<char>(
                                                     nl * 3 + 1,
                                                     [&](char* out, int32_t cap, UErrorCode* err) {
                                                       int32_t n = 0;
                                                       icu.to_utf8(out, cap, &n, lower.data(), nl,
                                                                   kReplacement, nullptr, err);
                                                       return n;
                                                     },
                                                     "UTF-8 encoding"));
  return std::string(utf8.begin(), utf8.end());
}

bool IsAscii(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return (c & 0x80) == 0; });
}

}  // namespace

const char* IcuLibraryName() { return "libicuuc.so." U_ICU_VERSION_SHORT; }

StatusOr<std::string> UnicodeLower(std::string_view text) {
  if (IsAscii(text)) return absl::AsciiStrToLower(std::string(text));
  static const Icu* const icu = new Icu(Open(IcuLibraryName()));  // once, thread-safe
  return LowerWith(text, *icu);
}

StatusOr<std::string> UnicodeLowerWith(std::string_view text, const char* library) {
  if (IsAscii(text)) return absl::AsciiStrToLower(std::string(text));
  return LowerWith(text, Open(library));
}

}  // namespace ferry::internal
