// The shm transport through the Transport interface (no engine), with real memfds, a real
// abstract unix socket and a source in a forked child process: exact bytes for any op mix and
// thread count, the handshake, read-only descriptors, unknown and removed regions,
// cancellation, deadlines, Stop() and a killed source.
#include "transfer/shm/shm_transport.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transfer/shm/shm_wire.h"
#include "transfer/transfer_test_util.h"
#include "transfer/transport.h"

namespace ferry::internal {
namespace {

using ::ferry::testing::Buffer;
using ::ferry::testing::FillPattern;
using ::ferry::testing::FirstMismatch;
using ::ferry::testing::Running;
using ::testing::HasSubstr;

constexpr char kDesc[] = "test source (0123456789abcdef) at localhost over shm";

std::string Msg(const Status& s) { return std::string(s.message()); }

TransferEngineOptions Options(int threads, uint64_t chunk_bytes = 64 << 10) {
  TransferEngineOptions o;
  o.shm_copy_threads = threads;
  o.chunk_bytes = chunk_bytes;
  return o;
}

// A shm source transport in a forked child: region 0 of `bytes` (memfd, pattern-filled) and
// region 1 of 4096 bytes of caller memory (not served). Exits when destroyed.
// REQUIRES: no other thread runs in this process (fork).
class ChildShmSource {
 public:
  explicit ChildShmSource(uint64_t bytes) {
    int blob_pipe[2], control_pipe[2];
    EXPECT_EQ(::pipe(blob_pipe), 0);
    EXPECT_EQ(::pipe(control_pipe), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(blob_pipe[0]);
      ::close(control_pipe[1]);
      auto transport = CreateShmTransport(Options(1));
      if (!transport.ok()) ::_exit(2);
      auto allocation = (*transport)->Allocate(bytes, /*prefault=*/true);
      if (!allocation.ok()) ::_exit(3);
      FillPattern(allocation->data, bytes);
      if (!(*transport)
               ->AddRegion(0, allocation->data, bytes, MemoryKind::kHost, &*allocation)
               .ok()) {
        ::_exit(4);
      }
      static char caller_memory[4096];
      if (!(*transport)->AddRegion(1, caller_memory, 4096, MemoryKind::kHost, nullptr).ok()) {
        ::_exit(5);
      }
      ferry::v1::TransferBlob blob;
      blob.add_regions()->set_id(0);
      blob.add_regions()->set_id(1);
      (*transport)->Describe(&blob);
      std::string bytes_out = blob.SerializeAsString();
      uint32_t len = bytes_out.size();
      if (::write(blob_pipe[1], &len, 4) != 4 ||
          ::write(blob_pipe[1], bytes_out.data(), len) != static_cast<ssize_t>(len)) {
        ::_exit(6);
      }
      char c;
      while (::read(control_pipe[0], &c, 1) > 0) {
      }
      ::_exit(0);
    }
    ::close(blob_pipe[1]);
    ::close(control_pipe[0]);
    control_fd_ = control_pipe[1];
    uint32_t len = 0;
    EXPECT_EQ(::read(blob_pipe[0], &len, 4), 4);
    std::string bytes_in(len, '\0');
    size_t got = 0;
    while (got < len) {
      ssize_t n = ::read(blob_pipe[0], bytes_in.data() + got, len - got);
      if (n <= 0) break;
      got += n;
    }
    ::close(blob_pipe[0]);
    EXPECT_TRUE(blob_.ParseFromString(bytes_in));
  }
  ~ChildShmSource() {
    ::close(control_fd_);
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
  }
  const ferry::v1::TransferBlob& blob() const { return blob_; }
  // Kills the child and reaps it: a reaped process has closed all its descriptors.
  void KillAndReap() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int control_fd_ = -1;
  ferry::v1::TransferBlob blob_;
};

// Speaks the control protocol by hand: authenticates and returns the descriptor the source
// hands out for `region` (invalid on any failure, with a test failure recorded).
Fd OpenRaw(const ferry::v1::TransferBlob& blob, uint32_t region, uint64_t* size) {
  auto control = shm::ConnectAbstract(blob.shm().socket_name());
  EXPECT_TRUE(control.ok()) << control.status();
  if (!control.ok()) return Fd();
  shm::Hello hello{};
  std::memcpy(hello.magic, shm::kMagic, sizeof(shm::kMagic));
  hello.version = shm::kVersion;
  std::memcpy(hello.secret, blob.shm().secret().data(), shm::kSecretBytes);
  EXPECT_TRUE(shm::SendPacket(control->get(), &hello, sizeof(hello)));
  shm::Reply reply{};
  int err = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  EXPECT_EQ(shm::RecvPacket(control->get(), &reply, sizeof(reply), deadline, nullptr, &err),
            shm::Recv::kOk);
  EXPECT_EQ(reply.code, 0u);
  const shm::OpenRequest request{region, 0};
  EXPECT_TRUE(shm::SendPacket(control->get(), &request, sizeof(request)));
  Fd fd;
  EXPECT_EQ(shm::RecvPacket(control->get(), &reply, sizeof(reply), deadline, &fd, &err),
            shm::Recv::kOk);
  EXPECT_EQ(reply.code, 0u) << reply.message;
  *size = reply.size;
  return fd;
}

class ShmChildTest : public ::testing::TestWithParam<int> {};

TEST_P(ShmChildTest, ExactBytesManyOpsFromAChildProcess) {
  constexpr uint64_t kSize = 24 << 20;
  ChildShmSource child(kSize);
  ASSERT_EQ(child.blob().regions_size(), 2);
  EXPECT_TRUE(child.blob().regions(0).shm_served());
  EXPECT_FALSE(child.blob().regions(1).shm_served());
  EXPECT_THAT(child.blob().shm().socket_name(), ::testing::StartsWith("ferry-shm-"));
  EXPECT_EQ(child.blob().shm().secret().size(), 32u);

  auto target = CreateShmTransport(Options(GetParam()));
  ASSERT_TRUE(target.ok()) << target.status();
  auto conn = (*target)->Connect(child.blob(), kDesc);
  ASSERT_TRUE(conn.ok()) << conn.status();

  Buffer dst(kSize + (1 << 20));
  std::mt19937_64 rng(GetParam());
  std::vector<ReadOp> ops;
  uint64_t cursor = 0;
  auto add = [&](uint64_t off, uint64_t len) {
    ops.push_back(ReadOp{0, off, len ? dst.data() + cursor : nullptr, len});
    cursor += len;
  };
  add(0, 0);
  add(1, (1 << 20) + 3);  // unaligned, spans 17 chunks of 64 KiB
  add(kSize, 0);
  for (int i = 0; i < 300; ++i) {
    const uint64_t len = rng() % (40 << 10);
    add(rng() % (kSize - len), len);
  }
  add(kSize - (3 << 20) - 5, (3 << 20) + 5);  // ends at the region's last byte
  Running run;
  Status s = run.Read(**conn, ops);
  ASSERT_TRUE(s.ok()) << s;
  uint64_t total = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    total += ops[i].length;
    ASSERT_EQ(FirstMismatch(ops[i].local, ops[i].length, ops[i].remote_offset), -1) << i;
  }
  EXPECT_EQ(run.bytes_done.load(), total);

