// The source side of the native TCP transport: a listener, one accept thread that also runs
// every handshake (no thread exists for a connection that has not presented the secret), a
// thread per authenticated connection, and the table of regions those threads may read from.
//
// Bounded against floods (TcpServerLimits): connections in all, per peer address, and waiting
// for their handshake; a connection past a bound is closed at once. Out of descriptors (EMFILE),
// the accept thread stops accepting for kAcceptBackoff instead of spinning, and logs at most one
// line per 10 s. A failure to start a connection's thread (a pids limit) closes that connection.
//
// Thread-safety: thread-safe. RemoveRegion waits until no connection is sending from the
// region (a send that is in progress is abandoned within ~100 ms and its connection closed), so
// the caller may free the memory as soon as it returns. A region of device memory is in use from
// the moment a reply's device-to-host copy starts (ahead of the reply, see AddRegion) until that
// copy completed and the reply was sent or abandoned.
#ifndef FERRY_TRANSFER_TCP_TCP_SERVER_H_
#define FERRY_TRANSFER_TCP_TCP_SERVER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/accept_guard.h"
#include "ferry/status.h"
#include "transfer/tcp/tcp_socket.h"
#include "transfer/tcp/tcp_wire.h"
#include "transfer/tcp/upload_pacer.h"

namespace ferry::internal::cuda {
class Device;
}  // namespace ferry::internal::cuda

namespace ferry::internal::staging {
class StagedSource;
}  // namespace ferry::internal::staging

namespace ferry::internal::tcp {

struct TcpServerLimits {
  // Connections open at once (authenticated or not). A target opens tcp_streams (<= 64) per pull.
  int max_connections = 512;
  // Connections open at once from one peer address.
  int max_per_peer = 128;
  // Connections that have not finished their handshake yet.
  int max_pending = 32;
  // How long a connection may take to present its Hello before it is closed.
  absl::Duration handshake_timeout = absl::Seconds(3);
  // Bytes per second sent to all connections together (UploadPacer); 0: no cap.
  uint64_t upload_bytes_per_second = 0;
  // Regions of device memory are sent through pinned slots (staging::StagedSource), per
  // connection that reads them: this many slots of this many bytes (one being sent, the others
  // filled ahead).
  int staging_slots = 3;
  uint64_t staging_slot_bytes = 4ull << 20;
};

class TcpServer {
 public:
  // Binds `listen` and starts accepting. `secret` (kSecretBytes) must be presented by every
  // connection. `buffer_bytes` > 0 sets SO_SNDBUF/SO_RCVBUF on accepted sockets.
  static StatusOr<std::unique_ptr<TcpServer>> Create(const HostPort& listen, int buffer_bytes,
                                                     std::string secret,
                                                     TcpServerLimits limits = {});
  ~TcpServer();  // Stop()
  TcpServer(const TcpServer&) = delete;
  TcpServer& operator=(const TcpServer&) = delete;

  uint16_t port() const { return port_; }

  // Orders every write the calling thread made to registered memory before any reply that
  // follows: a reply is sent under this lock's Admit, so the application's writes to a region
  // happen-before the bytes a peer reads (the engine calls it when it exports its blob, which
  // peers need before they can ask). Without it the order exists only through other processes.
  void PublishWrites() const { absl::MutexLock lock(&mu_); }

  // InvalidArgument if `id` is already registered. With `device`, [data, data + size) is memory
  // of that device (data: its device address) and each reply is copied through pinned host
  // slots ahead of sending it (StagedSource); the wire is the same. REQUIRES: `device` outlives
  // the region's registration.
  Status AddRegion(uint32_t id, const void* data, uint64_t size, cuda::Device* device = nullptr);
  // Idempotent; see the class comment.
  void RemoveRegion(uint32_t id);
  // Serves only the ranges of region `id` that `allowed` accepts (null: all); others get
  // ReplyStatus::kNotServed. NotFound for an unknown region.
  Status LimitRegion(uint32_t id, std::function<bool(uint64_t, uint64_t)> allowed);

  // How busy serving was since the previous call: the fraction of that time during which at
  // least one reply was being sent, or, with an upload cap, the bytes sent over what the cap
  // allowed in that time, whichever is larger; in [0, 1].
  double TakeLoad();

  // Stops accepting, closes every connection (their peers' reads fail) and joins all threads.
  // Idempotent.
  void Stop();

