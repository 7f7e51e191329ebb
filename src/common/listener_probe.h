// Health of a listening socket seen from inside its own process, and the descriptor limit.
//
// gRPC 1.51 (Debian's) stops accepting on a listener for good once accept() fails with EMFILE:
// the server then looks alive (its threads run, heartbeats go out) while every new connection
// waits in the kernel's backlog forever. ProbeListener tells the two apart from the outside;
// ListenerWatch runs it periodically so that /healthz and a source's READY record can say so.
#ifndef FERRY_COMMON_LISTENER_PROBE_H_
#define FERRY_COMMON_LISTENER_PROBE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "ferry/status.h"

namespace ferry::internal {

// A listening TCP socket of this network namespace, from /proc/net/tcp and /proc/net/tcp6.
struct TcpListener {
  uint16_t port = 0;
  uint64_t backlog = 0;  // connections the kernel completed that nobody has accepted yet
  std::string inode;     // the socket's inode, as in /proc/<pid>/fd links "socket:[inode]"
};
std::vector<TcpListener> TcpListeners();

// Connects to `host`:`port` (a numeric IPv4 or IPv6 address the listener is bound to; "" means
// 127.0.0.1) and watches the listener's accept backlog (/proc/net/tcp, this network namespace)
// until it is empty: OK when the server accepted within `timeout`; Unavailable naming the
// address when the backlog does not drain (nobody accepts), when the connection is refused, or
// when this process cannot open a socket (out of descriptors). Sends nothing, so TLS servers log
// no handshake error.
Status ProbeListener(const std::string& host, uint16_t port, absl::Duration timeout);

// The address to probe a listener bound to `listen` ("HOST:PORT" or "[V6]:PORT") at: the host
// itself, or the loopback address of its family for a wildcard ("0.0.0.0", "::", "", "*").
std::string ProbeHost(const std::string& listen);

// Runs ProbeListener every `interval` on a thread it owns. After `failures` probes in a row
// fail, healthy() turns false and `on_unhealthy` runs once (on the watch thread) with the
// failure; a later success turns it true again. Thread-safe.
class ListenerWatch {
 public:
  struct Options {
    std::string host;  // see ProbeListener; "" is 127.0.0.1
    uint16_t port = 0;
    std::string what;  // "worker endpoint", "gRPC listener": for messages
    absl::Duration interval = absl::Seconds(5);
    absl::Duration timeout = absl::Seconds(2);
    int failures = 2;
    std::function<void(const Status&)> on_unhealthy;
  };
  static std::unique_ptr<ListenerWatch> Start(Options options);
  ~ListenerWatch();  // Stop()
  ListenerWatch(const ListenerWatch&) = delete;
  ListenerWatch& operator=(const ListenerWatch&) = delete;

  // OK while healthy; else the last failure, saying what to do.
  Status health() const;
  void Stop();  // idempotent

 private:
  explicit ListenerWatch(Options options) : options_(std::move(options)) {}
  void Loop();

  const Options options_;
  absl::Notification stop_;
  std::thread thread_;
  mutable absl::Mutex mu_;
  Status health_ ABSL_GUARDED_BY(mu_);
};

// Raises this process's soft limit on open descriptors to its hard limit, so that a flood of
// connections meets the bounds of ferry's own listeners before it meets EMFILE. Returns the
// new soft limit. For main() and the Python module's import; libraries never call it.
StatusOr<uint64_t> RaiseOpenFileLimit();

}  // namespace ferry::internal

#endif  // FERRY_COMMON_LISTENER_PROBE_H_
