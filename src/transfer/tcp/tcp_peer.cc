#include "transfer/tcp/tcp_peer.h"

#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "transfer/tcp/tcp_wire.h"

namespace ferry::internal::tcp {

namespace {

// One wire request: a piece of one op, at most chunk_bytes long.
struct Chunk {
  uint32_t region;
  uint64_t offset;
  char* dst;
  uint64_t length;
};

std::string RangeText(const Chunk& c) {
  return absl::StrCat("region ", c.region, " [", c.offset, ", ", c.offset + c.length, ")");
}

// The first failure of a Read, shared by its stream workers.
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

// Serves the chunks `mine` (in order) over one connection, keeping up to `max_inflight`
// requests outstanding. Marks each chunk in `done` as it lands.
void RunStream(int fd, const std::vector<Chunk>& chunks, const std::vector<uint32_t>& mine,
               int max_inflight, const ReadControl& ctl, std::vector<uint8_t>& done,
               FirstError& error) {
  // Cheap checks first; absl::Now() only when a deadline is set.
  const bool has_deadline = ctl.deadline != absl::InfiniteFuture();
  auto interrupted = [&]() -> bool {
    if (error.stopped()) return true;
    if (ctl.cancelled->load(std::memory_order_relaxed)) {
      error.Set(absl::CancelledError("cancelled"));
      return true;
    }
    if (has_deadline && absl::Now() >= ctl.deadline) {
      error.Set(absl::DeadlineExceededError("passed its deadline"));
      return true;
    }
    return false;
  };
  auto io_failed = [&](const IoResult& r, const char* doing, const Chunk& c) {
    if (r.what == Io::kStopped) return;  // the reason is already recorded
    std::string cause = r.what == Io::kEof ? "the source closed the connection" : ErrnoText(r.err);
    error.Set(absl::UnavailableError(absl::StrCat("failed: connection lost while ", doing, " ",
                                                  RangeText(c), " (", cause,
                                                  "); the source may have stopped or removed "
                                                  "the region, reconnect and retry")));
  };

  ReadRequest batch[kRequestBatch];
  size_t sent = 0;
  size_t received = 0;
  while (received < mine.size()) {
    if (interrupted()) return;
    int n = 0;
    while (sent < mine.size() && sent - received < static_cast<size_t>(max_inflight) &&
           n < kRequestBatch) {
      const uint32_t index = mine[sent++];
      const Chunk& c = chunks[index];
      batch[n++] = ReadRequest{index, c.region, 0, c.offset, c.length};
    }
    if (n > 0) {
      iovec iov{batch, n * sizeof(ReadRequest)};
      IoResult r = SendAll(fd, &iov, 1, interrupted);
      if (r.what != Io::kOk) return io_failed(r, "requesting", chunks[mine[sent - n]]);
    }
    const uint32_t index = mine[received];
    const Chunk& c = chunks[index];
    ReadReply reply;
    IoResult r = RecvAll(fd, &reply, sizeof(reply), interrupted);
    if (r.what != Io::kOk) return io_failed(r, "waiting for", c);
    if (reply.request_id != index) {
      return error.Set(absl::DataLossError(absl::StrCat(
          "failed: protocol error: the reply for ", RangeText(c), " carries request id ",
          reply.request_id, " instead of ", index, "; reconnect")));
    }
    switch (static_cast<ReplyStatus>(reply.status)) {
      case ReplyStatus::kOk:
        break;
      case ReplyStatus::kNoSuchRegion:
        return error.Set(absl::NotFoundError(
            absl::StrCat("failed: the source has no region ", c.region, " (removed after the ",
                         "blob was exported?) for ", RangeText(c), "; fetch a fresh blob")));
      case ReplyStatus::kOutOfRange:
        return error.Set(absl::InvalidArgumentError(
            absl::StrCat("failed: the source says ", RangeText(c), " is out of range")));
      default:
        return error.Set(absl::InternalError(absl::StrCat(
            "failed: the source rejected ", RangeText(c), " with status ", reply.status)));
    }
    if (reply.length != c.length) {
      return error.Set(
          absl::DataLossError(absl::StrCat("failed: protocol error: the reply for ", RangeText(c),
                                           " has ", reply.length, " bytes; reconnect")));
    }
    // Counted as it lands: on a slow link a chunk takes longer than a stall timeout, and the
    // pull must not look stalled while bytes arrive.
    r = RecvAll(fd, c.dst, c.length, interrupted, ctl.bytes_done);
    if (r.what != Io::kOk) return io_failed(r, "receiving", c);
    done[index] = 1;
    ++received;
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

Status TcpPeerConnection::Read(absl::Span<const ReadOp> ops, const ReadControl& ctl) {
  if (closed_.load()) {
    return absl::FailedPreconditionError(
        absl::StrCat("connection to ", description_, " is closed; Connect again"));
  }
  if (broken_.load()) {
    return absl::FailedPreconditionError(
        absl::StrCat("connection to ", description_, " broken by an earlier failure; reconnect"));
  }
  std::vector<Chunk> chunks;
  for (const ReadOp& op : ops) {
    for (uint64_t done = 0; done < op.length; done += options_.chunk_bytes) {
      const uint64_t len = std::min<uint64_t>(options_.chunk_bytes, op.length - done);
      chunks.push_back(Chunk{op.remote_region, op.remote_offset + done,
                             static_cast<char*>(op.local) + done, len});
    }
  }
  if (chunks.empty()) return absl::OkStatus();
  if (chunks.size() > UINT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch for ", description_, " has ", chunks.size(), " chunks; split it"));
  }

  // Each chunk goes to the stream with the fewest bytes so far: balanced for any mix of sizes,
  // and each stream's list stays in op order.
  const size_t stream_count = std::min(streams_.size(), chunks.size());
  std::vector<std::vector<uint32_t>> assigned(stream_count);
  std::vector<uint64_t> load(stream_count, 0);
  for (uint32_t i = 0; i < chunks.size(); ++i) {
    const size_t s = std::min_element(load.begin(), load.end()) - load.begin();
    assigned[s].push_back(i);
    load[s] += chunks[i].length;
  }

  std::vector<uint8_t> done(chunks.size(), 0);
  FirstError error;
  std::vector<std::thread> threads;
  threads.reserve(stream_count - 1);
  for (size_t s = 1; s < stream_count; ++s) {
    threads.emplace_back([&, s] {
      RunStream(streams_[s].get(), chunks, assigned[s], options_.max_inflight, ctl, done, error);
    });
  }
  RunStream(streams_[0].get(), chunks, assigned[0], options_.max_inflight, ctl, done, error);
  for (std::thread& t : threads) t.join();

  Status status = error.Get();
  if (status.ok()) return status;
  // The streams are now mid-reply or hold unanswered requests: unusable.
  broken_.store(true);
  const size_t first = std::find(done.begin(), done.end(), 0) - done.begin();
  const std::string range = first < chunks.size() ? RangeText(chunks[first]) : "none";
  return Status(status.code(), absl::StrCat("TCP read from ", description_, " ", status.message(),
                                            "; first unfinished range: ", range));
}

}  // namespace ferry::internal::tcp
