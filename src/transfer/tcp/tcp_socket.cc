#include "transfer/tcp/tcp_socket.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include <charconv>
#include <memory>

#include "absl/strings/str_cat.h"

namespace ferry::internal::tcp {

StatusOr<HostPort> ParseHostPort(std::string_view text, std::string_view what) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(what), "=\"", std::string(text),
                                                   "\" ", std::string(why),
                                                   "; expected host:port or [ipv6]:port"));
  };
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return bad("has no port");
  std::string_view host = text.substr(0, colon);
  std::string_view port_text = text.substr(colon + 1);
  if (!host.empty() && host.front() == '[') {
    if (host.size() < 2 || host.back() != ']') return bad("has an unclosed '['");
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    return bad("has an IPv6 address without brackets");
  }
  unsigned port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() ||
      port > 65535) {
    return bad("has an invalid port (0..65535)");
  }
  return HostPort{std::string(host), static_cast<uint16_t>(port)};
}

std::string FormatHostPort(const std::string& host, uint16_t port) {
  if (host.find(':') != std::string::npos) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

bool IsWildcardHost(const std::string& host) {
  return host.empty() || host == "0.0.0.0" || host == "::" || host == "*";
}

namespace {

// getaddrinfo for TCP. `passive` for binding.
StatusOr<addrinfo*> Resolve(const HostPort& address, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  std::string port = std::to_string(address.port);
  const char* host = address.host.empty() || address.host == "*" ? nullptr : address.host.c_str();
  addrinfo* result = nullptr;
  int rc = ::getaddrinfo(host, port.c_str(), &hints, &result);
  if (rc != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ",
                                               FormatHostPort(address.host, address.port), ": ",
                                               gai_strerror(rc), "; check the host name"));
  }
  return result;
}

struct AddrInfoDeleter {
  void operator()(addrinfo* ai) const { ::freeaddrinfo(ai); }
};

}  // namespace

Status ConfigureSocket(int fd, int buffer_bytes) {
  int one = 1;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
    return absl::InternalError(absl::StrCat("setsockopt(TCP_NODELAY): ", ErrnoText(errno)));
  }
  timeval tv{};
  tv.tv_usec = absl::ToInt64Microseconds(kIoPollInterval);
  if (::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0 ||
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0) {
    return absl::InternalError(
        absl::StrCat("setsockopt(SO_SNDTIMEO/SO_RCVTIMEO): ", ErrnoText(errno)));
  }
  if (buffer_bytes > 0) {
    if (::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer_bytes, sizeof(buffer_bytes)) != 0 ||
        ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof(buffer_bytes)) != 0) {
      return absl::InternalError(
          absl::StrCat("setsockopt(SO_SNDBUF/SO_RCVBUF=", buffer_bytes, "): ", ErrnoText(errno)));
    }
  }
  return absl::OkStatus();
}

StatusOr<Fd> Listen(const HostPort& address, uint16_t* bound_port) {
  FERRY_ASSIGN_OR_RETURN(addrinfo * raw, Resolve(address, /*passive=*/true));
  std::unique_ptr<addrinfo, AddrInfoDeleter> list(raw);
  int last_err = 0;
  for (addrinfo* ai = list.get(); ai != nullptr; ai = ai->ai_next) {
    Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      last_err = errno;
      continue;
    }
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd.get(), 128) != 0) {
      last_err = errno;
      continue;
    }
    sockaddr_storage bound{};
    socklen_t len = sizeof(bound);
    if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
      last_err = errno;
      continue;
    }
    *bound_port =
        ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                          : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    return fd;
  }
  return absl::UnavailableError(
      absl::StrCat("cannot listen on ", FormatHostPort(address.host, address.port), ": ",
                   ErrnoText(last_err), "; pick a free port or another address"));
}

StatusOr<Fd> Dial(const HostPort& address, absl::Duration timeout, int buffer_bytes) {
  const std::string where = FormatHostPort(address.host, address.port);
  FERRY_ASSIGN_OR_RETURN(addrinfo * raw, Resolve(address, /*passive=*/false));
  std::unique_ptr<addrinfo, AddrInfoDeleter> list(raw);
  int last_err = 0;
  for (addrinfo* ai = list.get(); ai != nullptr; ai = ai->ai_next) {
    Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol));
    if (!fd.valid()) {
      last_err = errno;
      continue;
    }
    // Buffer sizes must be set before connect() to affect the window scale.
    FERRY_RETURN_IF_ERROR(ConfigureSocket(fd.get(), buffer_bytes));
    if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        last_err = errno;
        continue;
      }
      pollfd pfd{fd.get(), POLLOUT, 0};
      int rc = ::poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
      if (rc == 0) {
        last_err = ETIMEDOUT;
        continue;
      }
      int err = 0;
      socklen_t len = sizeof(err);
      ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (rc < 0 || err != 0) {
        last_err = rc < 0 ? errno : err;
        continue;
      }
    }
    int flags = ::fcntl(fd.get(), F_GETFL);
    ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
    return fd;
  }
  return absl::UnavailableError(
      absl::StrCat("cannot connect to ", where, ": ", ErrnoText(last_err)));
}

}  // namespace ferry::internal::tcp
