// libFuzzer target: the target side of the shm control protocol, over a real abstract unix
// socket. A hostile source accepts the target's connection, checks its Hello and answers with
// the input's packets: replies of any type, code, region and announced size, notices, raw
// packets of any length, each optionally carrying a descriptor (a sealed memfd of the announced
// size, of half of it or more, an unsealed memfd, or a pipe). Packets come in groups: the first
// answers the Hello, each later one answers the target's next OpenRequest (a group that cannot
// end the target's wait, only notices, runs on into the next); when the groups run out while
// the target waits, the source closes its side, so each input ends at once. The target
// (ShmPeerConnection) reads 2 to 4 pieces of regions 0 and 1 into exact-size heap buffers, once or
// twice. Invariants: a successful read holds the source's bytes (every memfd carries the same
// pattern); every piece is reported done once; a failure has a code transport.h allows; the
// target asks only for regions the read touches; no descriptor leaks.
//
// Input: byte 0 = regions read (bits 0-1), copy threads (bit 2), read twice (bit 3), piece
// layout (bits 4-7); then packets, each an op byte (bits 0-1: 0 ends the group, 1 a Reply from
// the next 6 bytes, 2 a raw packet of the length in the next byte, 3 a removal notice).
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "transfer/fuzz_feed.h"
#include "transfer/shm/shm_peer.h"
#include "transfer/shm/shm_wire.h"

