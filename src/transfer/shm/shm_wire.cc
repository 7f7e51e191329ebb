#include "transfer/shm/shm_wire.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace ferry::internal::shm {

namespace {

// Waits until `sock` is ready for `events` or `deadline` passes (polling in steps of 100 ms).
bool WaitFor(int sock, short events, absl::Time deadline) {
  for (;;) {
    const absl::Duration left = deadline - absl::Now();
    const int wait_ms =
        left <= absl::ZeroDuration()
            ? 0
            : static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 100));
    pollfd pfd{sock, events, 0};
    const int rc = ::poll(&pfd, 1, wait_ms);
    if (rc > 0) return true;
    if (rc < 0 && errno != EINTR) return true;  // let the next call report the error
    if (absl::Now() >= deadline) return false;
  }
}

// sockaddr_un for the abstract name: sun_path[0] = NUL, then the name (not NUL-terminated).
StatusOr<std::pair<sockaddr_un, socklen_t>> AbstractAddress(const std::string& name) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (name.empty() || name.size() + 1 > sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("abstract unix socket name \"", name,
                                                   "\" is empty or longer than ",
                                                   sizeof(addr.sun_path) - 1, " bytes"));
  }
  std::memcpy(addr.sun_path + 1, name.data(), name.size());
  return std::make_pair(addr,
                        static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size()));
}

}  // namespace

StatusOr<Fd> ListenAbstract(const std::string& name) {
  FERRY_ASSIGN_OR_RETURN(auto addr, AbstractAddress(name));
  Fd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return absl::InternalError(absl::StrCat("socket(AF_UNIX) failed: ", ErrnoText(errno)));
  }
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr.first), addr.second) != 0) {
    return absl::UnavailableError(
        absl::StrCat("bind to abstract unix socket @", name, " failed: ", ErrnoText(errno)));
  }
  if (::listen(fd.get(), 128) != 0) {
    return absl::InternalError(
        absl::StrCat("listen on abstract unix socket @", name, " failed: ", ErrnoText(errno)));
  }
  return fd;
}

StatusOr<Fd> ConnectAbstract(const std::string& name) {
  FERRY_ASSIGN_OR_RETURN(auto addr, AbstractAddress(name));
  Fd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return absl::InternalError(absl::StrCat("socket(AF_UNIX) failed: ", ErrnoText(errno)));
  }
  int rc;
  do {
    rc = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr.first), addr.second);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    const int err = errno;
    return absl::UnavailableError(absl::StrCat(
        "connect to abstract unix socket @", name, " failed: ", ErrnoText(err),
        err == ECONNREFUSED || err == ENOENT
            ? " (the source stopped, or runs in another network namespace or on another host)"
            : ""));
  }
  return fd;
}

bool SendPacket(int fd, const void* data, size_t len, int pass_fd) {
  iovec iov{const_cast<void*>(data), len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (pass_fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), &pass_fd, sizeof(int));
  }
  ssize_t n;
  do {
    n = ::sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return n == static_cast<ssize_t>(len);
}

Recv RecvPacket(int fd, void* data, size_t len, absl::Time deadline, Fd* received, int* err) {
  *err = 0;
  if (!WaitFor(fd, POLLIN, deadline)) return Recv::kTimeout;
  // One byte more than expected, so that a longer packet shows up as a wrong size.
  char buf[sizeof(Reply) + sizeof(Hello) + 1];
  iovec iov{buf, std::min(sizeof(buf), len + 1)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = ::recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    *err = errno;
    return errno == EAGAIN ? Recv::kTimeout : Recv::kError;
  }
  // Take ownership of every passed descriptor before looking at the payload, so none leaks.
  Fd passed;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int one;
      std::memcpy(&one, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (!passed.valid()) {
        passed = Fd(one);
      } else {
        ::close(one);
      }
    }
  }
  if (n == 0) return Recv::kEof;
  if (static_cast<size_t>(n) != len || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
    *err = EPROTO;
    return Recv::kError;
  }
  std::memcpy(data, buf, len);
  if (received != nullptr) *received = std::move(passed);
  return Recv::kOk;
}

