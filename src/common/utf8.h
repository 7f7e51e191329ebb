// UTF-8 validation shared by the layers that must refuse malformed text.
#ifndef FERRY_COMMON_UTF8_H_
#define FERRY_COMMON_UTF8_H_

#include <string_view>

namespace ferry::internal {

// True if `s` is well-formed UTF-8, as Rust's str requires: no overlong forms, surrogates or
// code points past U+10FFFF, no truncated sequences.
bool IsValidUtf8(std::string_view s);

}  // namespace ferry::internal

#endif  // FERRY_COMMON_UTF8_H_