  // 10,000 small ops, served from the mapping made above.
  std::vector<char> small(10000 * 100);
  std::vector<ReadOp> many;
  for (uint64_t i = 0; i < 10000; ++i) {
    many.push_back(ReadOp{0, (i * 104729) % (kSize - 100), small.data() + i * 100, 100});
  }
  Running run2;
  ASSERT_TRUE(run2.Read(**conn, many).ok());
  for (size_t i = 0; i < many.size(); ++i) {
    ASSERT_EQ(FirstMismatch(many[i].local, 100, many[i].remote_offset), -1) << i;
  }
  EXPECT_EQ(run2.bytes_done.load(), 1000000u);

  // Caller memory in the source is not served.
  std::vector<char> one(16);
  Running run3;
  s = run3.Read(**conn, {ReadOp{1, 0, one.data(), 16}});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(s), HasSubstr("the source has no region 1 (removed, or never allocated by its "
                                "shm transport)"));
  EXPECT_THAT(Msg(s), HasSubstr(kDesc));
  (*conn)->Close();
  (*target)->Stop();
}

INSTANTIATE_TEST_SUITE_P(CopyThreads, ShmChildTest, ::testing::Values(1, 2, 4));

TEST(ShmKilledSourceTest, MappedPagesOutliveTheSourceButTheNextReadFails) {
  constexpr uint64_t kSize = 4 << 20;
  ChildShmSource child(kSize);
  uint64_t size = 0;
  Fd raw = OpenRaw(child.blob(), 0, &size);
  ASSERT_TRUE(raw.valid());
  void* mapped = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, raw.get(), 0);
  ASSERT_NE(mapped, MAP_FAILED);
  auto target = CreateShmTransport(Options(2));
  ASSERT_TRUE(target.ok());
  auto conn = (*target)->Connect(child.blob(), kDesc);
  ASSERT_TRUE(conn.ok()) << conn.status();
  Buffer dst(kSize);
  Running run;
  ASSERT_TRUE(run.Read(**conn, {ReadOp{0, 0, dst.data(), kSize}}).ok());
  child.KillAndReap();
  // The closed control connection is what the target sees of the death.
  Running run2;
  Status s = run2.Read(**conn, {ReadOp{0, 0, dst.data(), kSize}});
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(Msg(s), HasSubstr("closed the control connection"));
  EXPECT_THAT(Msg(s), HasSubstr("first unfinished range: region 0 [0, 65536)"));
  // A mapping made before the death still holds the source's bytes: a copy that was running
  // when the source died completes with the data.
  EXPECT_EQ(FirstMismatch(mapped, size, 0), -1);
  ::munmap(mapped, size);
  s = run2.Read(**conn, {ReadOp{0, 0, dst.data(), 10}});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Msg(s), HasSubstr("broken by an earlier failure; reconnect"));
}

