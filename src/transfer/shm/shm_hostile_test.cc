// The shm target against a hostile same-host source built on the real wire (shm_wire.h): it
// answers the handshake, then hands out a descriptor that does not back the size it announces.
// The target used to map the announced size and die of SIGBUS in its copy threads.
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <set>
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

// A server with region 1 exported (records far larger than a socket buffer, one descriptor)
// and region 2 a plain memfd region, for the stalled-target tests.
struct ExportingServer {
  explicit ExportingServer(absl::Duration handshake_timeout) {
    shm::ShmServerLimits limits;
    limits.handshake_timeout = handshake_timeout;
    auto created = shm::ShmServer::CreateRandom("ferry-shm-stall", limits);
    EXPECT_TRUE(created.ok()) << created.status();
    server = std::move(*created);
    memfd = Fd(::memfd_create("ferry-stall-test", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    EXPECT_EQ(::ftruncate(memfd.get(), 4096), 0);
    EXPECT_EQ(::fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK), 0);
    shm::RegionExport e;
    e.size = 4096;
    e.record_count = 1;
    e.records = std::string(kRecordBytes, 'r');
    e.descriptors = [fd = memfd.get()]() -> StatusOr<std::vector<Fd>> {
      std::vector<Fd> fds;
      fds.push_back(Fd(::dup(fd)));
      return fds;
    };
    EXPECT_TRUE(server->AddExport(1, std::move(e)).ok());
    EXPECT_TRUE(server->AddRegion(2, memfd.get(), 4096).ok());
  }
  // A target that greeted and asked for the export, and took only its reply header: the
  // server holds the rest for it.
  Fd StalledTarget() {
    auto control = shm::Greet(server->socket_name(), server->secret(), "shm", "stalled target");
    EXPECT_TRUE(control.ok()) << control.status();
    const shm::OpenRequest open{1, shm::kOpenExport};
    EXPECT_TRUE(shm::SendPacket(control->get(), &open, sizeof(open)));
    shm::Reply reply{};
    int err = 0;
    EXPECT_EQ(shm::RecvPacket(control->get(), &reply, sizeof(reply),
                              absl::Now() + shm::kControlTimeout, nullptr, &err),
              shm::Recv::kOk);
    EXPECT_EQ(reply.type, shm::kExportReply);
    return std::move(*control);
  }
  static constexpr size_t kRecordBytes = 16 << 20;
  Fd memfd;
  std::unique_ptr<shm::ShmServer> server;
};

// One target that asks for an export and stops reading holds up nobody else: another target
// greets and opens a region while it waits. The server used to send an export's packets in one
// go from its only thread, so every other target waited up to the handshake timeout (here
// longer than a target waits for its handshake, so the second Greet would fail).
TEST(ShmServerStallTest, ATargetThatStopsReadingAnExportHoldsUpNobodyElse) {
  ExportingServer s(absl::Minutes(5));
  Fd stalled = s.StalledTarget();
  auto other = shm::Greet(s.server->socket_name(), s.server->secret(), "shm", "second target");
  ASSERT_TRUE(other.ok()) << other.status();
  std::set<uint32_t> removed;
  Fd region;
  auto reply = shm::RequestRegion(other->get(), 2, shm::kOpenMemfd, shm::kOpenReply,
                                  absl::Now() + shm::kControlTimeout, &removed, &region);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->code, 0u);
  EXPECT_TRUE(region.valid());
}

// A target that does not take an export within the handshake timeout is cut off: its stream
// ends before the export's bytes do (it does not wait forever, nor get a partial export as
// whole).
TEST(ShmServerStallTest, ATargetThatStopsReadingAnExportIsCutOff) {
  ExportingServer s(absl::Milliseconds(200));
  Fd stalled = s.StalledTarget();
  // Not reading, wait for the server to hang up (poll reports it with the unread packets).
  pollfd pfd{stalled.get(), POLLRDHUP, 0};
  ASSERT_EQ(::poll(&pfd, 1, 30'000), 1) << "the server never closed the stalled connection";
  EXPECT_NE(pfd.revents & (POLLRDHUP | POLLHUP), 0);
  // What it had queued before it gave up is less than the export.
  std::vector<char> packet(shm::kMaxBytesPerPacket + 1);
  size_t bytes = 0;
  for (;;) {
    const ssize_t n = ::recv(stalled.get(), packet.data(), packet.size(), MSG_DONTWAIT);
    if (n <= 0) break;
    bytes += static_cast<size_t>(n);
  }
  EXPECT_LT(bytes, ExportingServer::kRecordBytes);
}

// A removal notice for a target still taking an export is queued behind it, never sent between
// its packets (which the target would read as a broken export).
TEST(ShmServerStallTest, ARemovalNoticeWaitsBehindAnExportBeingSent) {
  ExportingServer s(absl::Minutes(5));
  Fd stalled = s.StalledTarget();
  std::thread remove([&] { s.server->RemoveRegion(2); });
  // The export arrives whole (records, then its one descriptor), and only then the notice.
  auto records = shm::RecvBytes(stalled.get(), ExportingServer::kRecordBytes,
                                ExportingServer::kRecordBytes, absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(records.ok()) << records.status();
  EXPECT_EQ(*records, std::string(ExportingServer::kRecordBytes, 'r'));
  auto fds = shm::RecvFds(stalled.get(), 1, absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(fds.ok()) << fds.status();
  remove.join();
  shm::Reply notice{};
  int err = 0;
  ASSERT_EQ(shm::RecvPacket(stalled.get(), &notice, sizeof(notice),
                            absl::Now() + shm::kControlTimeout, nullptr, &err),
            shm::Recv::kOk);
  EXPECT_EQ(notice.type, shm::kRegionRemoved);
  EXPECT_EQ(notice.region, 2u);
}

}  // namespace
}  // namespace ferry::internal
