#include "transfer/shm/shm_peer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace ferry::internal::shm {

namespace {

// Bound on one control round trip (handshake, opening a region).
constexpr absl::Duration kControlTimeout = absl::Seconds(10);

struct Chunk {
  const char* src;
  char* dst;
  uint64_t length;
  uint32_t region;
  uint64_t offset;  // in the remote region
};

std::string RangeText(uint32_t region, uint64_t offset, uint64_t length) {
  return absl::StrCat("region ", region, " [", offset, ", ", offset + length, ")");
}

Status FromReply(const Reply& r) {
  return Status(static_cast<absl::StatusCode>(r.code),
                std::string(r.message, strnlen(r.message, sizeof(r.message))));
}

void AtomicMin(std::atomic<size_t>& value, size_t candidate) {
  size_t current = value.load();
  while (candidate < current && !value.compare_exchange_weak(current, candidate)) {
  }
}

}  // namespace

StatusOr<std::unique_ptr<ShmPeerConnection>> ShmPeerConnection::Create(
    const std::string& socket_name, const std::string& secret, ShmPeerOptions options,
    std::string description) {
  if (secret.size() != kSecretBytes) {
    return absl::InvalidArgumentError(absl::StrCat("blob of ", description, " has a ",
                                                   secret.size(), "-byte shm secret; expected ",
                                                   kSecretBytes));
  }
  auto control = ConnectAbstract(socket_name);
  if (!control.ok()) {
    return Status(control.status().code(), absl::StrCat("shm connection to ", description,
                                                        " failed: ", control.status().message()));
  }
  Hello hello{};
  std::memcpy(hello.magic, kMagic, sizeof(kMagic));
  hello.version = kVersion;
  std::memcpy(hello.secret, secret.data(), kSecretBytes);
  if (!SendPacket(control->get(), &hello, sizeof(hello))) {
    return absl::UnavailableError(absl::StrCat("shm handshake with ", description,
                                               " failed: sending the hello: ", ErrnoText(errno)));
  }
  Reply reply{};
  int err = 0;
  const Recv got = RecvPacket(control->get(), &reply, sizeof(reply), absl::Now() + kControlTimeout,
                              nullptr, &err);
  if (got != Recv::kOk || reply.type != kHelloReply) {
    return absl::UnavailableError(absl::StrCat("shm handshake with ", description, " failed: ",
                                               got == Recv::kTimeout ? "no reply within 10s"
                                               : got == Recv::kEof
                                                   ? "the source closed the connection"
                                                   : absl::StrCat("bad reply: ", ErrnoText(err))));
  }
  if (reply.code != 0) {
    Status s = FromReply(reply);
    return Status(s.code(),
                  absl::StrCat("shm handshake with ", description, " refused: ", s.message()));
  }
  return std::unique_ptr<ShmPeerConnection>(
      new ShmPeerConnection(std::move(*control), options, std::move(description)));
}

ShmPeerConnection::ShmPeerConnection(Fd control, ShmPeerOptions options, std::string description)
    : options_(options), description_(std::move(description)), control_(std::move(control)) {}

ShmPeerConnection::~ShmPeerConnection() { Close(); }

void ShmPeerConnection::Close() {
  closing_.store(true);  // a running copy stops at its next chunk
  absl::MutexLock lock(&mu_);
  Unmap();
  control_.Reset();
}

void ShmPeerConnection::Unmap() {
  for (auto& [id, m] : mappings_) ::munmap(const_cast<char*>(m.data), m.size);
  mappings_.clear();
}

Status ShmPeerConnection::DrainNotices() {
  for (;;) {
    Reply notice{};
    int err = 0;
    switch (
        RecvPacket(control_.get(), &notice, sizeof(notice), absl::InfinitePast(), nullptr, &err)) {
      case Recv::kTimeout:
        return absl::OkStatus();
      case Recv::kEof:
        broken_.store(true);
        return absl::UnavailableError(
            "failed: the source closed the control connection (it stopped or exited)");
      case Recv::kError:
        broken_.store(true);
        return absl::UnavailableError(
            absl::StrCat("failed: control connection error: ", ErrnoText(err)));
      case Recv::kOk:
        break;
    }
    if (notice.type != kRegionRemoved) {
      broken_.store(true);
      return absl::DataLossError(
          absl::StrCat("failed: protocol error: unexpected message type ", notice.type));
    }
    removed_.insert(notice.region);
    auto it = mappings_.find(notice.region);
    if (it != mappings_.end()) {
      ::munmap(const_cast<char*>(it->second.data), it->second.size);
      mappings_.erase(it);
    }
  }
}

