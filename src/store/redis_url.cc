#include "store/redis_url.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ferry::store {
namespace {

constexpr char kScheme[] = "redis://";
constexpr char kForm[] = "use redis://HOST:PORT[/DB], e.g. redis://127.0.0.1:6379/0";

// `url` with the password of its userinfo replaced by "***", for error messages.
std::string MaskPassword(const std::string& url) {
  const size_t start = url.find("://");
  if (start == std::string::npos) return url;
  const size_t authority = start + 3;
  const size_t end = url.find('/', authority);
  const size_t at = url.rfind('@', end == std::string::npos ? std::string::npos : end);
  if (at == std::string::npos || at < authority) return url;
  const size_t colon = url.find(':', authority);
  if (colon == std::string::npos || colon > at) return url;
  return absl::StrCat(url.substr(0, colon + 1), "***", url.substr(at));
}

bool PercentDecode(const std::string& in, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out->push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size() || !absl::ascii_isxdigit(in[i + 1]) ||
        !absl::ascii_isxdigit(in[i + 2])) {
      return false;
    }
    int value = 0;
    for (char c : {in[i + 1], in[i + 2]}) {
      value = value * 16 + (absl::ascii_isdigit(c) ? c - '0' : absl::ascii_tolower(c) - 'a' + 10);
    }
    out->push_back(static_cast<char>(value));
    i += 2;
  }
  return true;
}

}  // namespace

std::string RedisEndpoint::Describe() const {
  const bool ipv6 = host.find(':') != std::string::npos;
  return absl::StrCat("redis://", ipv6 ? "[" : "", host, ipv6 ? "]" : "", ":", port, "/", db);
}

StatusOr<RedisEndpoint> ParseRedisUrl(const std::string& url, const std::string& flag) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, "='", MaskPassword(url), "' ", why, "; ", kForm));
  };
  if (absl::StartsWithIgnoreCase(url, "rediss://")) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, "='", MaskPassword(url),
        "' asks for TLS, which this build cannot do (hiredis 0.14 has no TLS); use redis:// on a "
        "trusted network or a TLS tunnel such as stunnel"));
  }
  if (!absl::StartsWith(url, kScheme)) return bad("is not a redis:// URL");
  std::string rest = url.substr(sizeof(kScheme) - 1);
  if (rest.find_first_of("?#") != std::string::npos) {
    return bad("has a query or fragment, which is not supported");
  }

  RedisEndpoint ep;
  const size_t slash = rest.find('/');
  const std::string path = slash == std::string::npos ? "" : rest.substr(slash + 1);
  std::string authority = rest.substr(0, slash);
  if (!path.empty()) {
    if (!absl::SimpleAtoi(path, &ep.db) || ep.db < 0 || !absl::ascii_isdigit(path[0])) {
      return bad(absl::StrCat("has database '", path, "', which is not a number >= 0"));
    }
  }

  if (const size_t at = authority.rfind('@'); at != std::string::npos) {
    const std::string userinfo = authority.substr(0, at);
    authority = authority.substr(at + 1);
    const size_t colon = userinfo.find(':');
    if (colon == std::string::npos) {
      return bad("has credentials without a ':'; write :PASSWORD@ or USER:PASSWORD@");
    }
    if (!PercentDecode(userinfo.substr(0, colon), &ep.user) ||
        !PercentDecode(userinfo.substr(colon + 1), &ep.password)) {
      return bad("has a bad %-escape in its credentials");
    }
    if (ep.password.empty()) return bad("has credentials with an empty password");
  }

  std::string port;
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == std::string::npos) return bad("has an unterminated [IPv6] host");
    ep.host = authority.substr(1, close - 1);
    const std::string after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad("has text after the [IPv6] host");
      port = after.substr(1);
      if (port.empty()) return bad("has an empty port");
    }
  } else {
    const size_t colon = authority.find(':');
    if (colon != std::string::npos && authority.find(':', colon + 1) != std::string::npos) {
      return bad("has an IPv6 host without brackets; write redis://[ADDRESS]:PORT");
    }
    ep.host = authority.substr(0, colon);
    if (colon != std::string::npos) {
      port = authority.substr(colon + 1);
      if (port.empty()) return bad("has an empty port");
    }
  }
  if (ep.host.empty()) return bad("has no host");
  if (!port.empty()) {
    if (!absl::ascii_isdigit(port[0]) || !absl::SimpleAtoi(port, &ep.port) || ep.port < 1 ||
        ep.port > 65535) {
      return bad(absl::StrCat("has port '", port, "', which is not a number from 1 to 65535"));
    }
  }
  return ep;
}

}  // namespace ferry::store
