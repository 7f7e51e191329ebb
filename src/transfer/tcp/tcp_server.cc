#include "transfer/tcp/tcp_server.h"

#include <netinet/in.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "transfer/tcp/tcp_wire.h"

namespace ferry::internal::tcp {

namespace {

// How long an accepted connection may take to present its Hello.
constexpr absl::Duration kHandshakeTimeout = absl::Seconds(10);
// Requests parsed per receive: the target never has more than max_inflight (<= 1024)
// outstanding, so this only bounds how many are read with one system call.
constexpr size_t kRequestBatch = 64;

}  // namespace

StatusOr<std::unique_ptr<TcpServer>> TcpServer::Create(const HostPort& listen, int buffer_bytes,
                                                       std::string secret) {
  if (secret.size() != kSecretBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("TCP secret is ", secret.size(), " bytes; expected ", kSecretBytes));
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
      new TcpServer(std::move(listener), port, buffer_bytes, std::move(secret)));
  server->accept_thread_ = std::thread([s = server.get()] { s->AcceptLoop(); });
  return server;
}

TcpServer::TcpServer(Fd listener, uint16_t port, int buffer_bytes, std::string secret)
    : listener_(std::move(listener)),
      port_(port),
      buffer_bytes_(buffer_bytes),
      secret_(std::move(secret)) {}

TcpServer::~TcpServer() { Stop(); }

Status TcpServer::AddRegion(uint32_t id, const void* data, uint64_t size) {
  auto entry = std::make_shared<RegionEntry>();
  entry->data = static_cast<const char*>(data);
  entry->size = size;
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

void TcpServer::AcceptLoop() {
  while (!stopping_.load()) {
    pollfd pfd{listener_.get(), POLLIN, 0};
    int rc = ::poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(kIoPollInterval)));
    ReapFinished();
    if (rc <= 0) continue;
    if (stopping_.load()) break;  // Stop() shut the listener down
    Fd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!fd.valid()) {
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
        spdlog::warn("TCP transport: accept on port {} failed: {}", port_, ErrnoText(errno));
      }
      continue;
    }
    if (Status s = ConfigureSocket(fd.get(), buffer_bytes_); !s.ok()) {
      spdlog::warn("TCP transport: dropping a connection on port {}: {}", port_, s.message());
      continue;
    }
    auto conn = std::make_unique<Connection>();
    conn->fd = std::move(fd);
    Connection* raw = conn.get();
    absl::MutexLock lock(&mu_);
    if (stopping_.load()) break;
    connections_.push_back(std::move(conn));
    raw->thread = std::thread([this, raw] {
      Serve(raw);
      // The peer sees the end at once; the fd is closed when the thread is reaped.
      ::shutdown(raw->fd.get(), SHUT_RDWR);
      raw->finished.store(true);
    });
  }
}

bool TcpServer::Handshake(int fd) {
  const absl::Time deadline = absl::Now() + kHandshakeTimeout;
  Hello hello{};
  IoResult r = RecvAll(fd, &hello, sizeof(hello),
                       [&] { return stopping_.load() || absl::Now() > deadline; });
  if (r.what != Io::kOk) return false;
  HelloStatus status = HelloStatus::kOk;
  if (hello.magic != kMagic) {
    status = HelloStatus::kBadMagic;
  } else if (hello.version != kProtocolVersion) {
    status = HelloStatus::kBadVersion;
  } else if (CRYPTO_memcmp(hello.secret, secret_.data(), kSecretBytes) != 0) {
    status = HelloStatus::kBadSecret;
  }
  HelloReply reply{kMagic, static_cast<uint32_t>(status)};
  iovec iov{&reply, sizeof(reply)};
  SendAll(fd, &iov, 1, [&] { return stopping_.load() || absl::Now() > deadline; });
  if (status != HelloStatus::kOk) {
    spdlog::warn("TCP transport: refused a connection on port {}: {}", port_,
                 status == HelloStatus::kBadSecret ? "wrong secret" : "bad protocol version/magic");
    return false;
  }
  return true;
}

void TcpServer::Serve(Connection* conn) {
  const int fd = conn->fd.get();
  if (!Handshake(fd)) return;
  auto stopped = [this] { return stopping_.load(); };
  std::vector<ReadRequest> requests(kRequestBatch);
  size_t have_bytes = 0;  // bytes of requests[] filled
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
      std::shared_ptr<RegionEntry> entry;
      if (req.length == 0 || req.length > kMaxRequestBytes) {
        reply.status = static_cast<uint32_t>(ReplyStatus::kTooLong);
      } else {
        absl::MutexLock lock(&mu_);
        auto it = regions_.find(req.region);
        if (it == regions_.end()) {
          reply.status = static_cast<uint32_t>(ReplyStatus::kNoSuchRegion);
        } else if (req.offset > it->second->size || req.length > it->second->size - req.offset) {
          reply.status = static_cast<uint32_t>(ReplyStatus::kOutOfRange);
        } else {
          entry = it->second;
          ++entry->users;
        }
      }
      if (entry == nullptr) {
        iovec iov{&reply, sizeof(reply)};
        if (SendAll(fd, &iov, 1, stopped).what != Io::kOk) return;
        continue;
      }
      reply.length = req.length;
      // Straight from the registered memory: no staging copy.
      iovec iov[2] = {{&reply, sizeof(reply)},
                      {const_cast<char*>(entry->data + req.offset), req.length}};
      IoResult r = SendAll(fd, iov, 2, [&] { return stopping_.load() || entry->removed.load(); });
      {
        absl::MutexLock lock(&mu_);
        --entry->users;
      }
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
