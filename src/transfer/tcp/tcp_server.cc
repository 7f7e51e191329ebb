#include "transfer/tcp/tcp_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/accept_guard.h"
#include "common/logging.h"
#include "cuda/device.h"
#include "transfer/staging/staged_source.h"

namespace ferry::internal::tcp {

namespace {

// Device requests of one batch whose copies may be started ahead of their turn.
constexpr size_t kMaxAhead = 16;

// Requests parsed per receive: the target never has more than max_inflight (<= 1024)
// outstanding, so this only bounds how many are read with one system call.
constexpr size_t kRequestBatch = 64;

// The numeric address of the peer of `fd` ("" when unknown: counted as one peer).
std::string PeerAddress(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(addr).sin_addr, host, sizeof(host));
  } else if (addr.ss_family == AF_INET6) {
    ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(addr).sin6_addr, host,
                sizeof(host));
  }
  return host;
}

}  // namespace

StatusOr<std::unique_ptr<TcpServer>> TcpServer::Create(const HostPort& listen, int buffer_bytes,
                                                       std::string secret, TcpServerLimits limits) {
  if (secret.size() != kSecretBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("TCP secret is ", secret.size(), " bytes; expected ", kSecretBytes));
  }
  if (limits.max_connections < 1 || limits.max_per_peer < 1 || limits.max_pending < 1) {
    return absl::InvalidArgumentError("TcpServerLimits: every bound must be at least 1");
  }
  if (limits.staging_slots < 1 || limits.staging_slot_bytes < 1) {
    return absl::InvalidArgumentError(
        "TcpServerLimits: staging_slots and staging_slot_bytes must be at least 1");
  }
  uint16_t port = 0;
  FERRY_ASSIGN_OR_RETURN(Fd listener, Listen(listen, &port));
  if (buffer_bytes > 0) {
    // Accepted sockets inherit the buffer sizes, which must be set before the handshake to
    // take part in window scaling.
    ::setsockopt(listener.get(), SOL_SOCKET, SO_SNDBUF, &buffer_bytes, sizeof(buffer_bytes));
    ::setsockopt(listener.get(), SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof(buffer_bytes));
  }
  std::unique_ptr<TcpServer> server(
      new TcpServer(std::move(listener), port, buffer_bytes, std::move(secret), limits));
  try {
    server->accept_thread_ = std::thread([s = server.get()] { s->AcceptLoop(); });
  } catch (const std::system_error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("TCP transport: cannot start the accept thread of port ", port, ": ", e.what(),
                     "; raise the process's thread (pids) limit"));
  }
  return server;
}

TcpServer::TcpServer(Fd listener, uint16_t port, int buffer_bytes, std::string secret,
                     TcpServerLimits limits)
    : listener_(std::move(listener)),
      port_(port),
      buffer_bytes_(buffer_bytes),
      secret_(std::move(secret)),
      limits_(limits),
      pacer_(limits.upload_bytes_per_second > 0
                 ? std::make_unique<UploadPacer>(limits.upload_bytes_per_second)
                 : nullptr) {}

TcpServer::~TcpServer() { Stop(); }

Status TcpServer::AddRegion(uint32_t id, const void* data, uint64_t size, cuda::Device* device) {
  auto entry = std::make_shared<RegionEntry>();
  entry->data = static_cast<const char*>(data);
  entry->size = size;
  entry->device = device;
  absl::MutexLock lock(&mu_);
  if (!regions_.emplace(id, std::move(entry)).second) {
    return absl::InvalidArgumentError(
        absl::StrCat("TCP transport: region ", id, " is already registered"));
  }
  return absl::OkStatus();
}

void TcpServer::RemoveRegion(uint32_t id) {
  absl::MutexLock lock(&mu_);
  auto it = regions_.find(id);
  if (it == regions_.end()) return;
  std::shared_ptr<RegionEntry> entry = std::move(it->second);
  regions_.erase(it);
  entry->removed.store(true);
  RegionEntry* e = entry.get();
  mu_.Await(absl::Condition(
      +[](RegionEntry* r) { return r->users == 0; }, e));
}