StatusOr<ShmPeerConnection::Mapping> ShmPeerConnection::Map(uint32_t region, absl::Time deadline) {
  auto found = mappings_.find(region);
  if (found != mappings_.end()) return found->second;
  auto removed = [&] {
    return absl::NotFoundError(absl::StrCat("failed: the source has no region ", region,
                                            " (removed after the blob was exported)"));
  };
  if (removed_.count(region) != 0) return removed();
  const OpenRequest request{region, 0};
  if (!SendPacket(control_.get(), &request, sizeof(request))) {
    broken_.store(true);
    return absl::UnavailableError(
        absl::StrCat("failed: asking the source for region ", region, ": ", ErrnoText(errno)));
  }
  deadline = std::min(deadline, absl::Now() + kControlTimeout);
  for (;;) {
    Reply reply{};
    Fd fd;
    int err = 0;
    const Recv got = RecvPacket(control_.get(), &reply, sizeof(reply), deadline, &fd, &err);
    if (got != Recv::kOk) {
      broken_.store(true);
      return absl::UnavailableError(absl::StrCat(
          "failed: opening region ", region, ": ",
          got == Recv::kTimeout ? "no reply in time"
          : got == Recv::kEof   ? "the source closed the control connection (stopped or exited)"
                                : ErrnoText(err)));
    }
    if (reply.type == kRegionRemoved) {
      removed_.insert(reply.region);
      continue;
    }
    if (reply.type != kOpenReply || reply.region != region) {
      broken_.store(true);
      return absl::DataLossError(absl::StrCat("failed: protocol error: unexpected reply type ",
                                              reply.type, " for region ", reply.region));
    }
    if (reply.code != 0) {
      Status s = FromReply(reply);
      return Status(s.code(), absl::StrCat("failed: ", s.message()));
    }
    if (!fd.valid() || reply.size == 0) {
      broken_.store(true);
      return absl::DataLossError(absl::StrCat("failed: protocol error: the reply for region ",
                                              region, " carries no descriptor"));
    }
    if (removed_.count(region) != 0) return removed();
    // Never trust the size the source announces: a descriptor smaller than that, or one the
    // source could still shrink, would fault (SIGBUS) in our copy threads instead of failing
    // this read. The engine's own regions are memfds sealed against shrinking.
    struct stat st {};
    const int seals = ::fcntl(fd.get(), F_GET_SEALS);
    if (::fstat(fd.get(), &st) != 0 || seals < 0 || (seals & F_SEAL_SHRINK) == 0 ||
        st.st_size < 0 || static_cast<uint64_t>(st.st_size) < reply.size) {
      broken_.store(true);
      const std::string why = seals < 0 ? std::string("not a sealed memfd")
                              : (seals & F_SEAL_SHRINK) == 0
                                  ? std::string("not sealed against shrinking")
                                  : absl::StrCat(st.st_size, " bytes");
      return absl::DataLossError(absl::StrCat(
          "failed: the source's descriptor for region ", region, " does not back the ", reply.size,
          " bytes it announced (", why, "); not reading from this source: read from another one"));
    }
    void* p = ::mmap(nullptr, reply.size, PROT_READ, MAP_SHARED, fd.get(), 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(absl::StrCat("failed: mapping region ", region, " (",
                                                       reply.size, " bytes): ", ErrnoText(errno)));
    }
    Mapping m{static_cast<const char*>(p), reply.size};
    mappings_.emplace(region, m);
    return m;  // the mapping keeps the memory; the descriptor closes here
  }
}