namespace {

bool SendOpenRequest(int control, uint32_t region, uint32_t what) {
  const OpenRequest request{region, what};
  return SendPacket(control, &request, sizeof(request));
}

Status RequestFailed(uint32_t region, int err) {
  return absl::UnavailableError(
      absl::StrCat("failed: asking the source for region ", region, ": ", ErrnoText(err)));
}

// The reply for `region`, after any RegionRemoved notices (into *removed).
StatusOr<Reply> AwaitReply(int control, uint32_t region, uint32_t reply_type, absl::Time deadline,
                           std::set<uint32_t>* removed, Fd* received) {
  for (;;) {
    Reply reply{};
    int err = 0;
    const Recv got = RecvPacket(control, &reply, sizeof(reply), deadline, received, &err);
    if (got != Recv::kOk) {
      return absl::UnavailableError(absl::StrCat(
          "failed: opening region ", region, ": ",
          got == Recv::kTimeout ? "no reply in time"
          : got == Recv::kEof   ? "the source closed the control connection (stopped or exited)"
                                : ErrnoText(err)));
    }
    if (reply.type == kRegionRemoved) {
      removed->insert(reply.region);
      continue;
    }
    if (reply.type != reply_type || reply.region != region) {
      return absl::DataLossError(absl::StrCat("failed: protocol error: unexpected reply type ",
                                              reply.type, " for region ", reply.region));
    }
    return reply;
  }
}

}  // namespace

StatusOr<Reply> RequestRegion(int control, uint32_t region, uint32_t what, uint32_t reply_type,
                              absl::Time deadline, std::set<uint32_t>* removed, Fd* received) {
  if (!SendOpenRequest(control, region, what)) return RequestFailed(region, errno);
  return AwaitReply(control, region, reply_type, deadline, removed, received);
}

Status RegionRemovedError(uint32_t region) {
  return absl::NotFoundError(absl::StrCat("failed: the source has no region ", region,
                                          " (removed after the blob was exported)"));
}

Status OpenRegions(int control, const std::vector<uint32_t>& regions,
                   const std::function<bool(uint32_t)>& mapped, uint32_t what, uint32_t reply_type,
                   absl::Time deadline, std::set<uint32_t>* removed, const OpenAnswer& answer,
                   bool* broken) {
  Status first;
  std::vector<uint32_t> to_open;
  for (uint32_t region : regions) {
    if (mapped(region)) continue;
    if (removed->count(region) != 0) {
      if (first.ok()) first = RegionRemovedError(region);
      continue;
    }
    to_open.push_back(region);
  }
  size_t sent = 0;
  for (size_t answered = 0; answered < to_open.size(); ++answered) {
    // The requests are a few bytes each: kOpenWindow of them always fit the socket's buffer,
    // so sending never waits on the source, which may be sending us a large export meanwhile.
    while (sent < to_open.size() && sent - answered < kOpenWindow) {
      if (!SendOpenRequest(control, to_open[sent], what)) {
        *broken = true;
        return RequestFailed(to_open[sent], errno);
      }
      ++sent;
    }
    const uint32_t region = to_open[answered];
    Fd received;
    auto reply = AwaitReply(control, region, reply_type,
                            std::min(deadline, absl::Now() + kControlTimeout), removed, &received);
    if (!reply.ok()) {
      *broken = true;
      return reply.status();
    }
    Status s = answer(region, *reply, std::move(received), broken);
    if (*broken) return s;
    if (first.ok()) first = std::move(s);
  }
  return first;
}

Status CheckConnectionUsable(bool closed, bool broken, const std::string& description) {
  if (closed) {
    return absl::FailedPreconditionError(
        absl::StrCat("connection to ", description, " is closed; Connect again"));
  }
  if (broken) {
    return absl::FailedPreconditionError(
        absl::StrCat("connection to ", description, " broken by an earlier failure; reconnect"));
  }
  return absl::OkStatus();
}

StatusOr<std::vector<uint32_t>> ReadRemovalNotices(int control) {
  std::vector<uint32_t> removed;
  for (;;) {
    Reply notice{};
    int err = 0;
    switch (RecvPacket(control, &notice, sizeof(notice), absl::InfinitePast(), nullptr, &err)) {
      case Recv::kTimeout:
        return removed;
      case Recv::kEof:
        return absl::UnavailableError(
            "failed: the source closed the control connection (it stopped or exited)");
      case Recv::kError:
        return absl::UnavailableError(
            absl::StrCat("failed: control connection error: ", ErrnoText(err)));
      case Recv::kOk:
        break;
    }
    if (notice.type != kRegionRemoved) {
      return absl::DataLossError(
          absl::StrCat("failed: protocol error: unexpected message type ", notice.type));
    }
    removed.push_back(notice.region);
  }
}

