// libFuzzer target: the source side of the TCP data protocol, on real loopback sockets. One
// TcpServer serves a 1 MiB region; each input is what a peer sends on a fresh connection: a
// Hello (with the right secret when the first byte is even, so that most inputs reach the
// request loop), then the input's bytes as requests. The peer then reads every reply until the
// source closes. Invariants: every reply answers a request the peer sent, in order, with the
// request's length when it is OK; the source never sends more than it was asked for.
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "transfer/tcp/tcp_server.h"
#include "transfer/tcp/tcp_socket.h"
#include "transfer/tcp/tcp_wire.h"

namespace {

using namespace ferry::internal::tcp;  // NOLINT: a fuzzer's one translation unit

constexpr uint64_t kRegion = 1 << 20;
const std::string kSecret(kSecretBytes, 'f');

TcpServer& Server() {
  static std::vector<char>* memory = new std::vector<char>(kRegion, 'r');
  static TcpServer* server = [] {
    auto s = TcpServer::Create(HostPort{"127.0.0.1", 0}, 0, kSecret);
    if (!s.ok() || !(*s)->AddRegion(0, memory->data(), kRegion).ok()) __builtin_trap();
    return s->release();
  }();
  return *server;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  TcpServer& server = Server();
  auto fd = Dial(HostPort{"127.0.0.1", server.port()}, absl::Seconds(5), 0);
  if (!fd.ok()) __builtin_trap();  // the source must keep accepting
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  auto expired = [&] { return absl::Now() > deadline; };
  Hello hello{kMagic, kProtocolVersion, {}};
  std::memcpy(hello.secret, kSecret.data(), kSecretBytes);
  size_t used = 0;
  if (size > 0 && (data[0] & 1) != 0 && size >= 1 + sizeof(Hello)) {
    std::memcpy(&hello, data + 1, sizeof(Hello));  // a hostile Hello
    used = 1 + sizeof(Hello);
  } else if (size > 0) {
    used = 1;
  }
  std::vector<ReadRequest> sent((size - used) / sizeof(ReadRequest));
  if (!sent.empty()) std::memcpy(sent.data(), data + used, sent.size() * sizeof(ReadRequest));
  iovec iov[2] = {{&hello, sizeof(hello)}, {const_cast<uint8_t*>(data + used), size - used}};
  if (SendAll(fd->get(), iov, 2, expired).what != Io::kOk) return 0;  // refused: fine
  ::shutdown(fd->get(), SHUT_WR);
  HelloReply reply{};
  if (RecvAll(fd->get(), &reply, sizeof(reply), expired).what != Io::kOk) return 0;
  if (reply.status != static_cast<uint32_t>(HelloStatus::kOk)) return 0;
  std::vector<char> payload;
  for (size_t i = 0;; ++i) {
    ReadReply r{};
    const IoResult got = RecvAll(fd->get(), &r, sizeof(r), expired);
    if (got.what != Io::kOk) break;          // the source closed after the last request
    if (i >= sent.size()) __builtin_trap();  // a reply to nothing
    if (r.request_id != sent[i].request_id) __builtin_trap();  // out of order
    if (r.status == static_cast<uint32_t>(ReplyStatus::kOk)) {
      if (r.length != sent[i].length || r.length > kRegion) __builtin_trap();
      payload.resize(r.length);
      if (RecvAll(fd->get(), payload.data(), r.length, expired).what != Io::kOk) break;
    } else if (r.length != 0) {
      __builtin_trap();  // an error reply carries no bytes
    }
  }
  return 0;
}