Status TcpServer::LimitRegion(uint32_t id, std::function<bool(uint64_t, uint64_t)> allowed) {
  absl::MutexLock lock(&mu_);
  auto it = regions_.find(id);
  if (it == regions_.end()) {
    return absl::NotFoundError(absl::StrCat("TCP server: no region ", id, " to limit"));
  }
  it->second->allowed =
      allowed ? std::make_shared<const std::function<bool(uint64_t, uint64_t)>>(std::move(allowed))
              : nullptr;
  return absl::OkStatus();
}

void TcpServer::BeginSend() {
  absl::MutexLock lock(&load_mu_);
  if (sending_++ == 0) busy_since_ = absl::Now();
}

void TcpServer::EndSend(uint64_t bytes) {
  absl::MutexLock lock(&load_mu_);
  sent_ += bytes;
  if (--sending_ == 0) busy_ += absl::Now() - busy_since_;
}

double TcpServer::TakeLoad() {
  absl::MutexLock lock(&load_mu_);
  const absl::Time now = absl::Now();
  absl::Duration busy = busy_;
  if (sending_ > 0) {
    busy += now - busy_since_;
    busy_since_ = now;
  }
  const double span = absl::ToDoubleSeconds(now - last_take_);
  double load = span > 0 ? absl::ToDoubleSeconds(busy) / span : 0.0;
  if (limits_.upload_bytes_per_second > 0 && span > 0) {
    load = std::max(load, static_cast<double>(sent_) /
                              (static_cast<double>(limits_.upload_bytes_per_second) * span));
  }
  busy_ = absl::ZeroDuration();
  sent_ = 0;
  last_take_ = now;
  return std::clamp(load, 0.0, 1.0);
}

void TcpServer::Stop() {
  absl::MutexLock stop_lock(&stop_mu_);
  stopping_.store(true);
  // Wakes the accept thread's poll() at once (Linux reports the shut-down listener readable).
  if (listener_.valid()) ::shutdown(listener_.get(), SHUT_RDWR);
  if (accept_thread_.joinable()) accept_thread_.join();
  listener_.Reset();  // new connections are refused from here on
  std::list<std::unique_ptr<Connection>> connections;
  {
    absl::MutexLock lock(&mu_);
    connections.swap(connections_);
  }
  // shutdown() wakes a thread blocked in send/recv at once; the fd is closed only after the
  // thread is joined, so it cannot be reused under the thread.
  for (auto& conn : connections) ::shutdown(conn->fd.get(), SHUT_RDWR);
  for (auto& conn : connections) {
    if (conn->thread.joinable()) conn->thread.join();
  }
}

void TcpServer::ReapFinished() {
  std::list<std::unique_ptr<Connection>> finished;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      auto next = std::next(it);
      if ((*it)->finished.load()) finished.splice(finished.end(), connections_, it);
      it = next;
    }
  }
  for (auto& conn : finished) conn->thread.join();
}

int TcpServer::OpenFrom(const std::string& peer) {
  int n = 0;
  for (const auto& c : connections_) n += c->peer == peer ? 1 : 0;
  auto it = pending_per_peer_.find(peer);
  return n + (it == pending_per_peer_.end() ? 0 : it->second);
}