Status FromReply(const Reply& r) {
  const std::string message(r.message, strnlen(r.message, sizeof(r.message)));
  const auto code = static_cast<absl::StatusCode>(r.code);
  switch (code) {
    case absl::StatusCode::kOk:
      return absl::OkStatus();
    // What a source sends (ShmServer), and the failures transport.h lets a read report.
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDataLoss:
      return Status(code, message);
    default:
      // Cancelled, DeadlineExceeded, Aborted... mean something else to the read core and the
      // pull, and codes outside absl's are no status at all: not the source's to choose.
      return absl::DataLossError(absl::StrCat("protocol error: the source answered with status ",
                                              r.code, " (", message, ")"));
  }
}

StatusOr<Fd> Greet(const std::string& socket_name, const std::string& secret,
                   const std::string& transport, const std::string& description) {
  if (secret.size() != kSecretBytes) {
    return absl::InvalidArgumentError(absl::StrCat("blob of ", description, " has a ",
                                                   secret.size(), "-byte ", transport,
                                                   " secret; expected ", kSecretBytes));
  }
  auto control = ConnectAbstract(socket_name);
  if (!control.ok()) {
    return Status(control.status().code(), absl::StrCat(transport, " connection to ", description,
                                                        " failed: ", control.status().message()));
  }
  Hello hello{};
  std::memcpy(hello.magic, kMagic, sizeof(kMagic));
  hello.version = kVersion;
  std::memcpy(hello.secret, secret.data(), kSecretBytes);
  if (!SendPacket(control->get(), &hello, sizeof(hello))) {
    return absl::UnavailableError(absl::StrCat(transport, " handshake with ", description,
                                               " failed: sending the hello: ", ErrnoText(errno)));
  }
  Reply reply{};
  int err = 0;
  const Recv got = RecvPacket(control->get(), &reply, sizeof(reply), absl::Now() + kControlTimeout,
                              nullptr, &err);
  if (got != Recv::kOk || reply.type != kHelloReply) {
    return absl::UnavailableError(
        absl::StrCat(transport, " handshake with ", description, " failed: ",
                     got == Recv::kTimeout ? "no reply within 10s"
                     : got == Recv::kEof   ? "the source closed the connection"
                                           : absl::StrCat("bad reply: ", ErrnoText(err))));
  }
  if (reply.code != 0) {
    Status s = FromReply(reply);
    return Status(s.code(), absl::StrCat(transport, " handshake with ", description,
                                         " refused: ", s.message()));
  }
  return std::move(*control);
}

namespace {

// Sends everything in `out`, waiting for room until `deadline`.
Status Drain(int sock, Outbox& out, absl::Time deadline) {
  for (;;) {
    FERRY_RETURN_IF_ERROR(out.Flush(sock));
    if (out.empty()) return absl::OkStatus();
    if (!WaitFor(sock, POLLOUT, deadline)) {
      return absl::UnavailableError(
          absl::StrCat("sending ", out.next(), " failed: the peer stopped reading"));
    }
  }
}

}  // namespace

void Outbox::AddPacket(const void* data, size_t len) {
  packets_.push_back(Packet{std::string(static_cast<const char*>(data), len),
                            {},
                            absl::StrCat("a packet of ", len, " bytes")});
}

void Outbox::AddBytes(std::string_view bytes) {
  for (size_t at = 0; at < bytes.size(); at += kMaxBytesPerPacket) {
    const size_t n = std::min(kMaxBytesPerPacket, bytes.size() - at);
    packets_.push_back(Packet{std::string(bytes.substr(at, n)),
                              {},
                              absl::StrCat("bytes ", at, "..", at + n, " of ", bytes.size())});
  }
}

void Outbox::AddFds(const std::vector<int>& fds) {
  const size_t batches = (fds.size() + kMaxFdsPerPacket - 1) / kMaxFdsPerPacket;
  for (size_t b = 0; b < batches; ++b) {
    const size_t first = b * kMaxFdsPerPacket;
    const size_t count = std::min(kMaxFdsPerPacket, fds.size() - first);
    const FdBatch batch{kFdBatch, static_cast<uint32_t>(b), static_cast<uint32_t>(count),
                        static_cast<uint32_t>(fds.size())};
    packets_.push_back(
        Packet{std::string(reinterpret_cast<const char*>(&batch), sizeof(batch)),
               std::vector<int>(fds.begin() + first, fds.begin() + first + count),
               absl::StrCat("descriptors ", first, "..", first + count - 1, " of ", fds.size())});
  }
}