// Source and target transports in this process.
class ShmTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto source = CreateShmTransport(Options(2));
    ASSERT_TRUE(source.ok()) << source.status();
    source_ = std::move(*source);
    auto allocation = source_->Allocate(kSize, /*prefault=*/true);
    ASSERT_TRUE(allocation.ok()) << allocation.status();
    allocation_ = *allocation;
    FillPattern(allocation_.data, kSize);
    ASSERT_TRUE(
        source_->AddRegion(0, allocation_.data, kSize, MemoryKind::kHost, &allocation_).ok());
    blob_.add_regions()->set_id(0);
    source_->Describe(&blob_);
    auto target = CreateShmTransport(Options(2));
    ASSERT_TRUE(target.ok()) << target.status();
    target_ = std::move(*target);
  }
  void TearDown() override {
    if (source_ != nullptr) {
      source_->RemoveRegion(0);
      source_->Stop();
      source_->Free(allocation_);
    }
  }

  std::unique_ptr<PeerConnection> MustConnect() {
    auto conn = target_->Connect(blob_, kDesc);
    EXPECT_TRUE(conn.ok()) << conn.status();
    return conn.ok() ? std::move(*conn) : nullptr;
  }

  static constexpr uint64_t kSize = 8 << 20;
  std::unique_ptr<Transport> source_;
  std::unique_ptr<Transport> target_;
  Allocation allocation_;
  ferry::v1::TransferBlob blob_;
};

TEST_F(ShmTransportTest, WrongSecretIsRefused) {
  ferry::v1::TransferBlob bad = blob_;
  std::string secret = bad.shm().secret();
  secret[5] ^= 1;
  bad.mutable_shm()->set_secret(secret);
  auto conn = target_->Connect(bad, kDesc);
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(conn.status()),
              HasSubstr(absl::StrCat("shm handshake with ", kDesc, " refused: wrong secret")));
  bad.mutable_shm()->set_secret("short");
  conn = target_->Connect(bad, kDesc);
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(conn.status()), HasSubstr("5-byte shm secret; expected 32"));
}

TEST_F(ShmTransportTest, UnreachableSocketIsUnavailableNamingIt) {
  ferry::v1::TransferBlob bad = blob_;
  bad.mutable_shm()->set_socket_name("ferry-shm-nobody-listens-here");
  auto conn = target_->Connect(bad, kDesc);
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Msg(conn.status()),
              HasSubstr("connect to abstract unix socket @ferry-shm-nobody-listens-here failed: "
                        "Connection refused"));
  bad.clear_shm();
  conn = target_->Connect(bad, kDesc);
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kInvalidArgument);
}

