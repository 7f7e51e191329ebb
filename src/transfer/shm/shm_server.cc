#include "transfer/shm/shm_server.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/accept_guard.h"
#include "common/logging.h"

namespace ferry::internal::shm {

namespace {

// Poll interval of the server thread (for handshake timeouts and accept back-off; Stop() wakes
// it).
constexpr int kPollMs = 100;

Reply MakeReply(ReplyType type, absl::StatusCode code, uint32_t region, uint64_t size,
                const std::string& message) {
  Reply r{};
  r.type = type;
  r.code = static_cast<uint32_t>(code);
  r.region = region;
  r.size = size;
  std::strncpy(r.message, message.c_str(), sizeof(r.message) - 1);
  return r;
}

}  // namespace

StatusOr<std::unique_ptr<ShmServer>> ShmServer::Create(std::string socket_name, std::string secret,
                                                       ShmServerLimits limits) {
  if (limits.max_connections < 1 || limits.max_pending < 1) {
    return absl::InvalidArgumentError("ShmServerLimits: every bound must be at least 1");
  }
  if (secret.size() != kSecretBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("shm secret is ", secret.size(), " bytes; expected ", kSecretBytes));
  }
  FERRY_ASSIGN_OR_RETURN(Fd listener, ListenAbstract(socket_name));
  Fd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake.valid()) {
    return absl::InternalError(absl::StrCat("eventfd failed: ", ErrnoText(errno)));
  }
  std::unique_ptr<ShmServer> server(new ShmServer(
      std::move(listener), std::move(wake), std::move(socket_name), std::move(secret), limits));
  try {
    server->thread_ = std::thread([s = server.get()] { s->Loop(); });
  } catch (const std::system_error& e) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "shm server: cannot start its thread: ", e.what(), "; raise the thread (pids) limit"));
  }
  return server;
}

StatusOr<std::unique_ptr<ShmServer>> ShmServer::CreateRandom(const std::string& prefix,
                                                             ShmServerLimits limits) {
  unsigned char random[kSecretBytes + 8];
  if (RAND_bytes(random, sizeof(random)) != 1) {
    return absl::InternalError(absl::StrCat("RAND_bytes failed to make the ", prefix, " secret"));
  }
  std::string secret(reinterpret_cast<char*>(random), kSecretBytes);
  uint64_t tag;
  std::memcpy(&tag, random + kSecretBytes, sizeof(tag));
  // Abstract names live per network namespace and vanish with the socket: nothing to clean up.
  return Create(absl::StrFormat("%s-%d-%016x", prefix, ::getpid(), tag), std::move(secret), limits);
}

ShmServer::ShmServer(Fd listener, Fd wake, std::string socket_name, std::string secret,
                     ShmServerLimits limits)
    : listener_(std::move(listener)),
      wake_(std::move(wake)),
      socket_name_(std::move(socket_name)),
      secret_(std::move(secret)),
      limits_(limits) {}

ShmServer::~ShmServer() { Stop(); }

Status ShmServer::AddRegion(uint32_t id, int memfd, uint64_t size) {
  absl::MutexLock lock(&mu_);
  if (!regions_.emplace(id, RegionEntry{memfd, size}).second) {
    return absl::InvalidArgumentError(
        absl::StrCat("shm transport: region ", id, " is already registered"));
  }
  return absl::OkStatus();
}

Status ShmServer::AddExport(uint32_t id, RegionExport region_export) {
  absl::MutexLock lock(&mu_);
  if (regions_.count(id) != 0 || exports_.count(id) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("shm server: region ", id, " is already registered"));
  }
  exports_.emplace(id, std::make_shared<const RegionExport>(std::move(region_export)));
  return absl::OkStatus();
}

bool ShmServer::ExportInUse(uint32_t id) const {
  for (const Connection& conn : connections_) {
    if (conn.open_exports.count(id) != 0) return true;
  }
  return false;
}

