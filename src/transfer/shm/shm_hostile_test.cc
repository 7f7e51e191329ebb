// The shm target against a hostile same-host source built on the real wire (shm_wire.h): it
// answers the handshake, then hands out a descriptor that does not back the size it announces.
// The target used to map the announced size and die of SIGBUS in its copy threads.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transfer/shm/shm_server.h"
#include "transfer/shm/shm_wire.h"
#include "transfer/transfer_test_util.h"
#include "transfer/transport.h"

namespace ferry::internal {
namespace {

using ::ferry::testing::Buffer;
using ::ferry::testing::Running;
using ::testing::HasSubstr;

constexpr uint64_t kAnnounced = 4 << 20;

// Serves one connection: accepts any Hello, answers every OpenRequest with `announced` bytes
// and `memfd`.
class LyingSource {
 public:
  LyingSource(uint64_t real_size, bool seal_shrink) {
    memfd_ = Fd(::memfd_create("lying", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    EXPECT_TRUE(memfd_.valid());
    EXPECT_EQ(::ftruncate(memfd_.get(), static_cast<off_t>(real_size)), 0);
    if (seal_shrink) EXPECT_EQ(::fcntl(memfd_.get(), F_ADD_SEALS, F_SEAL_SHRINK), 0);
    name_ = "ferry-shm-lying-" + std::to_string(::getpid()) + "-" + std::to_string(real_size);
    auto listener = shm::ListenAbstract(name_);
    EXPECT_TRUE(listener.ok()) << listener.status();
    listener_ = std::move(*listener);
    thread_ = std::thread([this] { Serve(); });
  }
  ~LyingSource() {
    ::shutdown(listener_.get(), SHUT_RDWR);
    thread_.join();
  }

  ferry::v1::TransferBlob Blob() const {
    ferry::v1::TransferBlob blob;
    blob.set_version(1);
    blob.mutable_shm()->set_socket_name(name_);
    blob.mutable_shm()->set_secret(std::string(shm::kSecretBytes, 'k'));
    auto* r = blob.add_regions();
    r->set_id(0);
    r->set_size(kAnnounced);
    r->set_shm_served(true);
    return blob;
  }

 private:
  void Serve() {
    conn_ = Fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn_.valid()) return;
    int err = 0;
    shm::Hello hello{};
    if (shm::RecvPacket(conn_.get(), &hello, sizeof(hello), absl::Now() + absl::Seconds(10),
                        nullptr, &err) != shm::Recv::kOk) {
      return;
    }
    shm::Reply ok{};
    ok.type = shm::kHelloReply;
    shm::SendPacket(conn_.get(), &ok, sizeof(ok));
    shm::OpenRequest open{};
    while (shm::RecvPacket(conn_.get(), &open, sizeof(open), absl::Now() + absl::Seconds(10),
                           nullptr, &err) == shm::Recv::kOk) {
      shm::Reply r{};
      r.type = shm::kOpenReply;
      r.region = open.region;
      r.size = kAnnounced;
      shm::SendPacket(conn_.get(), &r, sizeof(r), memfd_.get());
    }
  }

  Fd memfd_;
  std::string name_;
  Fd listener_;
  Fd conn_;
  std::thread thread_;
};

Status ReadFrom(const LyingSource& source) {
  TransferEngineOptions o;
  o.enable_ucx = o.enable_tcp = false;
  auto target = CreateShmTransport(o);
  EXPECT_TRUE(target.ok()) << target.status();
  if (!target.ok()) return target.status();
  auto conn = (*target)->Connect(source.Blob(), "lying source over shm");
  EXPECT_TRUE(conn.ok()) << conn.status();
  if (!conn.ok()) return conn.status();
  Buffer dst(kAnnounced);
  Running run;
  return run.Read(**conn, {ReadOp{0, 0, dst.data(), kAnnounced}});
}

TEST(ShmHostileSourceTest, ADescriptorSmallerThanAnnouncedIsRefusedNotMapped) {
  LyingSource source(/*real_size=*/4096, /*seal_shrink=*/true);
  const Status s = ReadFrom(source);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("does not back the 4194304 bytes it announced"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("read from another one"));
}

TEST(ShmHostileSourceTest, ADescriptorTheSourceCouldStillShrinkIsRefused) {
  LyingSource source(/*real_size=*/kAnnounced, /*seal_shrink=*/false);
  const Status s = ReadFrom(source);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("not sealed against shrinking"));
}

// Whether the server closed `fd` within `timeout`.
bool ClosedWithin(int fd, absl::Duration timeout) {
  char c;
  int err = 0;
  const shm::Recv r = shm::RecvPacket(fd, &c, 1, absl::Now() + timeout, nullptr, &err);
  return r == shm::Recv::kEof || r == shm::Recv::kError;
}

// Local connections that never authenticate are bounded and closed after the handshake timeout;
// one past the bound is closed at once (each used to be kept for 10 s, with no bound).
TEST(ShmServerFloodTest, IdleConnectionsAreBoundedAndClosed) {
  shm::ShmServerLimits limits;
  limits.max_pending = 4;
  limits.handshake_timeout = absl::Milliseconds(300);
  const std::string name = "ferry-shm-flood-" + std::to_string(::getpid());
  auto server = shm::ShmServer::Create(name, std::string(shm::kSecretBytes, 's'), limits);
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<Fd> idle;
  for (int i = 0; i < 4; ++i) {
    auto fd = shm::ConnectAbstract(name);
    ASSERT_TRUE(fd.ok()) << fd.status();
    idle.push_back(std::move(*fd));
  }
  auto extra = shm::ConnectAbstract(name);
  ASSERT_TRUE(extra.ok()) << extra.status();
  EXPECT_TRUE(ClosedWithin(extra->get(), absl::Seconds(5)));
  for (Fd& fd : idle) EXPECT_TRUE(ClosedWithin(fd.get(), absl::Seconds(5)));
}

}  // namespace
}  // namespace ferry::internal
