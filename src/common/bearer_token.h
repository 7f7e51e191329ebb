// The one bearer-token check, shared by ferry-server's authenticator (server/auth.cc) and a
// source's worker endpoint (worker/request_gate.cc): parsing `authorization: Bearer <token>` and
// comparing tokens in constant time. Tokens are kept and compared only as SHA-256 digests, so
// that the comparison's time says nothing about a token, whatever their lengths.
#ifndef FERRY_COMMON_BEARER_TOKEN_H_
#define FERRY_COMMON_BEARER_TOKEN_H_

#include <optional>
#include <string_view>

#include "common/hashing.h"

namespace ferry::internal {

// The token of an `authorization` header value "Bearer <token>" (the scheme in any case, as
// RFC 6750 allows); nullopt when the value is not of that form or the token is empty.
std::optional<std::string_view> BearerTokenOf(std::string_view authorization);

// A token, held as its SHA-256 digest. Copyable value type.
class TokenDigest {
 public:
  explicit TokenDigest(std::string_view token) : digest_(Sha256(token)) {}

  // True if both digests are equal, compared in constant time (CRYPTO_memcmp): no early exit
  // on the first differing byte. Callers that check several digests check them all.
  bool Matches(const TokenDigest& other) const;

 private:
  Sha256Digest digest_;
};

}  // namespace ferry::internal

#endif  // FERRY_COMMON_BEARER_TOKEN_H_