void TcpServer::AcceptLoop() {
  std::vector<Pending> pending;
  std::vector<pollfd> fds;
  LogLimiter exhausted_log;
  absl::Time backoff_until = absl::InfinitePast();
  auto forget = [this](const Pending& p) {
    absl::MutexLock lock(&mu_);
    --pending_;
    if (--pending_per_peer_[p.peer] == 0) pending_per_peer_.erase(p.peer);
  };
  while (!stopping_.load()) {
    const absl::Time now = absl::Now();
    const bool accepting = now >= backoff_until;
    fds.clear();
    fds.push_back(pollfd{listener_.get(), static_cast<short>(accepting ? POLLIN : 0), 0});
    for (const Pending& p : pending) fds.push_back(pollfd{p.fd.get(), POLLIN, 0});
    absl::Duration wait = kIoPollInterval;
    if (!accepting) wait = std::min(wait, backoff_until - now);
    const int rc = ::poll(fds.data(), fds.size(),
                          static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(wait))));
    ReapFinished();
    if (stopping_.load()) break;  // Stop() shut the listener down
    if (rc < 0 && errno != EINTR) {
      spdlog::error("TCP transport: poll on port {} failed: {}", port_, ErrnoText(errno));
      backoff_until = absl::Now() + kAcceptBackoff;
      continue;
    }
    // Handshakes first: finished, refused and expired ones leave the list.
    const absl::Time after = absl::Now();
    std::vector<Pending> still;
    for (size_t i = 0; i < pending.size(); ++i) {
      Pending& p = pending[i];
      const short ev = rc > 0 ? fds[i + 1].revents : 0;
      bool done = false;
      if ((ev & (POLLIN | POLLHUP | POLLERR)) != 0) {
        done = AdvanceHandshake(p);
      } else if (after > p.deadline) {
        done = true;  // never presented its Hello: closed below
      }
      if (!done) {
        still.push_back(std::move(p));
        continue;
      }
      forget(p);
      if (p.have == sizeof(Hello) && p.fd.valid()) StartServing(std::move(p));
    }
    pending.swap(still);
    if (accepting && rc > 0 && (fds[0].revents & POLLIN) != 0) {
      if (!AcceptOne(&pending)) {
        backoff_until = absl::Now() + kAcceptBackoff;
        uint64_t suppressed = 0;
        if (exhausted_log.Allow(&suppressed)) {
          spdlog::error(
              "TCP transport: port {} cannot accept: {} ({} more since the last message); "
              "pausing accepts for {} at a time; raise the descriptor limit (ulimit -n) or find "
              "who holds the connections",
              port_, ErrnoText(errno), suppressed, absl::FormatDuration(kAcceptBackoff));
        }
      }
    }
  }
}

bool TcpServer::AcceptOne(std::vector<Pending>* pending) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  Fd fd(::accept4(listener_.get(), reinterpret_cast<sockaddr*>(&addr), &len,
                  SOCK_CLOEXEC | SOCK_NONBLOCK));
  if (!fd.valid()) return !IsResourceExhaustion(errno);
  std::string peer = PeerAddress(addr);
  {
    absl::MutexLock lock(&mu_);
    const int open = static_cast<int>(connections_.size()) + pending_;
    const char* bound = nullptr;
    if (open >= limits_.max_connections) {
      bound = "connections";
    } else if (pending_ >= limits_.max_pending) {
      bound = "connections waiting for their handshake";
    } else if (OpenFrom(peer) >= limits_.max_per_peer) {
      bound = "connections from one peer";
    }
    if (bound != nullptr) {
      uint64_t suppressed = 0;
      if (refused_log_.Allow(&suppressed)) {
        spdlog::warn(
            "TCP transport: port {} refused a connection from {}: at its bound of {} ({} more "
            "refused since the last message)",
            port_, peer.empty() ? "an unknown address" : peer, bound, suppressed);
      }
      return true;  // closed by fd's destructor
    }
    ++pending_;
    ++pending_per_peer_[peer];
  }
  Pending p;
  p.fd = std::move(fd);
  p.peer = std::move(peer);
  p.deadline = absl::Now() + limits_.handshake_timeout;
  pending->push_back(std::move(p));
  return true;
}