// The descriptor a target receives cannot be used to change the source's memory: it is
// read-only, and the memfd is sealed against any new writable mapping or write, so even a
// read-write reopen through /proc fails.
TEST_F(ShmTransportTest, TheReceivedDescriptorCannotWrite) {
  uint64_t size = 0;
  Fd fd = OpenRaw(blob_, 0, &size);
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(size, kSize);
  EXPECT_EQ(::fcntl(fd.get(), F_GETFL) & O_ACCMODE, O_RDONLY);

  errno = 0;
  EXPECT_EQ(::mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0), MAP_FAILED);
  EXPECT_EQ(errno, EACCES);
  EXPECT_EQ(::write(fd.get(), "x", 1), -1);
  EXPECT_EQ(errno, EBADF);

  Fd reopened(::open(absl::StrCat("/proc/self/fd/", fd.get()).c_str(), O_RDWR));
  if (reopened.valid()) {
    errno = 0;
    EXPECT_EQ(::mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, reopened.get(), 0),
              MAP_FAILED);
    EXPECT_EQ(errno, EPERM);
    EXPECT_EQ(::pwrite(reopened.get(), "x", 1, 0), -1);
    EXPECT_EQ(errno, EPERM);
  }
  // A read-only mapping sees the source's bytes.
  void* p = ::mmap(nullptr, kSize, PROT_READ, MAP_SHARED, fd.get(), 0);
  ASSERT_NE(p, MAP_FAILED);
  EXPECT_EQ(FirstMismatch(p, kSize, 0), -1);
  ::munmap(p, kSize);
}

TEST_F(ShmTransportTest, UnknownRegionIsNotFoundNamingIt) {
  auto conn = MustConnect();
  ASSERT_NE(conn, nullptr);
  std::vector<char> dst(100);
  Running run;
  Status s = run.Read(*conn, {ReadOp{0, 0, dst.data(), 10}, ReadOp{7, 5, dst.data(), 10}});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(s), HasSubstr(absl::StrCat("shm read from ", kDesc,
                                             " failed: the source has no region 7")));
  EXPECT_THAT(Msg(s), HasSubstr("first unfinished range: region 0 [0, 10)"));
  EXPECT_EQ(run.bytes_done.load(), 0u);
  // The connection stays usable.
  ASSERT_TRUE(run.Read(*conn, {ReadOp{0, 3, dst.data(), 100}}).ok());
  EXPECT_EQ(FirstMismatch(dst.data(), 100, 3), -1);
}

// A read over many regions opens them with requests in flight together (kOpenWindow at a time),
// not one round trip each. A region the source lacks, in the middle, fails only itself: the
// others are mapped, and the connection stays in step with the source.
TEST_F(ShmTransportTest, ManyRegionsOpenTogetherAndAMissingOneFailsOnlyItself) {
  constexpr int kRegions = 3 * shm::kOpenWindow;
  constexpr uint64_t kBytes = 8192;
  std::vector<Allocation> allocations;
  for (uint32_t id = 1; id <= kRegions; ++id) {
    auto allocation = source_->Allocate(kBytes, /*prefault=*/true);
    ASSERT_TRUE(allocation.ok()) << allocation.status();
    allocations.push_back(*allocation);
    // Each region holds its own stretch of the pattern, so swapped regions do not compare equal.
    auto* bytes = static_cast<uint8_t*>(allocation->data);
    for (uint64_t i = 0; i < kBytes; ++i) bytes[i] = ::ferry::testing::PatternByte(id * kBytes + i);
    ASSERT_TRUE(
        source_->AddRegion(id, allocation->data, kBytes, MemoryKind::kHost, &*allocation).ok());
    blob_.add_regions()->set_id(id);
  }
  source_->Describe(&blob_);
  auto conn = MustConnect();
  ASSERT_NE(conn, nullptr);
  std::vector<char> dst(kRegions * kBytes);
  std::vector<ReadOp> ops;
  for (uint32_t id = 1; id <= kRegions; ++id) {
    ops.push_back(ReadOp{id, 0, dst.data() + (id - 1) * kBytes, kBytes});
  }
  std::vector<ReadOp> with_missing = ops;
  with_missing.insert(with_missing.begin() + kRegions / 2, ReadOp{5000, 0, dst.data(), 16});
  Running run;
  Status s = run.Read(*conn, with_missing);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(Msg(s), HasSubstr("the source has no region 5000"));
  // In step: the same connection reads every other region.
  ASSERT_TRUE(run.Read(*conn, ops).ok());
  for (uint32_t id = 1; id <= kRegions; ++id) {
    EXPECT_EQ(FirstMismatch(dst.data() + (id - 1) * kBytes, kBytes, id * kBytes), -1)
        << "region " << id;
  }
  conn.reset();
  for (uint32_t id = 1; id <= kRegions; ++id) {
    source_->RemoveRegion(id);
    source_->Free(allocations[id - 1]);
  }
}

