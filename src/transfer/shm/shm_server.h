// The source side of the shm transport: a listener on an abstract unix socket and one thread
// (owned, joined in Stop) that authenticates targets and hands each a read-only descriptor per
// region it opens. It does nothing per read.
//
// Thread-safety: thread-safe.
#ifndef FERRY_TRANSFER_SHM_SHM_SERVER_H_
#define FERRY_TRANSFER_SHM_SHM_SERVER_H_

#include <atomic>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ferry/status.h"
#include "transfer/shm/shm_wire.h"

namespace ferry::internal::shm {

// Bounds against floods of local connections; a connection past one is closed at once. Out of
// descriptors, the server stops accepting for kAcceptBackoff at a time and logs at most one
// line per 10 s.
struct ShmServerLimits {
  // Connections open at once; an authenticated target keeps one per source it reads from.
  int max_connections = 256;
  // Connections that have not presented the secret yet.
  int max_pending = 32;
  // How long a connection may take to present its Hello before it is closed.
  absl::Duration handshake_timeout = absl::Seconds(3);
};

class ShmServer {
 public:
  // Listens on @`socket_name` and starts the server thread. REQUIRES: secret has kSecretBytes.
  static StatusOr<std::unique_ptr<ShmServer>> Create(std::string socket_name, std::string secret,
                                                     ShmServerLimits limits = {});
  ~ShmServer();  // Stop()
  ShmServer(const ShmServer&) = delete;
  ShmServer& operator=(const ShmServer&) = delete;

  // Serves region `id` from `memfd` (borrowed: it must stay open until RemoveRegion(id)
  // returns) of `size` bytes. Targets receive a fresh read-only descriptor for it.
  Status AddRegion(uint32_t id, int memfd, uint64_t size);
  // Stops handing out the region and tells every connected target that it is gone (a target
  // checks before each read). Reads already running on a target's mapping finish: the
  // mapping keeps the pages alive, so the memory is never touched after it is freed here.
  // Idempotent.
  void RemoveRegion(uint32_t id);
  bool Serves(uint32_t id) const;

  // Closes the listener and every connection (targets then fail their next read with
  // Unavailable) and joins the thread. Idempotent.
  void Stop();

 private:
  struct Connection {
    Fd fd;
    bool authenticated = false;
    absl::Time accepted_at;
  };
  struct RegionEntry {
    int memfd = -1;
    uint64_t size = 0;
  };

  ShmServer(Fd listener, Fd wake, std::string secret, ShmServerLimits limits);
  void Loop();
  // Handles one readable connection; false when it must be closed.
  bool Handle(Connection& conn);
  bool HandleHello(Connection& conn, const Hello& hello);
  bool HandleOpen(Connection& conn, const OpenRequest& request);

  Fd listener_;    // closed by Stop(), after the thread is joined
  const Fd wake_;  // eventfd: Stop() wakes the thread's poll
  const std::string secret_;
  const ShmServerLimits limits_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  absl::Mutex stop_mu_;

  mutable absl::Mutex mu_;
  std::map<uint32_t, RegionEntry> regions_ ABSL_GUARDED_BY(mu_);
  // Only the server thread adds, removes and reads from connections; RemoveRegion sends
  // notices on them under mu_.
  std::list<Connection> connections_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::internal::shm

#endif  // FERRY_TRANSFER_SHM_SHM_SERVER_H_
