// Full Unicode lowercasing for the source identity (root locale, one code point may become
// several, a final capital sigma becomes a final small sigma: Rust's str::to_lowercase, which
// ModelExpress hashes with). ASCII text, nearly every identity, never needs more than a loop.
// Other text goes through ICU's C API, opened at run time (libicuuc.so.<the version built
// against>) rather than linked, so that no ferry binary or module needs ICU's 32 MiB to start;
// without it a non-ASCII identity fails with FailedPrecondition naming the library.
#ifndef FERRY_COMMON_UNICODE_LOWER_H_
#define FERRY_COMMON_UNICODE_LOWER_H_

#include <string>
#include <string_view>

#include "ferry/status.h"

namespace ferry::internal {

// Lowercases UTF-8 `text`; invalid sequences become U+FFFD (as ICU's UTF-8 conversion does).
StatusOr<std::string> UnicodeLower(std::string_view text);

// The same through the ICU library named `library` (its name is the only thing that differs;
// the tests use it to see the error for a library that is not there).
StatusOr<std::string> UnicodeLowerWith(std::string_view text, const char* library);

// The library UnicodeLower opens ("libicuuc.so.72" with Debian bookworm's ICU).
const char* IcuLibraryName();

}  // namespace ferry::internal

#endif  // FERRY_COMMON_UNICODE_LOWER_H_