TEST_F(ShmTransportTest, CancelledAndDeadlineStopBetweenChunks) {
  auto conn = MustConnect();
  ASSERT_NE(conn, nullptr);
  Buffer dst(kSize);
  Running cancelled;
  cancelled.cancelled = true;
  Status s = cancelled.Read(*conn, {ReadOp{0, 0, dst.data(), kSize}}, kDesc);
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(Msg(s), HasSubstr(absl::StrCat("read from ", kDesc,
                                             " cancelled; first unfinished range: region 0 "
                                             "[0, 65536)")));
  EXPECT_EQ(cancelled.bytes_done.load(), 0u);

  Running late;
  late.deadline = absl::Now() - absl::Seconds(1);
  s = late.Read(*conn, {ReadOp{0, 0, dst.data(), kSize}});
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(Msg(s), HasSubstr("passed its deadline (0); first unfinished range: region 0 [0, "));

  // Cancelled midway by another thread: stops with a partial count, at a chunk boundary.
  Running midway;
  std::thread canceller([&] {
    while (midway.bytes_done.load() == 0) std::this_thread::yield();
    midway.cancelled = true;
  });
  std::vector<ReadOp> ops;
  for (int i = 0; i < 64; ++i) ops.push_back(ReadOp{0, 0, dst.data(), kSize});
  s = midway.Read(*conn, ops);
  canceller.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_GT(midway.bytes_done.load(), 0u);
  EXPECT_LT(midway.bytes_done.load(), 64 * kSize);
  EXPECT_EQ(midway.bytes_done.load() % (64 << 10), 0u);
  // Cancellation does not break an shm connection.
  Running again;
  ASSERT_TRUE(again.Read(*conn, {ReadOp{0, 0, dst.data(), kSize}}).ok());
  EXPECT_EQ(FirstMismatch(dst.data(), kSize, 0), -1);
}

TEST_F(ShmTransportTest, RemovedRegionIsRefusedFromTheNextRead) {
  auto conn = MustConnect();
  ASSERT_NE(conn, nullptr);
  std::vector<char> dst(4096);
  Running run;
  ASSERT_TRUE(run.Read(*conn, {ReadOp{0, 0, dst.data(), 4096}}).ok());
  source_->RemoveRegion(0);
  ferry::v1::TransferBlob now;
  now.add_regions()->set_id(0);
  source_->Describe(&now);
  EXPECT_FALSE(now.regions(0).shm_served());
  Status s = run.Read(*conn, {ReadOp{0, 0, dst.data(), 4096}});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(s), HasSubstr("the source has no region 0 (removed after the blob was "
                                "exported); first unfinished range: region 0 [0, 4096)"));
  // A new connection is refused the region by the source itself.
  auto fresh = MustConnect();
  ASSERT_NE(fresh, nullptr);
  s = run.Read(*fresh, {ReadOp{0, 0, dst.data(), 4096}});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(s), HasSubstr("the source has no region 0 (removed, or never allocated"));
}

TEST_F(ShmTransportTest, StopWithConnectedPeersThenCloseIsIdempotent) {
  auto conn = MustConnect();
  ASSERT_NE(conn, nullptr);
  std::vector<char> dst(1000);
  Running run;
  ASSERT_TRUE(run.Read(*conn, {ReadOp{0, 0, dst.data(), dst.size()}}).ok());
  source_->Stop();
  source_->Stop();
  Status s = run.Read(*conn, {ReadOp{0, 0, dst.data(), dst.size()}});
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Msg(s), HasSubstr(kDesc));
  EXPECT_THAT(Msg(s), HasSubstr("region 0 [0, 1000)"));
  // New connections are refused once stopped.
  auto late = target_->Connect(blob_, kDesc);
  EXPECT_EQ(late.status().code(), absl::StatusCode::kUnavailable);
  conn->Close();
  conn->Close();
  s = run.Read(*conn, {ReadOp{0, 0, dst.data(), 10}});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Msg(s), HasSubstr("is closed; Connect again"));
}

TEST_F(ShmTransportTest, CloseDuringAReadStopsIt) {
  auto conn = MustConnect();
  ASSERT_NE(conn, nullptr);
  Buffer dst(kSize);
  Running run;
  std::vector<ReadOp> ops;
  for (int i = 0; i < 256; ++i) ops.push_back(ReadOp{0, 0, dst.data(), kSize});
  Status s;
  std::thread reader([&] { s = run.Read(*conn, ops); });
  while (run.bytes_done.load() == 0) std::this_thread::yield();
  conn->Close();  // waits for the copy to stop, then unmaps
  reader.join();
  if (s.ok()) GTEST_SKIP() << "2 GiB copied before Close() took effect";
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Msg(s), HasSubstr("the connection was closed"));
}

}  // namespace
}  // namespace ferry::internal
