// Digests shared across layers (OpenSSL stays private to ferry_common).
#ifndef FERRY_COMMON_HASHING_H_
#define FERRY_COMMON_HASHING_H_

#include <string>
#include <string_view>

namespace ferry::internal {

// Lowercase hex SHA-256 of `data` (64 characters).
std::string Sha256Hex(std::string_view data);

}  // namespace ferry::internal

#endif  // FERRY_COMMON_HASHING_H_