namespace {

using namespace ferry::internal;       // NOLINT: a fuzzer's one translation unit
using namespace ferry::internal::shm;  // NOLINT

const std::string kSecret(kSecretBytes, 'h');
constexpr uint64_t kMaxMemfd = 1 << 16;

uint8_t PatternByte(uint64_t offset) { return static_cast<uint8_t>(offset * 131 + 7); }

struct Listener {
  std::string name;
  Fd fd;
};
const Listener& TheListener() {
  static Listener* l = [] {
    auto* out = new Listener{"ferry-shm-peer-fuzz-" + std::to_string(::getpid()), Fd()};
    auto fd = ListenAbstract(out->name);
    if (!fd.ok()) __builtin_trap();
    out->fd = std::move(*fd);
    return out;
  }();
  return *l;
}

enum FdKind { kNoFd = 0, kSealed = 1, kUnsealed = 2, kPipe = 3 };

struct Packet {
  std::string bytes;
  FdKind fd = kNoFd;
  uint64_t fd_bytes = 0;  // memfd size
};
using Group = std::vector<Packet>;

// A memfd of `bytes` holding the pattern; sealed against shrinking and growing when `sealed`.
Fd MakeMemfd(uint64_t bytes, bool sealed) {
  Fd fd(::memfd_create("fuzz", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid() || ::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) __builtin_trap();
  std::vector<uint8_t> fill(bytes);
  for (uint64_t i = 0; i < bytes; ++i) fill[i] = PatternByte(i);
  if (bytes > 0 && ::pwrite(fd.get(), fill.data(), bytes, 0) != static_cast<ssize_t>(bytes)) {
    __builtin_trap();
  }
  if (sealed && ::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) __builtin_trap();
  return fd;
}

void Send(int sock, const Group& group) {
  for (const Packet& p : group) {
    Fd fd;
    Fd other;  // a pipe's write end, closed here
    if (p.fd == kSealed || p.fd == kUnsealed) fd = MakeMemfd(p.fd_bytes, p.fd == kSealed);
    if (p.fd == kPipe) {
      int ends[2];
      if (::pipe2(ends, O_CLOEXEC) != 0) __builtin_trap();
      fd = Fd(ends[0]);
      other = Fd(ends[1]);
    }
    SendPacket(sock, p.bytes.data(), p.bytes.size(), fd.valid() ? fd.get() : -1);
  }
}

// Whether the target, waiting for a reply, stops waiting within `group`: on any packet but a
// well-formed removal notice (a zero-length packet reads as the end of the stream).
bool EndsWait(const Group& group) {
  for (const Packet& p : group) {
    if (p.bytes.size() != sizeof(Reply)) return true;
    Reply r;
    std::memcpy(&r, p.bytes.data(), sizeof(r));
    if (r.type != kRegionRemoved) return true;
  }
  return false;
}

// Whether the source has sent all it will before the target's next request.
struct Progress {
  absl::Mutex mu;
  bool idle ABSL_GUARDED_BY(mu) = false;
  void Set(bool v) {
    absl::MutexLock lock(&mu);
    idle = v;
  }
  void Await() {
    absl::MutexLock lock(&mu);
    mu.AwaitWithTimeout(absl::Condition(&idle), absl::Seconds(10));
  }
};

void HostileSource(int listener, const std::vector<Group>& groups,
                   const std::set<uint32_t>& regions, Progress* progress) {
  struct Done {
    Progress* p;
    ~Done() { p->Set(true); }
  } done{progress};
  pollfd ready{listener, POLLIN, 0};
  if (::poll(&ready, 1, 10000) != 1) return;
  Fd fd(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
  if (!fd.valid()) return;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  Hello hello{};
  int err = 0;
  if (RecvPacket(fd.get(), &hello, sizeof(hello), deadline, nullptr, &err) != Recv::kOk) return;
  if (std::memcmp(hello.magic, kMagic, sizeof(kMagic)) != 0 || hello.version != kVersion ||
      std::memcmp(hello.secret, kSecret.data(), kSecretBytes) != 0) {
    __builtin_trap();  // the target must present the secret it was given
  }
  size_t g = 0;
  bool answered = false;  // the Hello: any packet ends that wait
  while (g < groups.size() && !answered) {
    answered = !groups[g].empty();
    Send(fd.get(), groups[g++]);
  }
  // Out of answers while the target waits: it sees the end of the stream. Otherwise the source
  // stays silent until asked again, so that a second read can run on the regions mapped.
  if (!answered) ::shutdown(fd.get(), SHUT_WR);
  for (;;) {
    progress->Set(true);
    OpenRequest request{};
    const Recv got = RecvPacket(fd.get(), &request, sizeof(request), deadline, nullptr, &err);
    if (got == Recv::kError && err == EPROTO) __builtin_trap();  // not an OpenRequest
    if (got != Recv::kOk) return;                                // the target closed
    if (request.what != kOpenMemfd || regions.count(request.region) == 0) __builtin_trap();
    if (g >= groups.size()) {
      ::shutdown(fd.get(), SHUT_WR);
      continue;
    }
    progress->Set(false);
    bool ends = false;
    while (g < groups.size() && !ends) {
      ends = EndsWait(groups[g]);
      Send(fd.get(), groups[g++]);
    }
    if (!ends) ::shutdown(fd.get(), SHUT_WR);
  }
}

std::vector<Group> ParseGroups(const uint8_t* data, size_t size) {
  std::vector<Group> groups(1);
  size_t at = 0;
  auto take = [&](size_t n) {
    n = std::min(n, size - at);
    std::string s(reinterpret_cast<const char*>(data) + at, n);
    at += n;
    return s;
  };
  while (at < size) {
    const uint8_t op = data[at++];
    Packet p;
    switch (op & 3) {
      case 0:
        groups.emplace_back();
        continue;
      case 1: {
        std::string f = take(6);
        f.resize(6, '\0');
        const auto b = [&](int i) { return static_cast<uint8_t>(f[i]); };
        Reply r{};
        r.type = b(0) & 7;
        r.code = b(1) < 0xf0 ? b(1) % 17 : 0xffffff00u | b(1);
        r.region = b(2) & 3;
        r.records = b(5);
        r.size = b(3) | (b(4) << 8);
        if ((op & 0x80) != 0) r.size |= 1ull << 62;  // a size no descriptor backs
        if ((op & 0x10) != 0) {
          std::memset(r.message, 'm', sizeof(r.message));  // no terminating NUL
        } else {
          std::strcpy(r.message, "hostile");
        }
        p.bytes.assign(reinterpret_cast<const char*>(&r), sizeof(r));
        p.fd = static_cast<FdKind>((op >> 2) & 3);
        const uint64_t announced = std::min<uint64_t>(r.size, kMaxMemfd);
        const uint64_t sizes[4] = {announced, announced / 2, announced + 4096, 0};
        p.fd_bytes = std::min<uint64_t>(sizes[(op >> 5) & 3], kMaxMemfd + 4096);
        break;
      }
      case 2: {
        const std::string len = take(1);
        p.bytes = take(len.empty() ? 0 : static_cast<uint8_t>(len[0]));
        p.fd = static_cast<FdKind>((op >> 2) & 3);
        p.fd_bytes = 4096;
        break;
      }
      case 3: {
        Reply r{};
        r.type = kRegionRemoved;
        r.region = (op >> 2) & 3;
        p.bytes.assign(reinterpret_cast<const char*>(&r), sizeof(r));
        break;
      }
    }
    groups.back().push_back(std::move(p));
  }
  return groups;
}

// mmap of a region may fail for lack of memory as well.
bool AllowedFailure(absl::StatusCode code) {
  return TransportFailure(code) || code == absl::StatusCode::kResourceExhausted;
}

int OpenDescriptors() {
  int n = 0;
  for (int fd = 0; fd < 1024; ++fd) n += ::fcntl(fd, F_GETFD) != -1 ? 1 : 0;
  return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const Listener& listener = TheListener();
  const int descriptors = OpenDescriptors();
  const uint8_t config = data[0];
  std::set<uint32_t> regions;
  if ((config & 1) != 0 || (config & 2) == 0) regions.insert(0);
  if ((config & 2) != 0) regions.insert(1);
  const uint64_t seed = config >> 4;
  std::vector<std::vector<char>> buffers;  // each piece its own allocation
  std::vector<Chunk> pieces;
  for (uint32_t region : regions) {
    const uint64_t layout[2][2] = {{seed * 512, 1 + seed * 17},
                                   {(seed * 977 + region * 4099) % 60000, 1 + seed * 131 % 4096}};
    for (const auto& [offset, length] : layout) {
      buffers.emplace_back(length, '\0');
      pieces.push_back(Chunk{static_cast<uint32_t>(pieces.size()), region, offset,
                             buffers.back().data(), length});
    }
  }
  const std::vector<Group> groups = ParseGroups(data + 1, size - 1);
  Progress progress;
  std::thread source(HostileSource, listener.fd.get(), std::cref(groups), std::cref(regions),
                     &progress);
  ShmPeerOptions options;
  options.copy_threads = (config & 4) != 0 ? 2 : 1;
  {
    auto conn = ShmPeerConnection::Create(listener.name, kSecret, options, "fuzz");
    const int reads = conn.ok() ? ((config & 8) != 0 ? 2 : 1) : 0;
    if (!conn.ok() && (!AllowedFailure(conn.status().code()) || conn.status().message().empty())) {
      __builtin_trap();
    }
    for (int r = 0; r < reads; ++r) {
      progress.Await();  // what the source sends unasked is queued: the same run every time
      for (auto& b : buffers) std::fill(b.begin(), b.end(), '\0');
      FuzzFeed feed(pieces, std::vector<uint32_t>(regions.begin(), regions.end()));
      const ferry::Status status = (*conn)->Execute(feed);
      if (!status.ok()) {
        if (!AllowedFailure(status.code()) || status.message().empty()) __builtin_trap();
        continue;
      }
      if (!feed.AllDone()) __builtin_trap();
      for (const Chunk& c : pieces) {
        for (uint64_t i = 0; i < c.length; ++i) {
          if (static_cast<uint8_t>(c.local[i]) != PatternByte(c.remote_offset + i)) {
            __builtin_trap();
          }
        }
      }
    }
  }  // closes the connection: the source's wait for a request ends
  source.join();
  if (OpenDescriptors() != descriptors) __builtin_trap();  // a passed descriptor leaked
  return 0;
}
