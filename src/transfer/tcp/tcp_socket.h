// Socket plumbing for the native TCP transport: an owning file descriptor, "host:port" parsing,
// listening and dialing, and send/receive loops that can be interrupted.
//
// Every socket the transport uses has 100 ms SO_SNDTIMEO/SO_RCVTIMEO, so a blocked send or
// receive returns at least that often and the loops below ask their caller whether to go on
// (cancellation, deadlines, Stop()). Large transfers still take one system call per piece.
#ifndef FERRY_TRANSFER_TCP_TCP_SOCKET_H_
#define FERRY_TRANSFER_TCP_TCP_SOCKET_H_

#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "absl/time/time.h"
#include "common/fd.h"
#include "ferry/status.h"

namespace ferry::internal::tcp {

struct HostPort {
  std::string host;  // without IPv6 brackets
  uint16_t port = 0;
};

// Parses "host:port" or "[v6addr]:port". `what` names the option in errors.
StatusOr<HostPort> ParseHostPort(std::string_view text, std::string_view what);
// "host:port", bracketing IPv6 literals.
std::string FormatHostPort(const std::string& host, uint16_t port);
// "", "0.0.0.0", "::" and "*".
bool IsWildcardHost(const std::string& host);

// The I/O timeout every transport socket carries (see the file comment).
constexpr absl::Duration kIoPollInterval = absl::Milliseconds(100);

// TCP_NODELAY, the I/O timeouts, and SO_SNDBUF/SO_RCVBUF when buffer_bytes > 0.
Status ConfigureSocket(int fd, int buffer_bytes);

// A listening socket bound to `address` (SO_REUSEADDR, never SO_REUSEPORT). Sets *bound_port.
StatusOr<Fd> Listen(const HostPort& address, uint16_t* bound_port);

// A connected, configured socket. Unavailable naming the address and the cause on failure.
StatusOr<Fd> Dial(const HostPort& address, absl::Duration timeout, int buffer_bytes);

enum class Io { kOk, kEof, kError, kStopped };
struct IoResult {
  Io what = Io::kOk;
  int err = 0;  // errno when kError
};

// Sends every byte of iov[0..count) (count <= 8) with MSG_NOSIGNAL. `stop()` is asked after
// every partial send or timeout; true ends the loop with kStopped.
template <typename StopFn>
IoResult SendAll(int fd, const iovec* iov, int count, StopFn&& stop) {
  iovec local[8];
  for (int i = 0; i < count; ++i) local[i] = iov[i];
  iovec* cur = local;
  int left = count;
  while (left > 0 && cur->iov_len == 0) ++cur, --left;
  while (left > 0) {
    msghdr msg{};
    msg.msg_iov = cur;
    msg.msg_iovlen = left;
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return {Io::kError, errno};
      n = 0;
    }
    size_t sent = static_cast<size_t>(n);
    while (left > 0 && sent >= cur->iov_len) {
      sent -= cur->iov_len;
      ++cur, --left;
    }
    if (left == 0) break;
    cur->iov_base = static_cast<char*>(cur->iov_base) + sent;
    cur->iov_len -= sent;
    if (stop()) return {Io::kStopped, 0};
  }
  return {};
}

// Receives exactly `len` bytes into `buf` (MSG_WAITALL). kEof when the peer closed first.
// `landed(bytes)` (optional) is called for every piece as it arrives, so a slow link shows
// progress within a chunk (the stall detector watches it).
struct NoLanded {
  void operator()(uint64_t) const {}
};
template <typename StopFn, typename LandedFn = NoLanded>
IoResult RecvAll(int fd, void* buf, size_t len, StopFn&& stop, LandedFn&& landed = LandedFn()) {
  char* p = static_cast<char*>(buf);
  while (len > 0) {
    ssize_t n = ::recv(fd, p, len, MSG_WAITALL);
    if (n == 0) return {Io::kEof, 0};
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return {Io::kError, errno};
      n = 0;
    }
    if (n > 0) landed(static_cast<uint64_t>(n));
    p += n;
    len -= static_cast<size_t>(n);
    if (len > 0 && stop()) return {Io::kStopped, 0};
  }
  return {};
}

}  // namespace ferry::internal::tcp

#endif  // FERRY_TRANSFER_TCP_TCP_SOCKET_H_
