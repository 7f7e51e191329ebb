// Tests of the UCX transport through the Transport interface: the source runs in a real child
// process (this binary re-executed, so no UCX state is inherited across fork), the target here.
// UCX runs over shared memory, restricted to the loopback device.
#include "transfer/ucx/ucx_transport.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transfer/transfer_test_util.h"
#include "transfer/transport.h"

namespace ferry::internal {
namespace {

using ::testing::HasSubstr;

constexpr char kChildEnv[] = "FERRY_UCX_TEST_CHILD";

// The byte at `offset` of every source region.
uint8_t Pattern(uint64_t offset) {
  const uint64_t word = (offset / 8) * 0x9E3779B97F4A7C15ull;
  return static_cast<uint8_t>(word >> (8 * (offset % 8)));
}

void FillPattern(uint8_t* p, uint64_t size) {
  for (uint64_t w = 0; w < size / 8; ++w) {
    const uint64_t v = w * 0x9E3779B97F4A7C15ull;
    std::memcpy(p + 8 * w, &v, 8);
  }
  for (uint64_t i = size / 8 * 8; i < size; ++i) p[i] = Pattern(i);
}

// Index of the first byte of `p` that differs from the source pattern at `remote_offset`, or -1.
int64_t FirstMismatch(const uint8_t* p, uint64_t remote_offset, uint64_t length) {
  for (uint64_t i = 0; i < length; ++i) {
    if (p[i] != Pattern(remote_offset + i)) return static_cast<int64_t>(i);
  }
  return -1;
}

TransferEngineOptions LoopbackOptions() {
  TransferEngineOptions o;
  o.name = "ucx test";
  o.ucx_net_devices = "lo";
  return o;
}

bool WriteAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool ReadAll(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t r = ::read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// The child's body: "<mode>,<bytes>,<progress 0|1>,<blob fd>,<command fd>". mode "alloc": the
// region is UCX-allocated (Allocate); "caller": the region is our own mmap. Writes the
// length-prefixed blob, then serves commands: 'x' removes region 0 (and frees it) and answers
// 'k' and the blob described again; end of input exits.
[[noreturn]] void ChildMain(const char* spec) {
  std::vector<std::string> f = absl::StrSplit(spec, ',');
  uint64_t bytes = 0;
  int progress = 0, blob_fd = -1, cmd_fd = -1;
  if (f.size() != 5 || !absl::SimpleAtoi(f[1], &bytes) || !absl::SimpleAtoi(f[2], &progress) ||
      !absl::SimpleAtoi(f[3], &blob_fd) || !absl::SimpleAtoi(f[4], &cmd_fd)) {
    std::fprintf(stderr, "bad %s=%s\n", kChildEnv, spec);
    std::_Exit(2);
  }
  UcxTuning tuning;
  tuning.progress_thread = progress != 0;
  auto transport = CreateUcxTransport(LoopbackOptions(), tuning);
  if (!transport.ok()) {
    std::fprintf(stderr, "child: %s\n", std::string(transport.status().message()).c_str());
    std::_Exit(3);
  }
  Allocation alloc;
  void* data = nullptr;
  if (f[0] == "alloc") {
    auto a = (*transport)->Allocate(bytes, /*prefault=*/true);
    if (!a.ok()) std::_Exit(4);
    alloc = *a;
    data = alloc.data;
  } else {
    data = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  }
  FillPattern(static_cast<uint8_t*>(data), bytes);
  Status s = (*transport)
                 ->AddRegion(0, data, bytes, MemoryKind::kHost,
                             alloc.handle != nullptr ? &alloc : nullptr);
  if (!s.ok()) {
    std::fprintf(stderr, "child: %s\n", std::string(s.message()).c_str());
    std::_Exit(5);
  }
  ferry::v1::TransferBlob blob;
  blob.set_version(1);
  blob.set_name("ucx test source");
  auto* r = blob.add_regions();
  r->set_id(0);
  r->set_size(bytes);
  r->set_base_address(reinterpret_cast<uint64_t>(data));
  (*transport)->Describe(&blob);
  const std::string wire = blob.SerializeAsString();
  const uint64_t len = wire.size();
  if (!WriteAll(blob_fd, &len, sizeof(len)) || !WriteAll(blob_fd, wire.data(), wire.size())) {
    std::_Exit(6);
  }
  char c;
  while (::read(cmd_fd, &c, 1) == 1) {
    if (c == 'x') {
      (*transport)->RemoveRegion(0);
      if (alloc.handle != nullptr) (*transport)->Free(alloc);
      r->clear_ucx_rkey();
      (*transport)->Describe(&blob);
      const std::string again = blob.SerializeAsString();
      const uint64_t n = again.size();
      WriteAll(blob_fd, "k", 1);
      WriteAll(blob_fd, &n, sizeof(n));
      WriteAll(blob_fd, again.data(), again.size());
    }
  }
  (*transport)->Stop();
  std::_Exit(0);
}

// Runs ChildMain in a fresh process (this binary, re-executed with kChildEnv in its own
// environment, plus the sanitizers' options and UCX's memory-hook settings that the sanitizer
// builds run with) before any test creates UCX state.
struct ChildHook {
  ChildHook() {
    if (const char* spec = std::getenv(kChildEnv)) ChildMain(spec);
  }
} child_hook;

// A source process. The destructor closes its command pipe and reaps it.
class SourceProcess {
 public:
  SourceProcess(const std::string& mode, uint64_t bytes, bool progress) {
    int blob[2], cmd[2];
    EXPECT_EQ(::pipe(blob), 0);
    EXPECT_EQ(::pipe(cmd), 0);
    std::vector<std::string> env = {absl::StrCat(kChildEnv, "=", mode, ",", bytes, ",",
                                                 progress ? 1 : 0, ",", blob[1], ",", cmd[0])};
    for (char** e = environ; *e != nullptr; ++e) {
      const absl::string_view var(*e);
      if (absl::StartsWith(var, "UCX_MEM_") ||
          absl::StrContains(var.substr(0, var.find('=')), "SAN_OPTIONS")) {
        env.emplace_back(var);
      }
    }
    std::vector<char*> envp;
    for (std::string& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(blob[0]);
      ::close(cmd[1]);
      char* argv[] = {const_cast<char*>("ucx_transport_test"), nullptr};
      ::execve("/proc/self/exe", argv, envp.data());
      std::_Exit(127);
    }
    ::close(blob[1]);
    ::close(cmd[0]);
    from_ = blob[0];
    to_ = cmd[1];
    uint64_t len = 0;
    std::string wire;
    if (ReadAll(from_, &len, sizeof(len)) && len < (1u << 20)) {
      wire.resize(len);
      if (ReadAll(from_, wire.data(), len)) blob_.ParseFromString(wire);
    }
  }
  ~SourceProcess() {
    ::close(to_);
    ::close(from_);
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
  }

  const ferry::v1::TransferBlob& blob() const { return blob_; }
  void Kill() { ::kill(pid_, SIGKILL); }
  void Reap() {
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  // Asks the source to remove (and free) region 0; returns the blob it describes afterwards.
  ferry::v1::TransferBlob RemoveRegion() {
    char c = 0;
    uint64_t len = 0;
    std::string wire;
    ferry::v1::TransferBlob blob;
    if (WriteAll(to_, "x", 1) && ReadAll(from_, &c, 1) && c == 'k' &&
        ReadAll(from_, &len, sizeof(len)) && len < (1u << 20)) {
      wire.resize(len);
      if (ReadAll(from_, wire.data(), len)) blob.ParseFromString(wire);
    }
    return blob;
  }
  bool Alive() const { return ::kill(pid_, 0) == 0 && ::waitpid(pid_, nullptr, WNOHANG) == 0; }

 private:
  pid_t pid_ = -1;
  int from_ = -1;
  int to_ = -1;
  ferry::v1::TransferBlob blob_;
};

// Pre-faulted destination memory.
struct Buffer {
  explicit Buffer(uint64_t n) : size(n) {
    data = static_cast<uint8_t*>(::mmap(nullptr, n, PROT_READ | PROT_WRITE,
                                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0));
  }
  ~Buffer() { ::munmap(data, size); }
  uint8_t* data;
  uint64_t size;
};

// Reads through the read core in pieces of 1 MiB (unless set), with an optional deadline.
struct Control : ferry::testing::Running {
  Control() { chunk_bytes = 1 << 20; }
  Status Read(PeerConnection& peer, std::vector<ReadOp> ops,
              absl::Time until = absl::InfiniteFuture()) {
    deadline = until;
    return Running::Read(peer, std::move(ops), "source-under-test");
  }
};

class UcxTransportTest : public ::testing::Test {
 protected:
  // A target transport and a connection to `source`.
  std::unique_ptr<PeerConnection> Connect(const SourceProcess& source, uint64_t chunk_bytes,
                                          int max_inflight) {
    return Connect(source.blob(), chunk_bytes, max_inflight);
  }
  std::unique_ptr<PeerConnection> Connect(const ferry::v1::TransferBlob& blob, uint64_t chunk_bytes,
                                          int max_inflight) {
    TransferEngineOptions o = LoopbackOptions();
    o.chunk_bytes = chunk_bytes;
    o.max_inflight = max_inflight;
    auto t = CreateUcxTransport(o, UcxTuning{});
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) return nullptr;
    target_ = *std::move(t);
    EXPECT_TRUE(blob.has_ucx());
    auto peer = target_->Connect(blob, "source-under-test");
    EXPECT_TRUE(peer.ok()) << peer.status();
    return peer.ok() ? *std::move(peer) : nullptr;
  }
  void TearDown() override {
    if (target_ != nullptr) target_->Stop();
  }
  std::unique_ptr<Transport> target_;
};

TEST_F(UcxTransportTest, DescribeFillsWorkerAddressRkeyAndNoRdmaOnLoopback) {
  SourceProcess source("alloc", 1 << 20, /*progress=*/false);
  ASSERT_TRUE(source.blob().has_ucx());
  EXPECT_FALSE(source.blob().ucx().worker_address().empty());
  EXPECT_FALSE(source.blob().ucx().rdma());
  ASSERT_EQ(source.blob().regions_size(), 1);
  EXPECT_FALSE(source.blob().regions(0).ucx_rkey().empty());
}

// UCX-allocated source memory, read one-sided while the source never drives its worker: many
// ops with unaligned offsets and lengths, several spanning chunk boundaries.
TEST_F(UcxTransportTest, ExactBytesForUnalignedChunkSpanningOpsWithoutSourceProgress) {
  constexpr uint64_t kRegion = 64ull << 20;
  constexpr uint64_t kChunk = 256 << 10;
  SourceProcess source("alloc", kRegion, /*progress=*/false);
  auto peer = Connect(source, kChunk, /*max_inflight=*/4);
  ASSERT_NE(peer, nullptr);

  std::mt19937_64 rng(42);
  std::vector<ReadOp> ops;
  uint64_t total = 0;
  for (int i = 0; i < 300; ++i) {
    const uint64_t len = 1 + rng() % (i % 3 == 0 ? 3 * kChunk + 12345 : 9000);
    const uint64_t off = rng() % (kRegion - len);
    ops.push_back({0, off, nullptr, len});
    total += len;
  }
  ops.push_back({0, 0, nullptr, kRegion});  // the whole region
  ops.push_back({0, kRegion - 1, nullptr, 1});
  total += kRegion + 1;
  Buffer dst(total);
  std::memset(dst.data, 0xEE, total);
  uint64_t at = 0;
  for (ReadOp& op : ops) {
    op.local = dst.data + at;
    at += op.length;
  }
  Control c;
  c.chunk_bytes = kChunk;
  ASSERT_TRUE(c.Read(*peer, ops).ok());
  EXPECT_EQ(c.bytes_done.load(), total);
  for (size_t i = 0; i < ops.size(); ++i) {
    ASSERT_EQ(
        FirstMismatch(static_cast<uint8_t*>(ops[i].local), ops[i].remote_offset, ops[i].length), -1)
        << "op " << i << " offset " << ops[i].remote_offset << " length " << ops[i].length;
  }
  // The connection stays usable for the next batch.
  Control c2;
  ASSERT_TRUE(c2.Read(*peer, {{0, 4096, dst.data, 8192}}).ok());
  EXPECT_EQ(FirstMismatch(dst.data, 4096, 8192), -1);
  peer->Close();
  Control c3;
  const Status closed = c3.Read(*peer, {{0, 0, dst.data, 1}});
  EXPECT_EQ(closed.code(), absl::StatusCode::kFailedPrecondition) << closed;
  EXPECT_THAT(closed.message(), HasSubstr("source-under-test"));
}

// Memory UCX did not allocate is served in software by the source's progress thread.
TEST_F(UcxTransportTest, CallerMemoryIsServedByTheSourceProgressThread) {
  constexpr uint64_t kRegion = 32ull << 20;
  SourceProcess source("caller", kRegion, /*progress=*/true);
  auto peer = Connect(source, 1 << 20, 8);
  ASSERT_NE(peer, nullptr);
  Buffer dst(kRegion);
  Control c;
  ASSERT_TRUE(c.Read(*peer, {{0, 0, dst.data, kRegion / 2},
                             {0, kRegion / 2 + 3, dst.data + kRegion / 2, kRegion / 2 - 3}})
                  .ok());
  EXPECT_EQ(c.bytes_done.load(), kRegion - 3);
  EXPECT_EQ(FirstMismatch(dst.data, 0, kRegion / 2), -1);
  EXPECT_EQ(FirstMismatch(dst.data + kRegion / 2, kRegion / 2 + 3, kRegion / 2 - 3), -1);
}

// Caller memory without a source progress thread never completes: the deadline ends the read,
// promptly, naming the peer and the first unfinished range.
TEST_F(UcxTransportTest, DeadlineExceededWhenTheSourceNeverAnswers) {
  SourceProcess source("caller", 4 << 20, /*progress=*/false);
  auto peer = Connect(source, 1 << 20, 4);
  ASSERT_NE(peer, nullptr);
  Buffer dst(4 << 20);
  Control c;
  const absl::Time start = absl::Now();
  const Status s =
      c.Read(*peer, {{0, 4096, dst.data, (4 << 20) - 4096}}, absl::Now() + absl::Milliseconds(300));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_THAT(s.message(), HasSubstr("source-under-test"));
  EXPECT_THAT(s.message(), HasSubstr("region 0 [4096, 1052672)"));
  EXPECT_LT(took, absl::Seconds(3));
  EXPECT_EQ(c.bytes_done.load(), 0u);
}

// The source never drives its worker, so gets of its caller memory never complete: the feed
// says stop once the transport took its four pieces (all posted, none done), and Execute must
// cancel them and return without reporting any.
TEST_F(UcxTransportTest, StoppedWhileReadsAreInFlight) {
  SourceProcess source("caller", 4 << 20, /*progress=*/false);
  auto peer = Connect(source, 1 << 20, 4);
  ASSERT_NE(peer, nullptr);
  Buffer dst(8 << 20);
  ferry::testing::ScriptedFeed feed(
      {{0, 0, dst.data, 4 << 20}, {0, 0, dst.data + (4 << 20), 4 << 20}}, 1 << 20);
  feed.stop_after_taken = 4;
  const absl::Time start = absl::Now();
  peer->Execute(feed).IgnoreError();  // the core, not the transport, says why a read stopped
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(feed.taken.load(), 4u);
  EXPECT_EQ(feed.done.load(), 0u);
}

TEST_F(UcxTransportTest, KilledSourceFailsTheReadPromptly) {
  constexpr uint64_t kRegion = 64ull << 20;
  SourceProcess source("caller", kRegion, /*progress=*/true);
  auto peer = Connect(source, 1 << 20, 8);
  ASSERT_NE(peer, nullptr);
  Buffer dst(kRegion);
  std::vector<ReadOp> ops(2048, ReadOp{0, 0, dst.data, kRegion});  // 128 GiB: far longer than
                                                                   // the test runs
  Control c;
  std::atomic<int64_t> killed_at_ns{0};
  std::thread killer([&] {
    while (c.bytes_done.load() < (256ull << 20)) std::this_thread::yield();
    source.Kill();
    killed_at_ns.store(absl::ToUnixNanos(absl::Now()));
    source.Reap();  // UCX's liveness check sees a zombie as alive
  });
  const Status s = c.Read(*peer, ops, absl::Now() + absl::Seconds(60));
  const absl::Time returned = absl::Now();
  killer.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("source-under-test"));
  EXPECT_THAT(s.message(), HasSubstr("region 0 ["));
  EXPECT_LT(returned - absl::FromUnixNanos(killed_at_ns.load()), absl::Seconds(10));
  Control c2;
  EXPECT_EQ(c2.Read(*peer, {{0, 0, dst.data, 1}}).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(UcxTransportTest, ReadOfARegionThePeerDidNotExportIsInvalidArgument) {
  SourceProcess source("alloc", 1 << 20, /*progress=*/false);
  auto peer = Connect(source, 1 << 20, 4);
  ASSERT_NE(peer, nullptr);
  Buffer dst(4096);
  Control c;
  const Status s = c.Read(*peer, {{7, 0, dst.data, 4096}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("region 7"));
}

// After RemoveRegion the source no longer describes the region, so a connection made from its
// new blob refuses to read it. A connection made before keeps the rkey it unpacked: shared
// memory rkeys cannot be revoked in UCX 1.13, so that read is not an error, but it must not
// crash either process (UCX-allocated pages live on in the reader's mapping).
TEST_F(UcxTransportTest, RemovedRegionIsNotReadableThroughANewBlobAndNothingCrashes) {
  SourceProcess source("alloc", 1 << 20, /*progress=*/true);
  auto before = Connect(source, 1 << 20, 4);
  ASSERT_NE(before, nullptr);
  const ferry::v1::TransferBlob after_blob = source.RemoveRegion();
  ASSERT_EQ(after_blob.regions_size(), 1);
  EXPECT_TRUE(after_blob.regions(0).ucx_rkey().empty());

  auto after = Connect(after_blob, 1 << 20, 4);
  ASSERT_NE(after, nullptr);
  Buffer dst(1 << 20);
  Control c;
  const Status s = c.Read(*after, {{0, 0, dst.data, 1 << 20}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("region 0"));
  EXPECT_EQ(c.bytes_done.load(), 0u);

  Control c2;
  const Status stale =
      c2.Read(*before, {{0, 0, dst.data, 1 << 20}}, absl::Now() + absl::Seconds(5));
  EXPECT_TRUE(stale.ok() || stale.code() == absl::StatusCode::kUnavailable) << stale;
  EXPECT_TRUE(source.Alive());
}

// Pages of [data, data+bytes) that are resident, by mincore.
uint64_t ResidentPages(void* data, uint64_t bytes) {
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((bytes + page - 1) / page);
  if (::mincore(data, bytes, vec.data()) != 0) return ~0ull;
  uint64_t n = 0;
  for (unsigned char v : vec) n += v & 1;
  return n;
}

// A pull that allocates its destination prepares the pages itself, ahead of the transfer front
// (Allocate(prefault=false)); UCX's Allocate used to fault them all in first regardless, which
// put the whole preparation before the transfer.
TEST(UcxTransportAllocateTest, FaultsPagesInOnlyWhenAsked) {
  auto t = CreateUcxTransport(LoopbackOptions(), UcxTuning{});
  ASSERT_TRUE(t.ok()) << t.status();
  constexpr uint64_t kBytes = 64ull << 20;
  const uint64_t pages = kBytes / static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  auto lazy = (*t)->Allocate(kBytes, /*prefault=*/false);
  ASSERT_TRUE(lazy.ok()) << lazy.status();
  EXPECT_LT(ResidentPages(lazy->data, kBytes), pages / 2);
  std::memset(lazy->data, 0x5a, kBytes);  // still ordinary writable memory
  EXPECT_EQ(ResidentPages(lazy->data, kBytes), pages);
  auto eager = (*t)->Allocate(kBytes, /*prefault=*/true);
  ASSERT_TRUE(eager.ok()) << eager.status();
  EXPECT_EQ(ResidentPages(eager->data, kBytes), pages);
  (*t)->Free(*lazy);
  (*t)->Free(*eager);
  (*t)->Stop();
}

// UCX's tcp transport emulates gets in software and served any address of a source to whoever
// reached its port, with no token and no blob. It is never started: a UCX transport listens on
// no TCP port, whatever the options ask.
TEST(UcxTransportSecurityTest, StartsNoTcpListener) {
  const std::set<uint16_t> before = ferry::testing::ListeningTcpPorts();
  TransferEngineOptions o = LoopbackOptions();
  auto t = CreateUcxTransport(o, UcxTuning{});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(ferry::testing::ListeningTcpPorts(), before);
  o.ucx_transports = "^ud";  // a negated list that does not name tcp still excludes it
  auto negated = CreateUcxTransport(o, UcxTuning{});
  ASSERT_TRUE(negated.ok()) << negated.status();
  EXPECT_EQ(ferry::testing::ListeningTcpPorts(), before);
  (*t)->Stop();
  (*negated)->Stop();
}

TEST(UcxTransportSecurityTest, RefusesTransportListsThatNameTcp) {
  for (const char* tls : {"tcp", "sm,tcp", "all,self"}) {
    TransferEngineOptions o = LoopbackOptions();
    o.ucx_transports = tls;
    auto t = CreateUcxTransport(o, UcxTuning{});
    ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << tls;
    EXPECT_THAT(t.status().message(), HasSubstr("use ferry's own tcp transport")) << tls;
  }
  UcxTuning tuning;
  tuning.extra_config = {{"TLS", "tcp"}};
  EXPECT_EQ(CreateUcxTransport(LoopbackOptions(), tuning).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*UcxTlsSetting(""), "^tcp");
  EXPECT_EQ(*UcxTlsSetting("all"), "^tcp");
  EXPECT_EQ(*UcxTlsSetting("^ud"), "^ud,tcp");
  EXPECT_EQ(*UcxTlsSetting("^tcp,ud"), "^tcp,ud");
  EXPECT_EQ(*UcxTlsSetting("sm,self"), "sm,self");
}

}  // namespace
}  // namespace ferry::internal