Status ShmPeerConnection::Read(absl::Span<const ReadOp> ops, const ReadControl& ctl) {
  auto closed = [&] {
    return absl::FailedPreconditionError(
        absl::StrCat("connection to ", description_, " is closed; Connect again"));
  };
  if (closing_.load()) return closed();
  absl::MutexLock lock(&mu_);
  if (closing_.load() || !control_.valid()) return closed();
  if (broken_.load()) {
    return absl::FailedPreconditionError(
        absl::StrCat("connection to ", description_, " broken by an earlier failure; reconnect"));
  }
  const ReadOp* first = nullptr;
  for (const ReadOp& op : ops) {
    if (op.length > 0) {
      first = &op;
      break;
    }
  }
  if (first == nullptr) return absl::OkStatus();
  auto fail = [&](const Status& s, const std::string& range) {
    return Status(s.code(), absl::StrCat("shm read from ", description_, " ", s.message(),
                                         "; first unfinished range: ", range));
  };
  const std::string first_range = RangeText(first->remote_region, first->remote_offset,
                                            std::min(first->length, options_.chunk_bytes));

  Status drained = DrainNotices();
  if (!drained.ok()) return fail(drained, first_range);

  std::vector<Chunk> chunks;
  for (const ReadOp& op : ops) {
    if (op.length == 0) continue;
    auto mapping = Map(op.remote_region, ctl.deadline);
    if (!mapping.ok()) return fail(mapping.status(), first_range);
    if (op.remote_offset > mapping->size || op.length > mapping->size - op.remote_offset) {
      return fail(absl::InvalidArgumentError(absl::StrCat(
                      "failed: ", RangeText(op.remote_region, op.remote_offset, op.length),
                      " is outside the source's region of ", mapping->size, " bytes")),
                  first_range);
    }
    for (uint64_t done = 0; done < op.length; done += options_.chunk_bytes) {
      const uint64_t len = std::min(options_.chunk_bytes, op.length - done);
      chunks.push_back(Chunk{mapping->data + op.remote_offset + done,
                             static_cast<char*>(op.local) + done, len, op.remote_region,
                             op.remote_offset + done});
    }
  }

  // Threads take chunks in order from `next`; a thread that sees a reason to stop records the
  // chunk it gave up, so every chunk before `first_abandoned` has landed.
  enum Stop : int { kNone = 0, kCancelled = 1, kDeadline = 2, kClosed = 3 };
  std::atomic<size_t> next{0};
  std::atomic<size_t> first_abandoned{SIZE_MAX};
  std::atomic<int> stop{kNone};
  const bool has_deadline = ctl.deadline != absl::InfiniteFuture();
  auto work = [&] {
    for (;;) {
      const size_t i = next.fetch_add(1);
      if (i >= chunks.size()) return;
      int why = stop.load();
      if (why == kNone) {
        why = ctl.cancelled->load()                         ? kCancelled
              : closing_.load()                             ? kClosed
              : has_deadline && absl::Now() >= ctl.deadline ? kDeadline
                                                            : kNone;
        if (why != kNone) {
          int expected = kNone;
          stop.compare_exchange_strong(expected, why);
        }
      }
      if (why != kNone) {
        AtomicMin(first_abandoned, i);
        return;
      }
      const Chunk& c = chunks[i];
      std::memcpy(c.dst, c.src, c.length);
      ctl.bytes_done->fetch_add(c.length);
    }
  };
  const size_t thread_count =
      std::min<size_t>(static_cast<size_t>(options_.copy_threads), chunks.size());
  std::vector<std::thread> threads;
  threads.reserve(thread_count - 1);
  for (size_t t = 1; t < thread_count; ++t) threads.emplace_back(work);
  work();
  for (std::thread& t : threads) t.join();

  const int why = stop.load();
  if (why == kNone) return absl::OkStatus();
  const Chunk& c = chunks[std::min(first_abandoned.load(), chunks.size() - 1)];
  const std::string range = RangeText(c.region, c.offset, c.length);
  switch (why) {
    case kCancelled:
      return fail(absl::CancelledError("cancelled"), range);
    case kDeadline:
      return fail(absl::DeadlineExceededError("passed its deadline"), range);
    default:
      return fail(absl::FailedPreconditionError("stopped: the connection was closed"), range);
  }
}

}  // namespace ferry::internal::shm
