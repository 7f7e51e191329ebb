#include "common/listener_probe.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/fd.h"
#include "common/logging.h"

namespace ferry::internal {
namespace {

// Not an HTTP/2 preface and not a TLS record (0x66 is no TLS content type): a live gRPC server
// closes the connection as soon as it reads it.
constexpr char kProbeBytes[] = "ferry-probe\r\n\r\n";

int PollMs(absl::Time deadline) {
  const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
  return ms <= 0 ? 0 : static_cast<int>(std::min<int64_t>(ms, 100));
}

}  // namespace

Status ProbeListener(uint16_t port, absl::Duration timeout, bool ipv6) {
  const std::string where = absl::StrCat(ipv6 ? "[::1]:" : "127.0.0.1:", port);
  const auto unavailable = [&](const std::string& why) {
    return absl::UnavailableError(absl::StrCat("the listener on ", where, " ", why));
  };
  Fd fd(::socket(ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return unavailable(absl::StrCat("cannot be probed: this process cannot open a socket (",
                                    ErrnoText(errno), "); raise the descriptor limit"));
  }
  sockaddr_storage addr{};
  socklen_t len = 0;
  if (ipv6) {
    auto& a = reinterpret_cast<sockaddr_in6&>(addr);
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(port);
    a.sin6_addr = in6addr_loopback;
    len = sizeof(a);
  } else {
    auto& a = reinterpret_cast<sockaddr_in&>(addr);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof(a);
  }
  const absl::Time deadline = absl::Now() + timeout;
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0 && errno != EINPROGRESS) {
    return unavailable(absl::StrCat("refused a connection: ", ErrnoText(errno)));
  }
  pollfd p{fd.get(), POLLOUT, 0};
  while (::poll(&p, 1, PollMs(deadline)) == 0) {
    if (absl::Now() >= deadline) return unavailable("did not complete a TCP handshake in time");
  }
  int err = 0;
  socklen_t err_len = sizeof(err);
  ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &err_len);
  if (err != 0) return unavailable(absl::StrCat("refused a connection: ", ErrnoText(err)));
  if (::send(fd.get(), kProbeBytes, sizeof(kProbeBytes) - 1, MSG_NOSIGNAL) < 0) {
    return unavailable(absl::StrCat("dropped the probe: ", ErrnoText(errno)));
  }
  for (;;) {
    p = pollfd{fd.get(), POLLIN, 0};
    const int rc = ::poll(&p, 1, PollMs(deadline));
    if (rc > 0) {
      char buf[512];
      const ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return absl::OkStatus();
      continue;  // an answer (a TLS alert, an HTTP/2 GOAWAY): the close follows
    }
    if (absl::Now() >= deadline) {
      return unavailable(absl::StrCat(
          "is not accepting connections (a probe waited ", absl::FormatDuration(timeout),
          " in its backlog); the process likely ran out of descriptors, and its accept loop "
          "does not recover: restart it"));
    }
  }
}

std::unique_ptr<ListenerWatch> ListenerWatch::Start(Options options) {
  std::unique_ptr<ListenerWatch> watch(new ListenerWatch(std::move(options)));
  watch->thread_ = std::thread([w = watch.get()] { w->Loop(); });
  return watch;
}

ListenerWatch::~ListenerWatch() { Stop(); }

void ListenerWatch::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

Status ListenerWatch::health() const {
  absl::MutexLock lock(&mu_);
  return health_;
}

void ListenerWatch::Loop() {
  int failed = 0;
  bool reported = false;
  while (!stop_.WaitForNotificationWithTimeout(options_.interval)) {
    Status s = ProbeListener(options_.port, options_.timeout, options_.ipv6);
    if (s.ok()) {
      if (reported)
        spdlog::info("{} on port {} accepts connections again", options_.what, options_.port);
      failed = 0;
      reported = false;
      absl::MutexLock lock(&mu_);
      health_ = absl::OkStatus();
      continue;
    }
    if (++failed < options_.failures || reported) continue;
    s = absl::UnavailableError(absl::StrCat(options_.what, ": ", s.message()));
    spdlog::error("{}", s.message());
    reported = true;
    {
      absl::MutexLock lock(&mu_);
      health_ = s;
    }
    if (options_.on_unhealthy) options_.on_unhealthy(s);
  }
}

StatusOr<uint64_t> RaiseOpenFileLimit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) {
    return absl::InternalError(absl::StrCat("getrlimit(RLIMIT_NOFILE): ", ErrnoText(errno)));
  }
  if (lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) {
      return absl::InternalError(
          absl::StrCat("setrlimit(RLIMIT_NOFILE, ", lim.rlim_max, "): ", ErrnoText(errno)));
    }
  }
  return static_cast<uint64_t>(lim.rlim_cur);
}

}  // namespace ferry::internal
