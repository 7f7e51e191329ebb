#include "common/listener_probe.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/fd.h"
#include "common/logging.h"

namespace ferry::internal {

std::vector<TcpListener> TcpListeners() {
  std::vector<TcpListener> out;
  // Both tables: gRPC binds 127.0.0.1 as a v4-mapped address on an IPv6 socket.
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, queues, timer, retransmits, uid, timeout, inode;
      fields >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >>
          timeout >> inode;
      const size_t colon = local.rfind(':');
      const size_t q = queues.find(':');
      if (state != "0A" || colon == std::string::npos || q == std::string::npos) continue;
      TcpListener l;
      l.port = static_cast<uint16_t>(std::stoul(local.substr(colon + 1), nullptr, 16));
      l.backlog = std::stoull(queues.substr(q + 1), nullptr, 16);  // rx_queue of a LISTEN socket
      l.inode = inode;
      out.push_back(std::move(l));
    }
  }
  return out;
}

namespace {

// The accept backlog of the listening sockets on `port`; -1 when none listens there.
int64_t AcceptBacklog(uint16_t port) {
  int64_t found = -1;
  for (const TcpListener& l : TcpListeners()) {
    if (l.port == port) found = std::max<int64_t>(found, static_cast<int64_t>(l.backlog));
  }
  return found;
}

}  // namespace

std::string ProbeHost(const std::string& listen) {
  std::string host = listen;
  if (!host.empty() && host[0] == '[') {
    host = host.substr(
        1, host.find(']') == std::string::npos ? std::string::npos : host.find(']') - 1);
    return host == "::" || host.empty() ? "::1" : host;
  }
  const size_t colon = host.rfind(':');
  if (colon != std::string::npos) host = host.substr(0, colon);
  if (host.empty() || host == "0.0.0.0" || host == "*") return "127.0.0.1";
  if (host == "::") return "::1";
  return host;
}

Status ProbeListener(const std::string& host_in, uint16_t port, absl::Duration timeout) {
  const std::string host = host_in.empty() ? "127.0.0.1" : host_in;
  const bool ipv6 = host.find(':') != std::string::npos;
  const std::string where =
      ipv6 ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
  const auto unavailable = [&](const std::string& why) {
    return absl::UnavailableError(absl::StrCat("the listener on ", where, " ", why));
  };
  sockaddr_storage addr{};
  socklen_t len = 0;
  if (ipv6) {
    auto& a = reinterpret_cast<sockaddr_in6&>(addr);
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(port);
    if (::inet_pton(AF_INET6, host.c_str(), &a.sin6_addr) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot probe ", where, ": not a numeric address"));
    }
    len = sizeof(a);
  } else {
    auto& a = reinterpret_cast<sockaddr_in&>(addr);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    if (::inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot probe ", where, ": not a numeric address"));
    }
    len = sizeof(a);
  }
  Fd fd(::socket(ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return unavailable(absl::StrCat("cannot be probed: this process cannot open a socket (",
                                    ErrnoText(errno), "); raise the descriptor limit"));
  }
  // On loopback the kernel completes the handshake at once, accepted or not: the connection
  // then sits in the listener's backlog until the server calls accept().
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    return unavailable(absl::StrCat("refused a connection: ", ErrnoText(errno)));
  }
  // A live server empties its backlog within milliseconds; one whose accept loop stopped never
  // does. Nothing is sent, so the server only sees a connection close (no handshake error).
  const absl::Time deadline = absl::Now() + timeout;
  absl::Duration pause = absl::Milliseconds(1);
  for (;;) {
    const int64_t backlog = AcceptBacklog(port);
    if (backlog == 0) return absl::OkStatus();
    if (backlog < 0) return unavailable("is not listening");
    if (absl::Now() >= deadline) {
      return unavailable(absl::StrCat(
          "is not accepting connections (", backlog, " waiting in its backlog after ",
          absl::FormatDuration(timeout),
          "); the process likely ran out of descriptors, and its accept loop does not recover: "
          "restart it"));
    }
    absl::SleepFor(pause);  // polling the kernel's table; nothing to wait on
    pause = std::min(pause * 2, absl::Milliseconds(50));
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
    Status s = ProbeListener(options_.host, options_.port, options_.timeout);
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
