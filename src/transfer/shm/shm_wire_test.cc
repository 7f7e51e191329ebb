// Passing many descriptors over the shm control socket (CUDA IPC hands one fd per cuMemCreate
// chunk; a model can have thousands), with memfds standing in for exported device memory.
#include "transfer/shm/shm_wire.h"

#include <dirent.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"

namespace ferry::internal::shm {
namespace {

using ::testing::HasSubstr;

int OpenFdCount() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  while (readdir(d) != nullptr) ++n;
  closedir(d);
  return n;
}

struct SocketPair {
  SocketPair() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    a = Fd(sv[0]);
    b = Fd(sv[1]);
  }
  Fd a, b;
};

Fd MemfdWith(const std::string& text) {
  Fd fd(memfd_create("ferry-fd-test", MFD_CLOEXEC));
  EXPECT_TRUE(fd.valid());
  EXPECT_EQ(::write(fd.get(), text.data(), text.size()), static_cast<ssize_t>(text.size()));
  return fd;
}

std::string ContentOf(int fd) {
  char buf[64] = {};
  const ssize_t n = ::pread(fd, buf, sizeof(buf), 0);
  return n > 0 ? std::string(buf, n) : std::string();
}

TEST(ShmWireFdsTest, MoreThanOnePacketsWorthOfDescriptorsArriveInOrder) {
  constexpr size_t kCount = 3 * kMaxFdsPerPacket + 11;  // 770: four packets
  SocketPair sp;
  {
    std::vector<Fd> memfds;
    std::vector<int> raw;
    for (size_t i = 0; i < kCount; ++i) {
      memfds.push_back(MemfdWith(absl::StrCat("chunk ", i)));
      raw.push_back(memfds.back().get());
    }
    ASSERT_TRUE(SendFds(sp.a.get(), raw, absl::Now() + absl::Seconds(10)).ok());
  }  // the sender's copies close here; the ones in flight stay alive
  auto got = RecvFds(sp.b.get(), kCount, absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), kCount);
  for (size_t i = 0; i < kCount; ++i) {
    ASSERT_EQ(ContentOf((*got)[i].get()), absl::StrCat("chunk ", i)) << i;
  }
}

TEST(ShmWireFdsTest, NoDescriptorsIsANoOp) {
  SocketPair sp;
  ASSERT_TRUE(SendFds(sp.a.get(), {}, absl::Now() + absl::Seconds(1)).ok());
  auto got = RecvFds(sp.b.get(), 0, absl::Now() + absl::Seconds(1));
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(got->empty());
}

TEST(ShmWireFdsTest, FewerDescriptorsThanAnnouncedIsDataLossAndLeaksNothing) {
  SocketPair sp;
  const int before = OpenFdCount();
  {
    Fd m = MemfdWith("x");
    ASSERT_TRUE(SendFds(sp.a.get(), {m.get(), m.get()}, absl::Now() + absl::Seconds(5)).ok());
  }
  // The receiver expects 5: the batch says total 2.
  auto got = RecvFds(sp.b.get(), 5, absl::Now() + absl::Seconds(5));
  ASSERT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(got.status().message(), HasSubstr("descriptor batch 0 is malformed"));
  EXPECT_EQ(OpenFdCount(), before);
}

TEST(ShmWireFdsTest, APacketWithoutDescriptorsIsRefused) {
  SocketPair sp;
  FdBatch forged{kFdBatch, 0, 1, 1};
  ASSERT_TRUE(SendPacket(sp.a.get(), &forged, sizeof(forged)));
  auto got = RecvFds(sp.b.get(), 1, absl::Now() + absl::Seconds(5));
  ASSERT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(got.status().message(), HasSubstr("0 descriptors attached"));
}

TEST(ShmWireFdsTest, SilentPeerIsADeadlineAndAClosedOneIsUnavailable) {
  SocketPair sp;
  auto late = RecvFds(sp.b.get(), 3, absl::Now() + absl::Milliseconds(50));
  ASSERT_EQ(late.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(late.status().message(), HasSubstr("received 0 of 3 descriptors"));
  sp.a.Reset();
  auto closed = RecvFds(sp.b.get(), 3, absl::Now() + absl::Seconds(5));
  ASSERT_EQ(closed.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(closed.status().message(), HasSubstr("the peer closed the socket"));
}

TEST(ShmWireFdsTest, SendingToAPeerThatStoppedReadingGivesUp) {
  SocketPair sp;
  Fd m = MemfdWith("x");
  Status s;
  // Fill the socket: nobody reads sp.b.
  for (int i = 0; i < 10000 && s.ok(); ++i) {
    s = SendFds(sp.a.get(), {m.get()}, absl::Now() + absl::Milliseconds(20));
  }
  ASSERT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("the peer stopped reading"));
}

// Found by shm_peer_fuzz: the target passed the status code a source put in a Reply through to
// its caller, so a hostile source could make a handshake or a read fail as Cancelled,
// DeadlineExceeded or Aborted (a paused read, to the pull), or with a code absl does not define.
TEST(ShmWireRepliesTest, ASourceCannotChooseAStatusAReadMustNotReport) {
  for (uint32_t code : {1u, 4u, 9u, 10u, 99u, 0xffffffffu}) {
    Reply r{};
    r.type = kOpenReply;
    r.code = code;
    std::memset(r.message, 'm', sizeof(r.message));  // no terminating NUL either
    const Status s = FromReply(r);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << code;
    EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("the source answered with status ", code)));
    EXPECT_THAT(s.message(), HasSubstr(std::string(sizeof(r.message), 'm')));
  }
  for (absl::StatusCode code :
       {absl::StatusCode::kNotFound, absl::StatusCode::kInternal,
        absl::StatusCode::kPermissionDenied, absl::StatusCode::kInvalidArgument}) {
    Reply r{};
    r.code = static_cast<uint32_t>(code);
    std::strcpy(r.message, "as sent");
    EXPECT_EQ(FromReply(r), Status(code, "as sent"));
  }
}

TEST(ShmWireRepliesTest, AHandshakeRefusedWithAForeignCodeIsDataLoss) {
  const std::string name = absl::StrCat("ferry-shm-wire-test-", ::getpid());
  auto listener = ListenAbstract(name);
  ASSERT_TRUE(listener.ok()) << listener.status();
  std::thread source([&] {
    Fd conn(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
    Hello hello{};
    Fd none;
    int err = 0;
    RecvPacket(conn.get(), &hello, sizeof(hello), absl::Now() + absl::Seconds(5), &none, &err);
    Reply r{};
    r.type = kHelloReply;
    r.code = static_cast<uint32_t>(absl::StatusCode::kCancelled);
    SendPacket(conn.get(), &r, sizeof(r));
  });
  auto greeted = Greet(name, std::string(kSecretBytes, 's'), "shm", "test source");
  source.join();
  ASSERT_EQ(greeted.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(greeted.status().message(), HasSubstr("refused: protocol error"));
}

}  // namespace
}  // namespace ferry::internal::shm