bool TcpServer::AdvanceHandshake(Pending& p) {
  const ssize_t n =
      ::recv(p.fd.get(), reinterpret_cast<char*>(&p.hello) + p.have, sizeof(Hello) - p.have, 0);
  if (n == 0) {
    p.fd.Reset();
    return true;
  }
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return false;
    p.fd.Reset();
    return true;
  }
  p.have += static_cast<size_t>(n);
  if (p.have < sizeof(Hello)) return false;
  HelloStatus status = HelloStatus::kOk;
  if (p.hello.magic != kMagic) {
    status = HelloStatus::kBadMagic;
  } else if (p.hello.version != kProtocolVersion) {
    status = HelloStatus::kBadVersion;
  } else if (CRYPTO_memcmp(p.hello.secret, secret_.data(), kSecretBytes) != 0) {
    status = HelloStatus::kBadSecret;
  }
  // Eight bytes into an empty send buffer: never blocks.
  HelloReply reply{kMagic, static_cast<uint32_t>(status)};
  const bool sent = ::send(p.fd.get(), &reply, sizeof(reply), MSG_NOSIGNAL) ==
                    static_cast<ssize_t>(sizeof(reply));
  if (status != HelloStatus::kOk || !sent) {
    if (status != HelloStatus::kOk) {
      uint64_t suppressed = 0;
      if (refused_log_.Allow(&suppressed)) {
        spdlog::warn(
            "TCP transport: refused a connection on port {} from {}: {}", port_, p.peer,
            status == HelloStatus::kBadSecret ? "wrong secret" : "bad protocol version/magic");
      }
    }
    p.fd.Reset();
  }
  return true;
}