Status Outbox::Flush(int sock) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerPacket)];
  while (!packets_.empty()) {
    Packet& p = packets_.front();
    iovec iov{p.bytes.data(), p.bytes.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (!p.fds.empty()) {
      std::memset(control, 0, sizeof(control));
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * p.fds.size());
      cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
      cmsg->cmsg_level = SOL_SOCKET;
      cmsg->cmsg_type = SCM_RIGHTS;
      cmsg->cmsg_len = CMSG_LEN(sizeof(int) * p.fds.size());
      std::memcpy(CMSG_DATA(cmsg), p.fds.data(), sizeof(int) * p.fds.size());
    }
    const ssize_t n = ::sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n == static_cast<ssize_t>(p.bytes.size())) {
      packets_.pop_front();
      continue;
    }
    const int err = n < 0 ? errno : EMSGSIZE;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) return absl::OkStatus();  // no room: later
    return absl::UnavailableError(absl::StrCat("sending ", p.what, " failed: ", ErrnoText(err)));
  }
  return absl::OkStatus();
}

Status SendBytes(int sock, std::string_view bytes, absl::Time deadline) {
  Outbox out;
  out.AddBytes(bytes);
  return Drain(sock, out, deadline);
}

StatusOr<std::string> RecvBytes(int sock, size_t size, size_t limit, absl::Time deadline) {
  if (size > limit) {
    return absl::DataLossError(
        absl::StrCat("the peer announced ", size, " bytes; at most ", limit, " are accepted"));
  }
  std::string out(size, '\0');
  std::string packet(kMaxBytesPerPacket + 1, '\0');
  for (size_t at = 0; at < size;) {
    if (!WaitFor(sock, POLLIN, deadline)) {
      return absl::DeadlineExceededError(
          absl::StrCat("received ", at, " of ", size, " bytes before the deadline"));
    }
    const ssize_t n = ::recv(sock, packet.data(), packet.size(), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
    if (n < 0) {
      return absl::UnavailableError(absl::StrCat("receiving bytes failed: ", ErrnoText(errno)));
    }
    if (n == 0) {
      return absl::UnavailableError(
          absl::StrCat("the peer closed the socket after ", at, " of ", size, " bytes"));
    }
    const size_t expected = std::min(kMaxBytesPerPacket, size - at);
    if (static_cast<size_t>(n) != expected) {
      return absl::DataLossError(absl::StrCat("a packet of ", n, " bytes at offset ", at, " of ",
                                              size, "; expected ", expected));
    }
    std::memcpy(out.data() + at, packet.data(), expected);
    at += expected;
  }
  return out;
}

Status SendFds(int sock, const std::vector<int>& fds, absl::Time deadline) {
  Outbox out;
  out.AddFds(fds);
  return Drain(sock, out, deadline);
}

StatusOr<std::vector<Fd>> RecvFds(int sock, size_t count, absl::Time deadline) {
  std::vector<Fd> received;
  received.reserve(count);
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerPacket)];
  for (uint32_t index = 0; received.size() < count; ++index) {
    if (!WaitFor(sock, POLLIN, deadline)) {
      return absl::DeadlineExceededError(absl::StrCat("received ", received.size(), " of ", count,
                                                      " descriptors before the deadline"));
    }
    FdBatch batch{};
    char extra;  // one byte more than a batch, so that a longer packet shows as a wrong size
    iovec iov[2] = {{&batch, sizeof(batch)}, {&extra, 1}};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n;
    do {
      n = ::recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (n < 0) {
      return absl::UnavailableError(
          absl::StrCat("receiving descriptors failed: ", ErrnoText(errno)));
    }
    // Own every attached descriptor first, so that none leaks whatever the packet says.
    std::vector<Fd> attached;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < k; ++i) {
        int one;
        std::memcpy(&one, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        attached.emplace_back(one);
      }
    }
    if (n == 0) {
      return absl::UnavailableError(absl::StrCat("the peer closed the socket after ",
                                                 received.size(), " of ", count, " descriptors"));
    }
    if (n != static_cast<ssize_t>(sizeof(batch)) || (msg.msg_flags & MSG_CTRUNC) != 0 ||
        batch.type != kFdBatch || batch.index != index || batch.total != count ||
        batch.count != attached.size() || batch.count == 0 ||
        received.size() + batch.count > count) {
      return absl::DataLossError(absl::StrCat(
          "descriptor batch ", index, " is malformed (", n, " bytes, ", attached.size(),
          " descriptors attached", (msg.msg_flags & MSG_CTRUNC) != 0 ? ", truncated" : "",
          "); expected ", count - received.size(), " more of ", count));
    }
    for (Fd& fd : attached) received.push_back(std::move(fd));
  }
  return received;
}

}  // namespace ferry::internal::shm
