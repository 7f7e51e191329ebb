#include "transfer/tcp/tcp_peer.h"

#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "transfer/tcp/tcp_wire.h"

namespace ferry::internal::tcp {

namespace {

// The first failure of an Execute, shared by its stream workers.
class FirstError {
 public:
  // Records `status` unless an earlier one is recorded; tells every worker to stop.
  void Set(Status status) {
    absl::MutexLock lock(&mu_);
    if (status_.ok()) status_ = std::move(status);
    stop_.store(true, std::memory_order_relaxed);
  }
  bool stopped() const { return stop_.load(std::memory_order_relaxed); }
  Status Get() {
    absl::MutexLock lock(&mu_);
    return status_;
  }

 private:
  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  Status status_ ABSL_GUARDED_BY(mu_);
};

// Requests sent per system call.
constexpr int kRequestBatch = 64;

// Takes pieces from `feed` and reads them over one connection, keeping up to `max_inflight`
// requests outstanding; replies come in request order. Returns true when it stopped with
// requests unanswered (the stream is then mid-protocol and unusable).
bool RunStream(int fd, ChunkFeed& feed, int max_inflight, FirstError& error) {
  auto interrupted = [&]() -> bool { return error.stopped() || feed.stopping(); };
  auto io_failed = [&](const IoResult& r, const char* doing, const Chunk& c) {
    if (r.what == Io::kStopped) return;  // the core knows why it stopped
    std::string cause = r.what == Io::kEof ? "the source closed the connection" : ErrnoText(r.err);
    error.Set(absl::UnavailableError(absl::StrCat("failed: connection lost while ", doing, " ",
                                                  RangeText(c), " (", cause,
                                                  "); the source may have stopped or removed "
                                                  "the region, reconnect and retry")));
  };
  auto landed = [&](uint64_t bytes) { feed.Moved(bytes); };

  std::deque<Chunk> inflight;
  ReadRequest batch[kRequestBatch];
  bool exhausted = false;
  for (;;) {
    if (interrupted()) return !inflight.empty();
    int n = 0;
    Chunk c;
    while (!exhausted && inflight.size() < static_cast<size_t>(max_inflight) && n < kRequestBatch) {
      if (!feed.Next(&c)) {
        exhausted = true;
        break;
      }
      inflight.push_back(c);
      batch[n++] = ReadRequest{c.index, c.remote_region, 0, c.remote_offset, c.length};
    }
    if (n > 0) {
      iovec iov{batch, n * sizeof(ReadRequest)};
      IoResult r = SendAll(fd, &iov, 1, interrupted);
      if (r.what != Io::kOk) {
        io_failed(r, "requesting", inflight[inflight.size() - n]);
        return true;
      }
    }
    if (inflight.empty()) return false;
    c = inflight.front();
    ReadReply reply;
    IoResult r = RecvAll(fd, &reply, sizeof(reply), interrupted);
    if (r.what != Io::kOk) {
      io_failed(r, "waiting for", c);
      return true;
    }
    if (reply.request_id != c.index) {
      error.Set(absl::DataLossError(absl::StrCat(
          "failed: protocol error: the reply for ", RangeText(c), " carries request id ",
          reply.request_id, " instead of ", c.index, "; reconnect")));
      return true;
    }
    Status refused;
    switch (static_cast<ReplyStatus>(reply.status)) {
      case ReplyStatus::kOk:
        break;
      case ReplyStatus::kNoSuchRegion:
        refused = absl::NotFoundError(absl::StrCat(
            "failed: the source has no region ", c.remote_region, " (removed after the ",
            "blob was exported?) for ", RangeText(c), "; fetch a fresh blob"));
        break;
      case ReplyStatus::kNotServed:
        refused = absl::UnavailableError(
            absl::StrCat("failed: the source does not serve ", RangeText(c),
                         " yet (it is still pulling and has not verified it); read it elsewhere"));
        break;
      case ReplyStatus::kOutOfRange:
        refused = absl::InvalidArgumentError(
            absl::StrCat("failed: the source says ", RangeText(c), " is out of range"));
        break;
      default:
        refused = absl::InternalError(absl::StrCat("failed: the source rejected ", RangeText(c),
                                                   " with status ", reply.status));
    }
    if (!refused.ok()) {
      error.Set(std::move(refused));
      return true;
    }
    if (reply.length != c.length) {
      error.Set(
          absl::DataLossError(absl::StrCat("failed: protocol error: the reply for ", RangeText(c),
                                           " has ", reply.length, " bytes; reconnect")));
      return true;
    }
    // Counted as it lands: on a slow link a piece takes longer than a stall timeout, and the
    // pull must not look stalled while bytes arrive.
    r = RecvAll(fd, c.local, c.length, interrupted, landed);
    if (r.what != Io::kOk) {
      io_failed(r, "receiving", c);
      return true;
    }
    inflight.pop_front();
    feed.Done(c);
    // The feed may have refused a piece only because this connection held its share of a
    // multi-peer read: ask again now that one is done.
    exhausted = false;
  }
}

}  // namespace

StatusOr<std::unique_ptr<TcpPeerConnection>> TcpPeerConnection::Create(
    const HostPort& address, const std::string& secret, const TcpPeerOptions& options,
    std::string description) {
  const std::string where = FormatHostPort(address.host, address.port);
  if (secret.size() != kSecretBytes) {
    return absl::InvalidArgumentError(absl::StrCat("blob of ", description, " has a ",
                                                   secret.size(), "-byte TCP secret; expected ",
                                                   kSecretBytes));
  }
  std::vector<Fd> streams;
  for (int i = 0; i < options.streams; ++i) {
    auto fd = Dial(address, options.connect_timeout, options.socket_buffer);
    if (!fd.ok()) {
      return absl::UnavailableError(
          absl::StrCat("TCP connection to ", description, " failed: ", fd.status().message(),
                       "; check that the source engine is running and ", where, " is reachable"));
    }
    Hello hello{kMagic, kProtocolVersion, {}};
    std::memcpy(hello.secret, secret.data(), kSecretBytes);
    const absl::Time deadline = absl::Now() + options.connect_timeout;
    auto late = [&] { return absl::Now() > deadline; };
    iovec iov{&hello, sizeof(hello)};
    HelloReply reply{};
    IoResult r = SendAll(fd->get(), &iov, 1, late);
    if (r.what == Io::kOk) r = RecvAll(fd->get(), &reply, sizeof(reply), late);
    if (r.what != Io::kOk) {
      return absl::UnavailableError(
          absl::StrCat("TCP handshake with ", description, " failed: ",
                       r.what == Io::kEof       ? "the source closed the connection"
                       : r.what == Io::kStopped ? "no answer in time"
                                                : ErrnoText(r.err),
                       "; check that ", where, " is a ferry transfer engine"));
    }
    if (reply.magic != kMagic) {
      return absl::UnavailableError(absl::StrCat("TCP handshake with ", description, " failed: ",
                                                 where, " is not a ferry transfer engine"));
    }
    switch (static_cast<HelloStatus>(reply.status)) {
      case HelloStatus::kOk:
        break;
      case HelloStatus::kBadSecret:
        return absl::PermissionDeniedError(
            absl::StrCat(description,
                         " refused the connection: wrong secret; the blob is stale "
                         "or not this engine's, fetch a fresh one"));
      default:
        return absl::FailedPreconditionError(absl::StrCat(
            description, " refused the connection: protocol version ", kProtocolVersion,
            " not supported (status ", reply.status, "); upgrade ferry on one side"));
    }
    streams.push_back(std::move(*fd));
  }
  return std::unique_ptr<TcpPeerConnection>(
      new TcpPeerConnection(std::move(streams), options, std::move(description)));
}

void TcpPeerConnection::Close() {
  if (closed_.exchange(true)) return;
  // shutdown(), not close(): a Read in progress still uses the descriptors; they are closed by
  // the destructor.
  for (const Fd& fd : streams_) ::shutdown(fd.get(), SHUT_RDWR);
}

Status TcpPeerConnection::Execute(ChunkFeed& feed) {
  if (closed_.load()) {
    return absl::FailedPreconditionError(
        absl::StrCat("connection to ", description_, " is closed; Connect again"));
  }
  if (broken_.load()) {
    return absl::FailedPreconditionError(
        absl::StrCat("connection to ", description_, " broken by an earlier failure; reconnect"));
  }
  // Every stream takes pieces as it has room for them, so faster streams take more.
  FirstError error;
  std::atomic<bool> unanswered{false};
  std::vector<std::thread> threads;
  threads.reserve(streams_.size() - 1);
  for (size_t s = 1; s < streams_.size(); ++s) {
    threads.emplace_back([&, s] {
      if (RunStream(streams_[s].get(), feed, options_.max_inflight, error)) unanswered = true;
    });
  }
  if (RunStream(streams_[0].get(), feed, options_.max_inflight, error)) unanswered = true;
  for (std::thread& t : threads) t.join();
  // A stream stopped mid-reply or with requests unanswered cannot be used again.
  if (unanswered.load()) broken_.store(true);
  Status status = error.Get();
  if (status.ok()) return status;
  return Status(status.code(), absl::StrCat("TCP read from ", description_, " ", status.message()));
}

}  // namespace ferry::internal::tcp
