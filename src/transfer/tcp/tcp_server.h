// The source side of the native TCP transport: a listener, a thread per accepted connection,
// and the table of regions those threads may read from.
//
// Thread-safety: thread-safe. RemoveRegion waits until no connection is sending from the
// region (a send that is in progress is abandoned within ~100 ms and its connection closed), so
// the caller may free the memory as soon as it returns.
#ifndef FERRY_TRANSFER_TCP_TCP_SERVER_H_
#define FERRY_TRANSFER_TCP_TCP_SERVER_H_

#include <atomic>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "ferry/status.h"
#include "transfer/tcp/tcp_socket.h"

namespace ferry::internal::tcp {

class TcpServer {
 public:
  // Binds `listen` and starts accepting. `secret` (kSecretBytes) must be presented by every
  // connection. `buffer_bytes` > 0 sets SO_SNDBUF/SO_RCVBUF on accepted sockets.
  static StatusOr<std::unique_ptr<TcpServer>> Create(const HostPort& listen, int buffer_bytes,
                                                     std::string secret);
  ~TcpServer();  // Stop()
  TcpServer(const TcpServer&) = delete;
  TcpServer& operator=(const TcpServer&) = delete;

  uint16_t port() const { return port_; }

  // InvalidArgument if `id` is already registered.
  Status AddRegion(uint32_t id, const void* data, uint64_t size);
  // Idempotent; see the class comment.
  void RemoveRegion(uint32_t id);

  // Stops accepting, closes every connection (their peers' reads fail) and joins all threads.
  // Idempotent.
  void Stop();

 private:
  struct RegionEntry {
    const char* data;
    uint64_t size;
    int users = 0;                     // sends in progress; guarded by TcpServer::mu_
    std::atomic<bool> removed{false};  // set by RemoveRegion; senders give up when they see it
  };
  struct Connection {
    Fd fd;
    std::thread thread;
    std::atomic<bool> finished{false};
  };

  TcpServer(Fd listener, uint16_t port, int buffer_bytes, std::string secret);
  void AcceptLoop();
  void Serve(Connection* conn);
  bool Handshake(int fd);
  // Joins connections whose threads have returned.
  void ReapFinished();

  Fd listener_;  // closed by Stop() after the accept thread is joined
  const uint16_t port_;
  const int buffer_bytes_;
  const std::string secret_;
  std::atomic<bool> stopping_{false};
  std::thread accept_thread_;
  absl::Mutex stop_mu_;  // serializes Stop()

  absl::Mutex mu_;
  std::map<uint32_t, std::shared_ptr<RegionEntry>> regions_ ABSL_GUARDED_BY(mu_);
  std::list<std::unique_ptr<Connection>> connections_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::internal::tcp

#endif  // FERRY_TRANSFER_TCP_TCP_SERVER_H_