void ShmServer::RemoveRegion(uint32_t id) {
  absl::MutexLock lock(&mu_);
  const bool exported = exports_.erase(id) != 0;
  if (regions_.erase(id) == 0 && !exported) return;
  const Reply notice = MakeReply(kRegionRemoved, absl::StatusCode::kOk, id, 0, "");
  for (Connection& conn : connections_) {
    if (!conn.authenticated) continue;
    if (!conn.out.empty()) {
      // Behind an export still being sent: after it, never between its packets.
      conn.out.AddPacket(&notice, sizeof(notice));
      continue;
    }
    // A target that cannot take the notice at once is not reading its socket; cut it off so
    // that its next read fails (Unavailable) instead of missing the removal.
    if (!SendPacket(conn.fd.get(), &notice, sizeof(notice))) ::shutdown(conn.fd.get(), SHUT_RDWR);
  }
  if (!exported) return;
  // The server thread erases a mapping from open_exports when its target closes it (or the
  // connection ends), under mu_, which this wait releases.
  auto closed = [this, id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !ExportInUse(id); };
  if (!mu_.AwaitWithTimeout(absl::Condition(&closed), limits_.export_close_wait)) {
    spdlog::warn(
        "shm server: region {} was removed while targets still mapped it; freeing it after {}", id,
        absl::FormatDuration(limits_.export_close_wait));
  }
}

bool ShmServer::Serves(uint32_t id) const {
  absl::MutexLock lock(&mu_);
  return regions_.count(id) != 0 || exports_.count(id) != 0;
}

void ShmServer::Stop() {
  absl::MutexLock stop_lock(&stop_mu_);
  stopping_.store(true);
  const uint64_t one = 1;
  if (::write(wake_.get(), &one, sizeof(one)) < 0) {
    // The eventfd counter cannot overflow here; the thread also polls every kPollMs.
  }
  if (thread_.joinable()) thread_.join();
  listener_.Reset();  // connects from here on are refused
  std::list<Connection> connections;
  absl::MutexLock lock(&mu_);
  connections.swap(connections_);
  // Closing a connection is what a target sees as "the source stopped".
}

void ShmServer::Loop() {
  std::vector<pollfd> fds;
  std::vector<Connection*> conns;
  LogLimiter exhausted_log;
  LogLimiter refused_log;
  absl::Time backoff_until = absl::InfinitePast();
  while (!stopping_.load()) {
    fds.clear();
    conns.clear();
    const bool accepting = absl::Now() >= backoff_until;
    fds.push_back(pollfd{wake_.get(), POLLIN, 0});
    fds.push_back(pollfd{listener_.get(), static_cast<short>(accepting ? POLLIN : 0), 0});
    {
      absl::MutexLock lock(&mu_);
      for (Connection& c : connections_) {
        // A connection with output pending is written to, not read from, until it is sent.
        fds.push_back(pollfd{c.fd.get(), static_cast<short>(c.out.empty() ? POLLIN : POLLOUT), 0});
        conns.push_back(&c);
      }
    }
    const int rc = ::poll(fds.data(), fds.size(), kPollMs);
    if (stopping_.load()) break;
    if (rc < 0) {
      if (errno != EINTR) spdlog::error("shm server: poll failed: {}", ErrnoText(errno));
      continue;
    }
    // Connections to close, decided without the lock (only this thread removes them).
    std::vector<Connection*> dead;
    const absl::Time now = absl::Now();
    for (size_t i = 0; i < conns.size(); ++i) {
      const short ev = fds[i + 2].revents;
      const bool writing = (fds[i + 2].events & POLLOUT) != 0;
      Connection& c = *conns[i];
      if (writing && now > c.out_deadline) {
        // A target that has not taken an export within the bound is cut off: its open fails
        // (a stalled one used to hold this thread, and every other target, for as long).
        dead.push_back(&c);
      } else if ((ev & POLLOUT) != 0) {
        absl::MutexLock lock(&mu_);
        if (!FlushOut(c)) dead.push_back(&c);
      } else if ((ev & POLLIN) != 0) {
        if (!Handle(c)) dead.push_back(&c);
      } else if ((ev & (POLLHUP | POLLERR | POLLNVAL)) != 0) {
        dead.push_back(&c);
      } else if (!c.authenticated && now - c.accepted_at > limits_.handshake_timeout) {
        dead.push_back(&c);
      }
    }
    if (!dead.empty()) {
      absl::MutexLock lock(&mu_);
      connections_.remove_if([&](const Connection& c) {
        for (Connection* d : dead) {
          if (d == &c) return true;
        }
        return false;
      });
    }
    if (accepting && (fds[1].revents & POLLIN) != 0) {
      Fd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!fd.valid()) {
        const int err = errno;
        uint64_t suppressed = 0;
        if (IsResourceExhaustion(err)) {
          // Pending connections wait in the backlog; retrying at once would spin a core.
          backoff_until = absl::Now() + kAcceptBackoff;
          if (exhausted_log.Allow(&suppressed)) {
            spdlog::error(
                "shm server: cannot accept: {} ({} more since the last message); pausing "
                "accepts for {} at a time; raise the descriptor limit (ulimit -n)",
                ErrnoText(err), suppressed, absl::FormatDuration(kAcceptBackoff));
          }
        } else if (err != EAGAIN && err != EINTR && err != ECONNABORTED &&
                   exhausted_log.Allow(&suppressed)) {
          spdlog::warn("shm server: accept failed: {}", ErrnoText(err));
        }
        continue;
      }
      absl::MutexLock lock(&mu_);
      int pending = 0;
      for (const Connection& c : connections_) pending += c.authenticated ? 0 : 1;
      if (static_cast<int>(connections_.size()) >= limits_.max_connections ||
          pending >= limits_.max_pending) {
        uint64_t suppressed = 0;
        if (refused_log.Allow(&suppressed)) {
          spdlog::warn(
              "shm server: refused a connection: at its bound of {} connections or {} waiting "
              "for their handshake ({} more refused since the last message)",
              limits_.max_connections, limits_.max_pending, suppressed);
        }
        continue;  // fd closes here
      }
      connections_.push_back(Connection{std::move(fd), false, absl::Now()});
    }
  }
}