void TcpServer::StartServing(Pending&& p) {
  // The serving thread blocks with the I/O timeouts every transport socket carries.
  const int flags = ::fcntl(p.fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(p.fd.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) return;
  if (Status s = ConfigureSocket(p.fd.get(), buffer_bytes_); !s.ok()) {
    spdlog::warn("TCP transport: dropping a connection on port {}: {}", port_, s.message());
    return;
  }
  auto conn = std::make_unique<Connection>();
  conn->fd = std::move(p.fd);
  conn->peer = std::move(p.peer);
  Connection* raw = conn.get();
  absl::MutexLock lock(&mu_);
  if (stopping_.load()) return;
  try {
    raw->thread = std::thread([this, raw] {
      Serve(raw);
      // The peer sees the end at once; the fd is closed when the thread is reaped.
      ::shutdown(raw->fd.get(), SHUT_RDWR);
      raw->finished.store(true);
    });
  } catch (const std::system_error& e) {
    // Out of threads (a pids limit): this connection is closed, the source keeps serving the
    // ones it has, and the target sees its stream end and retries or fails over.
    uint64_t suppressed = 0;
    if (refused_log_.Allow(&suppressed)) {
      spdlog::error(
          "TCP transport: port {} cannot start a thread for a connection from {}: {} ({} more "
          "since the last message); raise the process's thread (pids) limit",
          port_, raw->peer, e.what(), suppressed);
    }
    return;
  }
  connections_.push_back(std::move(conn));
}

template <typename StopFn>
IoResult TcpServer::SendReply(int fd, const ReadReply& reply, const char* data, StopFn&& stop) {
  if (pacer_ == nullptr) {
    // Straight from the registered memory: no staging copy.
    iovec iov[2] = {{const_cast<ReadReply*>(&reply), sizeof(reply)},
                    {const_cast<char*>(data), reply.length}};
    return SendAll(fd, iov, 2, stop);
  }
  // Capped: the header, then the payload in slices, each sent when the pacer allows.
  iovec header{const_cast<ReadReply*>(&reply), sizeof(reply)};
  IoResult r = SendAll(fd, &header, 1, stop);
  if (r.what != Io::kOk) return r;
  return SendPayload(fd, data, reply.length, stop);
}

template <typename StopFn>
IoResult TcpServer::SendPayload(int fd, const char* data, uint64_t n, StopFn&& stop) {
  if (pacer_ == nullptr) {
    iovec iov{const_cast<char*>(data), n};
    return SendAll(fd, &iov, 1, stop);
  }
  IoResult r{Io::kOk, 0};
  for (uint64_t sent = 0; r.what == Io::kOk && sent < n;) {
    const uint64_t slice = std::min<uint64_t>(UploadPacer::kSliceBytes, n - sent);
    const absl::Time at = pacer_->Reserve(slice);
    while (absl::Now() < at) {
      if (stop()) return {Io::kStopped, 0};
      absl::SleepFor(std::min(at - absl::Now(), absl::Milliseconds(50)));  // paced, not polling
    }
    iovec iov{const_cast<char*>(data + sent), slice};
    r = SendAll(fd, &iov, 1, stop);
    sent += slice;
  }
  return r;
}

std::shared_ptr<TcpServer::RegionEntry> TcpServer::Admit(const ReadRequest& req, ReadReply* reply) {
  if (req.length == 0 || req.length > kMaxRequestBytes) {
    reply->status = static_cast<uint32_t>(ReplyStatus::kTooLong);
    return nullptr;
  }
  absl::MutexLock lock(&mu_);
  auto it = regions_.find(req.region);
  if (it == regions_.end()) {
    reply->status = static_cast<uint32_t>(ReplyStatus::kNoSuchRegion);
  } else if (req.offset > it->second->size || req.length > it->second->size - req.offset) {
    reply->status = static_cast<uint32_t>(ReplyStatus::kOutOfRange);
  } else if (it->second->allowed != nullptr && !(*it->second->allowed)(req.offset, req.length)) {
    reply->status = static_cast<uint32_t>(ReplyStatus::kNotServed);
  } else {
    ++it->second->users;
    return it->second;
  }
  return nullptr;
}

void TcpServer::Unuse(RegionEntry* entry) {
  absl::MutexLock lock(&mu_);
  --entry->users;
}

// A region's use, given back on destruction.
struct TcpServer::Admitted {
  Admitted(TcpServer* s, size_t i, std::shared_ptr<RegionEntry> e, const ReadRequest& r)
      : server(s), index(i), entry(std::move(e)), req(r) {}
  ~Admitted() {
    if (entry != nullptr) server->Unuse(entry.get());
  }
  Admitted(Admitted&& o) noexcept
      : server(o.server), index(o.index), entry(std::move(o.entry)), req(o.req) {}
  Admitted& operator=(Admitted&&) = delete;

  TcpServer* server;
  size_t index;
  std::shared_ptr<RegionEntry> entry;
  ReadRequest req;
};

bool TcpServer::ServeStaged(int fd, const ReadRequest* requests, size_t i, size_t count,
                            std::shared_ptr<RegionEntry> entry, std::deque<Admitted>* ahead,
                            std::vector<std::unique_ptr<staging::StagedSource>>* staged) {
  const bool prefetched = entry == nullptr;
  std::optional<Admitted> current;
  if (prefetched) {
    current.emplace(std::move(ahead->front()));
    ahead->pop_front();
  } else {
    current.emplace(this, i, std::move(entry), requests[i]);
  }
  const ReadRequest& req = current->req;
  cuda::Device* device = current->entry->device;
  staging::StagedSource* source = nullptr;
  for (auto& s : *staged) {
    if (s->device() == device) source = s.get();
  }
  if (source == nullptr) {
    staging::StagedSourceOptions options;
    options.slots = limits_.staging_slots;
    options.slot_bytes = limits_.staging_slot_bytes;
    auto created = staging::StagedSource::Create(device, options);
    if (!created.ok()) {
      spdlog::error(
          "TCP transport: port {} cannot stage region {} of {}: {}; closing the "
          "connection",
          port_, req.region, device->name(), created.status().message());
      return false;
    }
    source = created->get();
    staged->push_back(std::move(*created));
  }
  auto address = [](const RegionEntry& e, const ReadRequest& r) {
    return reinterpret_cast<uint64_t>(e.data) + r.offset;
  };
  Status s =
      prefetched ? absl::OkStatus() : source->Enqueue(address(*current->entry, req), req.length);
  // Starts the copies of the device requests that follow in this batch, so that they are in
  // host memory by the time their turn comes.
  for (size_t j = ahead->empty() ? i + 1 : ahead->back().index + 1;
       s.ok() && j < count && ahead->size() < kMaxAhead; ++j) {
    ReadReply refused{};
    std::shared_ptr<RegionEntry> next = Admit(requests[j], &refused);
    if (next == nullptr) break;
    if (next->device != device) {
      Unuse(next.get());
      break;
    }
    ahead->emplace_back(this, j, std::move(next), requests[j]);
    s = source->Enqueue(address(*ahead->back().entry, requests[j]), requests[j].length);
  }
  if (!s.ok()) {
    spdlog::error("TCP transport: port {}: {}; closing the connection", port_, s.message());
    return false;
  }
  auto stop = [&] {
    if (stopping_.load() || current->entry->removed.load()) return true;
    for (const Admitted& a : *ahead) {
      if (a.entry->removed.load()) return true;
    }
    return false;
  };
  ReadReply reply{req.request_id, static_cast<uint32_t>(ReplyStatus::kOk), 0, req.length};
  BeginSend();
  iovec header{&reply, sizeof(reply)};
  IoResult r = SendAll(fd, &header, 1, stop);
  uint64_t sent = 0;
  while (r.what == Io::kOk && sent < req.length) {
    StatusOr<absl::Span<const char>> portion = source->Next(stop);
    if (!portion.ok()) {
      if (!absl::IsCancelled(portion.status())) {
        spdlog::error("TCP transport: port {}: {}; closing the connection", port_,
                      portion.status().message());
      }
      r = {Io::kStopped, 0};
      break;
    }
    r = SendPayload(fd, portion->data(), portion->size(), stop);
    source->Release();
    sent += portion->size();
  }
  EndSend(r.what == Io::kOk ? req.length : 0);
  return r.what == Io::kOk;
}

void TcpServer::Serve(Connection* conn) {
  const int fd = conn->fd.get();
  auto stopped = [this] { return stopping_.load(); };
  std::vector<ReadRequest> requests(kRequestBatch);
  size_t have_bytes = 0;  // bytes of requests[] filled
  // Regions of device memory: requests admitted ahead of their turn (their copies started),
  // and a StagedSource per device read. Declared in this order so that the sources, which wait
  // for their copies, are destroyed before the ahead requests give their regions back.
  std::deque<Admitted> ahead;
  std::vector<std::unique_ptr<staging::StagedSource>> staged;
  while (!stopping_.load()) {
    ssize_t n = ::recv(fd, reinterpret_cast<char*>(requests.data()) + have_bytes,
                       kRequestBatch * sizeof(ReadRequest) - have_bytes, 0);
    if (n == 0) return;  // the target closed the connection
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      return;
    }
    have_bytes += static_cast<size_t>(n);
    const size_t count = have_bytes / sizeof(ReadRequest);
    for (size_t i = 0; i < count; ++i) {
      const ReadRequest& req = requests[i];
      ReadReply reply{req.request_id, static_cast<uint32_t>(ReplyStatus::kOk), 0, 0};
      if (!ahead.empty() && ahead.front().index == i) {
        // Admitted, and its copies started, while an earlier request was served.
        if (!ServeStaged(fd, requests.data(), i, count, nullptr, &ahead, &staged)) return;
        continue;
      }
      std::shared_ptr<RegionEntry> entry = Admit(req, &reply);
      if (entry == nullptr) {
        iovec iov{&reply, sizeof(reply)};
        if (SendAll(fd, &iov, 1, stopped).what != Io::kOk) return;
        continue;
      }
      if (entry->device != nullptr) {
        if (!ServeStaged(fd, requests.data(), i, count, std::move(entry), &ahead, &staged)) {
          return;
        }
        continue;
      }
      reply.length = req.length;
      BeginSend();
      IoResult r = SendReply(fd, reply, entry->data + req.offset,
                             [&] { return stopping_.load() || entry->removed.load(); });
      EndSend(r.what == Io::kOk ? req.length : 0);
      Unuse(entry.get());
      // A reply cut short (region removed, Stop, peer gone) leaves the stream unusable; closing
      // it makes the target's read fail.
      if (r.what != Io::kOk) return;
    }
    const size_t used = count * sizeof(ReadRequest);
    if (used > 0 && have_bytes > used) {
      std::memmove(requests.data(), reinterpret_cast<char*>(requests.data()) + used,
                   have_bytes - used);
    }
    have_bytes -= used;
  }
}

}  // namespace ferry::internal::tcp
