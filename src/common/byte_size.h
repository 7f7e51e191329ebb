// The one byte-size grammar of ferry: every flag and environment variable that takes a size
// (--size, --chunk-size, --max-message-size, FERRY_MAX_RECORD_BYTES, ...) is parsed here, and
// docs/operations.md ("Sizes") documents it once.
#ifndef FERRY_COMMON_BYTE_SIZE_H_
#define FERRY_COMMON_BYTE_SIZE_H_

#include <cstdint>

#include "absl/strings/string_view.h"
#include "ferry/status.h"

namespace ferry::internal {

// Parses a positive byte size:
//
//   SIZE   := NUMBER [UNIT]            surrounding white space is ignored
//   NUMBER := DIGITS ["." DIGITS]      decimal; a fraction only where it makes whole bytes
//   UNIT   := B | K | KiB | M | MiB | G | GiB | T | TiB     any case; powers of 1024
//
// "1073741824", "64MiB", "64m", "1.5GiB", "512k" and "4096B" are sizes. Zero, negative values,
// a fraction of a byte ("0.5KiB" is 512 B, "0.1KiB" is not whole), values of 2^64 bytes or more,
// exponents, and the decimal units KB/MB/GB/TB (ambiguous: ferry's units are binary, so they are
// refused rather than guessed) are InvalidArgument. The message names `what` (the flag or
// variable) and `text`, and says what is accepted:
//   --size='1GB' is not a byte size (...); use bytes or a binary unit, e.g. 1073741824,
//   64MiB, 1.5GiB
StatusOr<uint64_t> ParseByteSize(absl::string_view text, absl::string_view what);

}  // namespace ferry::internal

#endif  // FERRY_COMMON_BYTE_SIZE_H_