 private:
  struct RegionEntry {
    const char* data;  // a device address when `device` is set
    uint64_t size;
    cuda::Device* device = nullptr;  // null: host memory
    int users = 0;                   // sends in progress; guarded by TcpServer::mu_
    // Ranges it may serve (null: all); guarded by TcpServer::mu_.
    std::shared_ptr<const std::function<bool(uint64_t, uint64_t)>> allowed;
    std::atomic<bool> removed{false};  // set by RemoveRegion; senders give up when they see it
  };
  struct Connection {
    Fd fd;
    std::string peer;  // the peer's address, for the per-peer bound
    std::thread thread;
    std::atomic<bool> finished{false};
  };
  // A connection waiting for its Hello; owned by the accept thread.
  struct Pending {
    Fd fd;
    std::string peer;
    absl::Time deadline;
    Hello hello{};
    size_t have = 0;  // bytes of hello received
  };

  TcpServer(Fd listener, uint16_t port, int buffer_bytes, std::string secret,
            TcpServerLimits limits);
  void AcceptLoop();
  // Accepts one connection (or closes it at once past a bound). False when accept4 failed for
  // lack of resources: the caller backs off.
  bool AcceptOne(std::vector<Pending>* pending);
  // Reads what `p` has sent; true when it is finished (authenticated, refused or gone), and
  // then it was either handed to a serving thread or closed.
  bool AdvanceHandshake(Pending& p);
  // Starts the serving thread of an authenticated connection.
  void StartServing(Pending&& p);
  void Serve(Connection* conn);
  // Checks `req` against the regions: the region (its users counted) when it may be served,
  // otherwise null with reply->status saying why.
  std::shared_ptr<RegionEntry> Admit(const ReadRequest& req, ReadReply* reply);
  // A request admitted ahead of its turn, with its copies started (device regions).
  struct Admitted;
  // Serves request `i` of `requests[0, count)` (a region of device memory; `entry` admitted,
  // or null when it was admitted ahead and is ahead->front()), starting the copies of the
  // following device requests of the batch first. False when the connection must close.
  bool ServeStaged(int fd, const ReadRequest* requests, size_t i, size_t count,
                   std::shared_ptr<RegionEntry> entry, std::deque<Admitted>* ahead,
                   std::vector<std::unique_ptr<staging::StagedSource>>* staged);
  // Sends `reply` and its payload `data` (reply.length bytes), paced when capped.
  template <typename StopFn>
  IoResult SendReply(int fd, const ReadReply& reply, const char* data, StopFn&& stop);
  // Sends `n` bytes of payload, paced when capped.
  template <typename StopFn>
  IoResult SendPayload(int fd, const char* data, uint64_t n, StopFn&& stop);
  // Gives back a use of `entry` counted by Admit.
  void Unuse(RegionEntry* entry);
  // Joins connections whose threads have returned.
  void ReapFinished();
  // Connections counted against the bounds: serving ones plus `pending`.
  int OpenFrom(const std::string& peer) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Fd listener_;  // closed by Stop() after the accept thread is joined
  const uint16_t port_;
  const int buffer_bytes_;
  const std::string secret_;
  const TcpServerLimits limits_;
  std::unique_ptr<UploadPacer> pacer_;  // null without a cap

  // Load accounting (TakeLoad).
  void BeginSend();
  void EndSend(uint64_t bytes);
  absl::Mutex load_mu_;
  int sending_ ABSL_GUARDED_BY(load_mu_) = 0;
  absl::Time busy_since_ ABSL_GUARDED_BY(load_mu_);
  absl::Duration busy_ ABSL_GUARDED_BY(load_mu_);
  uint64_t sent_ ABSL_GUARDED_BY(load_mu_) = 0;
  absl::Time last_take_ ABSL_GUARDED_BY(load_mu_) = absl::Now();
  std::atomic<bool> stopping_{false};
  std::thread accept_thread_;
  absl::Mutex stop_mu_;  // serializes Stop()

  mutable absl::Mutex mu_;
  std::map<uint32_t, std::shared_ptr<RegionEntry>> regions_ ABSL_GUARDED_BY(mu_);
  std::list<std::unique_ptr<Connection>> connections_ ABSL_GUARDED_BY(mu_);
  // Pending connections per peer, kept by the accept thread for the bounds.
  std::map<std::string, int> pending_per_peer_ ABSL_GUARDED_BY(mu_);
  int pending_ ABSL_GUARDED_BY(mu_) = 0;
  LogLimiter refused_log_;  // refused connections, one line per 10 s; accept thread only
};

}  // namespace ferry::internal::tcp

#endif  // FERRY_TRANSFER_TCP_TCP_SERVER_H_
