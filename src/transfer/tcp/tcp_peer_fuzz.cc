// libFuzzer target: the target side of the TCP data protocol, over real loopback sockets. A
// hostile source accepts the target's connection, reads its Hello and answers with the input's
// bytes (after a 2-byte header), whatever the target asks; then it closes its sending side.
// The target (TcpPeerConnection: one stream, the input's max_inflight) reads 1 to 8 pieces of
// 1 to 256 bytes, each into its own exact-size heap buffer (ASan reports any byte written
// outside one). Invariants: the read succeeds exactly when the bytes are a well-formed
// HelloReply and one well-formed OK reply per piece, in order, with the requested length (a
// reference parser decides); then every piece holds the bytes the source sent for it, and every
// piece was reported done once. A failure is one of the statuses transport.h allows. Each input
// ends when the source's bytes run out (EOF), so time and memory are bounded by the input.
//
// Input: byte 0 = pieces - 1 (low 3 bits) and max_inflight selector (bits 3-4); byte 1 = seed of
// the piece lengths; then what the source sends.
#include <poll.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "transfer/fuzz_feed.h"
#include "transfer/tcp/tcp_peer.h"
#include "transfer/tcp/tcp_socket.h"
#include "transfer/tcp/tcp_wire.h"

namespace {

using namespace ferry::internal;       // NOLINT: a fuzzer's one translation unit
using namespace ferry::internal::tcp;  // NOLINT

const std::string kSecret(kSecretBytes, 't');

// The hostile source's listener, for the whole run.
const Fd& Listener(uint16_t* port) {
  static uint16_t bound = 0;
  static Fd* fd = [] {
    auto l = Listen(HostPort{"127.0.0.1", 0}, &bound);
    if (!l.ok()) __builtin_trap();
    return new Fd(std::move(*l));
  }();
  *port = bound;
  return *fd;
}

// Accepts one connection, reads the 40-byte Hello, sends `script`, closes its sending side and
// drains what the target sends until the target closes (or 10 s pass).
void HostileSource(int listener, const std::string& script) {
  pollfd ready{listener, POLLIN, 0};
  if (::poll(&ready, 1, 10000) != 1) return;
  Fd fd(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
  if (!fd.valid() || !ConfigureSocket(fd.get(), 0).ok()) return;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  auto late = [&] { return absl::Now() > deadline; };
  Hello hello{};
  if (RecvAll(fd.get(), &hello, sizeof(hello), late).what != Io::kOk) return;
  if (hello.magic != kMagic || std::memcmp(hello.secret, kSecret.data(), kSecretBytes) != 0) {
    __builtin_trap();  // the target must present the secret it was given
  }
  iovec iov{const_cast<char*>(script.data()), script.size()};
  SendAll(fd.get(), &iov, 1, late);
  ::shutdown(fd.get(), SHUT_WR);
  char sink[4096];
  while (!late()) {
    const ssize_t n = ::recv(fd.get(), sink, sizeof(sink), 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return;
  }
}

// What a correct target must conclude from `script`: true when it holds a good HelloReply and
// a good reply to each piece; `expected[i]` then gets piece i's bytes.
bool WellFormed(const std::string& script, const std::vector<uint64_t>& lengths,
                std::vector<std::string>* expected) {
  size_t at = 0;
  HelloReply hello{};
  if (script.size() < sizeof(hello)) return false;
  std::memcpy(&hello, script.data(), sizeof(hello));
  if (hello.magic != kMagic || hello.status != static_cast<uint32_t>(HelloStatus::kOk)) {
    return false;
  }
  at += sizeof(hello);
  for (size_t i = 0; i < lengths.size(); ++i) {
    ReadReply r{};
    if (script.size() - at < sizeof(r)) return false;
    std::memcpy(&r, script.data() + at, sizeof(r));
    at += sizeof(r);
    if (r.request_id != i || r.status != static_cast<uint32_t>(ReplyStatus::kOk) ||
        r.length != lengths[i] || script.size() - at < r.length) {
      return false;
    }
    expected->push_back(script.substr(at, r.length));
    at += r.length;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t count = 1 + (data[0] & 7);
  const int inflight[] = {1, 2, 4, 16};
  uint16_t port = 0;
  const Fd& listener = Listener(&port);
  std::vector<uint64_t> lengths;
  std::vector<std::vector<char>> buffers;  // each piece its own allocation
  std::vector<Chunk> pieces;
  for (size_t i = 0; i < count; ++i) {
    lengths.push_back(1 + ((data[1] * 37 + i * 101) & 0xff));
    buffers.emplace_back(lengths[i], '\0');
  }
  for (size_t i = 0; i < count; ++i) {
    pieces.push_back(Chunk{static_cast<uint32_t>(i), 0, i * 4096, buffers[i].data(), lengths[i]});
  }
  const std::string script(reinterpret_cast<const char*>(data) + 2, size - 2);
  std::thread source(HostileSource, listener.get(), script);

  TcpPeerOptions options;
  options.streams = 1;
  options.max_inflight = inflight[(data[0] >> 3) & 3];
  options.connect_timeout = absl::Seconds(5);
  std::vector<std::string> expected;
  const bool well_formed = WellFormed(script, lengths, &expected);
  FuzzFeed feed(pieces, {0}, absl::Now() + absl::Seconds(10));
  ferry::Status status;
  {
    auto conn = TcpPeerConnection::Create(HostPort{"127.0.0.1", port}, kSecret, options, "fuzz");
    status = conn.ok() ? (*conn)->Execute(feed) : conn.status();
  }  // closes the connection: the source's drain ends
  source.join();
  if (status.ok() != well_formed) __builtin_trap();
  if (!status.ok()) {
    if (!TransportFailure(status.code()) || status.message().empty()) __builtin_trap();
    return 0;
  }
  uint64_t total = 0;
  for (size_t i = 0; i < count; ++i) {
    if (std::memcmp(buffers[i].data(), expected[i].data(), lengths[i]) != 0) __builtin_trap();
    total += lengths[i];
  }
  if (!feed.AllDone() || feed.moved.load() != total) __builtin_trap();
  return 0;
}