bool ShmServer::Handle(Connection& conn) {
  // Every request is one packet of a known size: Hello before authentication, OpenRequest
  // after. Anything else ends the connection.
  int err = 0;
  if (!conn.authenticated) {
    Hello hello{};
    if (RecvPacket(conn.fd.get(), &hello, sizeof(hello), absl::Now(), nullptr, &err) != Recv::kOk) {
      return false;
    }
    return HandleHello(conn, hello);
  }
  OpenRequest request{};
  if (RecvPacket(conn.fd.get(), &request, sizeof(request), absl::Now(), nullptr, &err) !=
      Recv::kOk) {
    return false;
  }
  switch (request.what) {
    case kOpenMemfd:
      return HandleOpen(conn, request);
    case kOpenExport:
      return HandleOpenExport(conn, request);
    case kClosedExport: {
      absl::MutexLock lock(&mu_);
      conn.open_exports.erase(request.region);
      return true;
    }
    default:
      return false;
  }
}

bool ShmServer::HandleHello(Connection& conn, const Hello& hello) {
  if (std::memcmp(hello.magic, kMagic, sizeof(kMagic)) != 0 || hello.version != kVersion) {
    const Reply r = MakeReply(kHelloReply, absl::StatusCode::kInvalidArgument, 0, 0,
                              absl::StrCat("unsupported shm protocol (version ", hello.version,
                                           "); this source speaks version ", kVersion));
    SendPacket(conn.fd.get(), &r, sizeof(r));
    return false;
  }
  if (CRYPTO_memcmp(hello.secret, secret_.data(), kSecretBytes) != 0) {
    const Reply r = MakeReply(
        kHelloReply, absl::StatusCode::kPermissionDenied, 0, 0,
        "wrong secret; use the blob this source exported (it changes when the source restarts)");
    SendPacket(conn.fd.get(), &r, sizeof(r));
    return false;
  }
  {
    absl::MutexLock lock(&mu_);  // RemoveRegion reads it
    conn.authenticated = true;
  }
  const Reply r = MakeReply(kHelloReply, absl::StatusCode::kOk, 0, 0, "");
  return SendPacket(conn.fd.get(), &r, sizeof(r));
}

