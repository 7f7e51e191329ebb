// RedisEndpoint: where a RedisStore connects, parsed from
// `--store redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` (port 6379 and DB 0 by default; an IPv6
// host goes in brackets; USER and PASSWORD may be %-encoded). rediss:// is refused: hiredis 0.14
// has no TLS.
#ifndef FERRY_STORE_REDIS_URL_H_
#define FERRY_STORE_REDIS_URL_H_

#include <string>

#include "ferry/status.h"

namespace ferry::store {

struct RedisEndpoint {
  std::string host;      // name or address, without IPv6 brackets
  int port = 6379;       // 1-65535
  int db = 0;            // SELECTed after connecting when not 0
  std::string user;      // AUTH user (Redis 6 ACL); empty: the default user
  std::string password;  // empty: no AUTH

  // "redis://HOST:PORT/DB" without credentials: safe for logs and error messages.
  std::string Describe() const;
};

// Parses `url`. Errors are InvalidArgument naming `flag` and the value (the password masked),
// saying what is wrong and showing the expected form.
StatusOr<RedisEndpoint> ParseRedisUrl(const std::string& url, const std::string& flag = "--store");

}  // namespace ferry::store

#endif  // FERRY_STORE_REDIS_URL_H_
