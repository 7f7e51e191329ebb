// libFuzzer target: the source side of the shm control protocol, on a real abstract unix
// socket. One ShmServer serves region 0 (a memfd). Each input is what a local peer sends on a
// fresh connection, as packets: the first byte picks a good or hostile Hello (the next 48 bytes),
// then the input is cut into packets of sizes it names (one byte each, then that many bytes).
// The peer reads every reply until the source closes. Invariants: a descriptor comes only with
// an OK reply to an open of region 0, and it is read-only.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "transfer/shm/shm_server.h"
#include "transfer/shm/shm_wire.h"

namespace {

using namespace ferry::internal;       // NOLINT: a fuzzer's one translation unit
using namespace ferry::internal::shm;  // NOLINT

const std::string kSecret(kSecretBytes, 's');
constexpr uint64_t kRegion = 1 << 16;

const std::string& Name() {
  static const std::string* name = [] {
    auto* n = new std::string("ferry-shm-fuzz-" + std::to_string(::getpid()));
    Fd memfd(::memfd_create("fuzz", MFD_CLOEXEC));
    if (!memfd.valid() || ::ftruncate(memfd.get(), kRegion) != 0) __builtin_trap();
    auto server = ShmServer::Create(*n, kSecret);
    if (!server.ok() || !(*server)->AddRegion(0, memfd.Release(), kRegion).ok()) {
      __builtin_trap();
    }
    server->release();  // lives for the whole run
    return n;
  }();
  return *name;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto fd = ConnectAbstract(Name());
  if (!fd.ok()) __builtin_trap();  // the source must keep accepting
  size_t at = 0;
  Hello hello{};
  std::memcpy(hello.magic, kMagic, sizeof(kMagic));
  hello.version = kVersion;
  std::memcpy(hello.secret, kSecret.data(), kSecretBytes);
  if (size > 0 && (data[0] & 1) != 0 && size >= 1 + sizeof(Hello)) {
    std::memcpy(&hello, data + 1, sizeof(Hello));
    at = 1 + sizeof(Hello);
  } else if (size > 0) {
    at = 1;
  }
  SendPacket(fd->get(), &hello, sizeof(hello));
  std::vector<std::vector<uint8_t>> packets;
  while (at < size) {
    const size_t len = std::min<size_t>(data[at], size - at - 1);
    packets.emplace_back(data + at + 1, data + at + 1 + len);
    at += 1 + len;
  }
  for (const auto& p : packets) {
    if (!SendPacket(fd->get(), p.data(), p.size())) break;
  }
  ::shutdown(fd->get(), SHUT_WR);
  for (;;) {
    Reply reply{};
    Fd passed;
    int err = 0;
    const Recv got =
        RecvPacket(fd->get(), &reply, sizeof(reply), absl::Now() + absl::Seconds(5), &passed, &err);
    if (got != Recv::kOk) break;
    if (passed.valid()) {
      if (reply.type != kOpenReply || reply.code != 0 || reply.region != 0) __builtin_trap();
      if ((::fcntl(passed.get(), F_GETFL) & O_ACCMODE) != O_RDONLY) __builtin_trap();
    }
  }
  return 0;
}