bool ShmServer::HandleOpenExport(Connection& conn, const OpenRequest& request) {
  std::shared_ptr<const RegionExport> found;
  {
    absl::MutexLock lock(&mu_);
    auto it = exports_.find(request.region);
    if (it != exports_.end()) {
      found = it->second;
      // Counted as open from here: a RemoveRegion racing with this open waits for our close
      // (so the memory stays registered while its descriptors are made below).
      conn.open_exports.insert(request.region);
    }
  }
  if (found == nullptr) {
    const Reply r = MakeReply(kExportReply, absl::StatusCode::kNotFound, request.region, 0,
                              absl::StrCat("the source has no exported region ", request.region,
                                           " (removed, or not served by this transport)"));
    return SendPacket(conn.fd.get(), &r, sizeof(r));
  }
  std::vector<Fd> descriptors;
  if (found->descriptors) {
    auto made = found->descriptors();
    if (!made.ok()) {
      spdlog::warn("shm server: exporting region {} to a target failed: {}", request.region,
                   made.status().message());
      {
        absl::MutexLock lock(&mu_);
        conn.open_exports.erase(request.region);
      }
      // Unavailable whatever the cause: this source cannot serve the region now, and the target
      // should read it from another source or over another transport.
      const Reply r =
          MakeReply(kExportReply, absl::StatusCode::kUnavailable, request.region, 0,
                    absl::StrCat("the source could not export region ", request.region,
                                 " (its log has the whole reason): ", made.status().message()));
      return SendPacket(conn.fd.get(), &r, sizeof(r));
    }
    descriptors = *std::move(made);
  }
  Reply r = MakeReply(kExportReply, absl::StatusCode::kOk, request.region, found->size, "");
  r.records = found->record_count;
  std::vector<int> fds;
  for (const Fd& fd : descriptors) fds.push_back(fd.get());
  // The records and descriptors may need many packets. They are queued and sent as the target
  // takes them, between the other connections' turns; a target that has not taken them all
  // within the bound is cut off (its open fails).
  absl::MutexLock lock(&mu_);
  conn.out.AddPacket(&r, sizeof(r));
  conn.out.AddBytes(found->records);
  conn.out.AddFds(fds);
  conn.sending = std::move(descriptors);  // open until sent
  conn.out_deadline = absl::Now() + limits_.handshake_timeout;
  return FlushOut(conn);
}

bool ShmServer::FlushOut(Connection& conn) {
  if (!conn.out.Flush(conn.fd.get()).ok()) return false;  // the target is gone
  if (conn.out.empty()) conn.sending.clear();
  return true;
}

bool ShmServer::HandleOpen(Connection& conn, const OpenRequest& request) {
  Fd readonly;
  uint64_t size = 0;
  std::string error;
  absl::StatusCode code = absl::StatusCode::kOk;
  {
    // Under the lock: RemoveRegion (and then the memfd's close) cannot run while we reopen it,
    // so the descriptor number cannot have been reused.
    absl::MutexLock lock(&mu_);
    auto it = regions_.find(request.region);
    if (it == regions_.end()) {
      code = absl::StatusCode::kNotFound;
      error = absl::StrCat("the source has no region ", request.region,
                           " (removed, or never allocated by its shm transport)");
    } else {
      // A new open file description, read-only: the target cannot map it writable.
      const std::string path = absl::StrCat("/proc/self/fd/", it->second.memfd);
      readonly = Fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
      size = it->second.size;
      if (!readonly.valid()) {
        code = absl::StatusCode::kInternal;
        error = absl::StrCat("the source could not reopen region ", request.region, " (", path,
                             ") read-only: ", ErrnoText(errno));
        spdlog::error("shm server: {}", error);
      }
    }
  }
  const Reply r = MakeReply(kOpenReply, code, request.region, size, error);
  return SendPacket(conn.fd.get(), &r, sizeof(r), readonly.valid() ? readonly.get() : -1);
}

}  // namespace ferry::internal::shm
