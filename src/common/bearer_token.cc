#include "common/bearer_token.h"

#include <openssl/crypto.h>

#include "absl/strings/match.h"

namespace ferry::internal {

std::optional<std::string_view> BearerTokenOf(std::string_view authorization) {
  constexpr std::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(absl::string_view(authorization.data(), kScheme.size()),
                              absl::string_view(kScheme.data(), kScheme.size()))) {
    return std::nullopt;
  }
  return authorization.substr(kScheme.size());
}

bool TokenDigest::Matches(const TokenDigest& other) const {
  return CRYPTO_memcmp(digest_.data(), other.digest_.data(), digest_.size()) == 0;
}

}  // namespace ferry::internal
