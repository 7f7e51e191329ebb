// Digests shared across layers (OpenSSL stays private to ferry_common): the one place ferry
// computes SHA-256.
#ifndef FERRY_COMMON_HASHING_H_
#define FERRY_COMMON_HASHING_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace ferry::internal {

using Sha256Digest = std::array<uint8_t, 32>;

// SHA-256 of `data`.
Sha256Digest Sha256(std::string_view data);

// Lowercase hex SHA-256 of `data` (64 characters).
std::string Sha256Hex(std::string_view data);

}  // namespace ferry::internal

#endif  // FERRY_COMMON_HASHING_H_
