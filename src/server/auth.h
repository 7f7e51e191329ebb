// Bearer-token authentication for the P2P service.
//
// The token file maps tokens to principals, one "TOKEN PRINCIPAL" pair per line; '#' starts a
// comment. It is re-read when it changes (checked at most once per second, on demand); a file
// that fails to parse leaves the previous tokens in force and logs why. Tokens are kept only
// as SHA-256 digests and compared in constant time; they are never logged.
//
// Thread-safe.
#ifndef FERRY_SERVER_AUTH_H_
#define FERRY_SERVER_AUTH_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/bearer_token.h"
#include "ferry/status.h"
#include "grpcpp/grpcpp.h"
#include "server/metrics.h"

namespace ferry::server {

struct Principal {
  std::string name;    // empty when authentication is off
  bool admin = false;  // may change any principal's records
};

struct AuthOptions {
  std::string tokens_file;                    // required
  std::vector<std::string> admin_principals;  // principals allowed to override ownership
  absl::Duration reload_check = absl::Seconds(1);
};

class TokenAuthenticator {
 public:
  // Reads the token file; InvalidArgument names the file and line when it is malformed.
  // Borrows `metrics` (may be null).
  static StatusOr<std::unique_ptr<TokenAuthenticator>> Create(AuthOptions options,
                                                              Metrics* metrics);

  // The caller's principal, from the `authorization: Bearer <token>` header. A missing or
  // malformed header, or an unknown token, is UNAUTHENTICATED.
  StatusOr<Principal> Authenticate(const grpc::ServerContext& context);
  // Same, for a header value already extracted (tests, other transports).
  StatusOr<Principal> AuthenticateHeader(std::string_view authorization);

  // Parses token file text. `source` names the file in errors.
  struct Entry {
    internal::TokenDigest digest;
    std::string principal;
  };
  static StatusOr<std::vector<Entry>> Parse(const std::string& text, const std::string& source);

 private:
  explicit TokenAuthenticator(AuthOptions options, Metrics* metrics);
  Status Load() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);  // (re)reads the file if it changed
  void MaybeReload();

  const AuthOptions options_;
  Metrics* const metrics_;
  absl::flat_hash_set<std::string> admins_;
  absl::Mutex mu_;
  std::vector<Entry> entries_ ABSL_GUARDED_BY(mu_);
  absl::Time last_check_ ABSL_GUARDED_BY(mu_);
  std::string file_stamp_ ABSL_GUARDED_BY(mu_);  // mtime, size and inode of the loaded file
};

}  // namespace ferry::server

#endif  // FERRY_SERVER_AUTH_H_
