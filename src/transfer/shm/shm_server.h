// The source side of the shm transport: a listener on an abstract unix socket and one thread
// (owned, joined in Stop) that authenticates targets and hands each a read-only descriptor per
// region it opens. It does nothing per read.
//
// Thread-safety: thread-safe.
#ifndef FERRY_TRANSFER_SHM_SHM_SERVER_H_
#define FERRY_TRANSFER_SHM_SHM_SERVER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

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
  // RemoveRegion of an exported region waits this long at most for the targets that opened it
  // to say they closed their mappings.
  absl::Duration export_close_wait = absl::Seconds(10);
};

// An exported region (ShmServer::AddExport): records opaque to the server, and the descriptors
// they refer to, made for each target that opens the region (duplicates of descriptors the
// exporter keeps, or exported anew) and closed once sent.
struct RegionExport {
  uint64_t size = 0;          // the region's bytes
  uint32_t record_count = 0;  // records in `records`
  std::string records;        // sent as they are
  // Makes the descriptors the records refer to, in order; null when they refer to none. Called
  // on the server thread for each open, only while the region is registered; an error is the
  // target's answer (its message says what to do).
  std::function<StatusOr<std::vector<Fd>>()> descriptors;
};

class ShmServer {
 public:
  // Listens on @`socket_name` and starts the server thread. REQUIRES: secret has kSecretBytes.
  static StatusOr<std::unique_ptr<ShmServer>> Create(std::string socket_name, std::string secret,
                                                     ShmServerLimits limits = {});
  // Create on a fresh abstract name "<prefix>-<pid>-<random>" with a fresh random secret.
  static StatusOr<std::unique_ptr<ShmServer>> CreateRandom(const std::string& prefix,
                                                           ShmServerLimits limits = {});
  ~ShmServer();  // Stop()

  const std::string& socket_name() const { return socket_name_; }
  const std::string& secret() const { return secret_; }
  ShmServer(const ShmServer&) = delete;
  ShmServer& operator=(const ShmServer&) = delete;

  // Serves region `id` from `memfd` (borrowed: it must stay open until RemoveRegion(id)
  // returns) of `size` bytes. Targets receive a fresh read-only descriptor for it.
  Status AddRegion(uint32_t id, int memfd, uint64_t size);
  // Serves region `id` as an export (kOpenExport): the records, and descriptors made for it,
  // go to every target that opens it.
  Status AddExport(uint32_t id, RegionExport region_export);
  // Stops handing out the region and tells every connected target that it is gone (a target
  // checks before each read). Reads already running on a target's mapping finish: the
  // mapping keeps the pages alive, so the memory is never touched after it is freed here. For
  // an export, also waits until every target that opened it has closed its mapping (or its
  // connection), at most ShmServerLimits::export_close_wait: device mappings (legacy CUDA IPC)
  // do not keep freed memory alive. Idempotent.
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
    std::set<uint32_t> open_exports;  // exports this target mapped and has not closed
    // What is still to be sent to this target (an export's records and descriptors, and the
    // notices queued behind them), under mu_; the descriptors it sends (closed once sent); when
    // the target must have taken it all. No request is read while it is not empty.
    Outbox out;
    std::vector<Fd> sending;
    absl::Time out_deadline;
  };
  struct RegionEntry {
    int memfd = -1;
    uint64_t size = 0;
  };

  ShmServer(Fd listener, Fd wake, std::string socket_name, std::string secret,
            ShmServerLimits limits);
  void Loop();
  // Handles one readable connection; false when it must be closed.
  bool Handle(Connection& conn);
  bool HandleHello(Connection& conn, const Hello& hello);
  bool HandleOpen(Connection& conn, const OpenRequest& request);
  bool HandleOpenExport(Connection& conn, const OpenRequest& request);
  // Sends what conn.out holds as far as the socket takes it; false when it failed.
  bool FlushOut(Connection& conn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether any connection still maps export `id`.
  bool ExportInUse(uint32_t id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Fd listener_;    // closed by Stop(), after the thread is joined
  const Fd wake_;  // eventfd: Stop() wakes the thread's poll
  const std::string socket_name_;
  const std::string secret_;
  const ShmServerLimits limits_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  absl::Mutex stop_mu_;

  mutable absl::Mutex mu_;
  std::map<uint32_t, RegionEntry> regions_ ABSL_GUARDED_BY(mu_);
  std::map<uint32_t, std::shared_ptr<const RegionExport>> exports_ ABSL_GUARDED_BY(mu_);
  // Only the server thread adds, removes and reads from connections; RemoveRegion sends
  // notices on them under mu_.
  std::list<Connection> connections_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::internal::shm

#endif  // FERRY_TRANSFER_SHM_SHM_SERVER_H_
