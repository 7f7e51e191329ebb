// ProbeListener and ListenerWatch against real gRPC worker endpoints: live (plaintext and mutual
// TLS), and one whose accept loop died of EMFILE in a child process (gRPC 1.51 never resumes
// it). Also: idle connections that never finish their handshake are closed.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/fd.h"
#include "common/listener_probe.h"
#include "common/testing/child_reaper.h"
#include "common/testing/test_certs.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/worker_server.h"

namespace ferry::worker {
namespace {

using ::ferry::internal::Fd;
using ::ferry::internal::ListenerWatch;
using ::ferry::internal::ProbeListener;
using ::testing::HasSubstr;

std::unique_ptr<WorkerState> MakeState() {
  WorkerManifest m;
  m.worker_id = "w-probe";
  m.transfer_blob = "blob";
  m.region_base_addresses = {0x7f0000000000ull};
  ferry::v1::TensorEntry t;
  t.set_name("w");
  t.set_dtype("F32");
  t.add_shape(4);
  t.set_size(16);
  m.tensors.push_back(t);
  auto state = WorkerState::Create(std::move(m));
  EXPECT_TRUE(state.ok()) << state.status();
  return std::move(*state);
}

std::unique_ptr<WorkerServer> Start(WorkerServerOptions options) {
  if (options.listen == WorkerServerOptions().listen) options.listen = "127.0.0.1:0";
  auto server = WorkerServer::Create(std::move(options));
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return nullptr;
  const Status s = (*server)->Start();
  EXPECT_TRUE(s.ok()) << s;
  return s.ok() ? std::move(*server) : nullptr;
}

Fd Dial(int port) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  return fd;
}

TEST(ListenerProbeTest, ALiveEndpointAnswersPlaintextAndTls) {
  auto state = MakeState();
  auto plain = Start({.state = state.get()});
  ASSERT_NE(plain, nullptr);
  EXPECT_TRUE(ProbeListener("", static_cast<uint16_t>(plain->port()), absl::Seconds(5)).ok());

  ferry::testing::TempDir tmp;
  auto certs = ferry::testing::MakeTestCerts(tmp.path());
  ASSERT_TRUE(certs.ok()) << certs.status();
  auto tls = Start({.state = state.get(),
                    .tls_cert = certs->server_cert,
                    .tls_key = certs->server_key,
                    .tls_client_ca = certs->ca});
  ASSERT_NE(tls, nullptr);
  EXPECT_TRUE(ProbeListener("", static_cast<uint16_t>(tls->port()), absl::Seconds(5)).ok());
}

// A source listening on one address (--worker-listen 10.0.0.5:0) was probed at 127.0.0.1,
// found "refusing", and marked itself STALE for good (found by bench/chaos.py). The probe now
// dials the address the listener is bound to.
TEST(ListenerProbeTest, AListenerBoundToOneAddressIsProbedThere) {
  auto state = MakeState();
  auto server = Start({.state = state.get(), .listen = "127.0.0.2:0"});
  ASSERT_NE(server, nullptr);
  const std::string host = ferry::internal::ProbeHost(server->listen_address());
  EXPECT_EQ(host, "127.0.0.2");
  EXPECT_TRUE(ProbeListener(host, static_cast<uint16_t>(server->port()), absl::Seconds(5)).ok());
  EXPECT_EQ(
      ProbeListener("127.0.0.1", static_cast<uint16_t>(server->port()), absl::Seconds(1)).code(),
      absl::StatusCode::kUnavailable);
  EXPECT_EQ(ferry::internal::ProbeHost("0.0.0.0:6555"), "127.0.0.1");
  EXPECT_EQ(ferry::internal::ProbeHost("[::]:6555"), "::1");
  EXPECT_EQ(ferry::internal::ProbeHost("[fd00::5]:6555"), "fd00::5");
  EXPECT_EQ(ferry::internal::ProbeHost("10.0.0.5:0"), "10.0.0.5");
}

TEST(ListenerProbeTest, ABacklogNobodyAcceptsIsUnavailable) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(::listen(fd.get(), 16), 0);  // and never accept
  socklen_t len = sizeof(a);
  ASSERT_EQ(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
  const Status s = ProbeListener("127.0.0.1", ntohs(a.sin_port), absl::Milliseconds(500));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("is not accepting connections"));
  fd.Reset();
  const Status closed = ProbeListener("127.0.0.1", ntohs(a.sin_port), absl::Milliseconds(500));
  EXPECT_THAT(std::string(closed.message()), HasSubstr("refused a connection"));
}

// Connections that never send an HTTP/2 preface are closed after the handshake timeout (5 s;
// gRPC's default was 120 s), so idle connections cannot pile up.
TEST(ListenerProbeTest, IdleConnectionsAreClosedByTheHandshakeTimeout) {
  auto state = MakeState();
  auto server = Start({.state = state.get()});
  ASSERT_NE(server, nullptr);
  Fd idle = Dial(server->port());
  // The server sends its HTTP/2 preface, then closes when ours never comes.
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  bool closed = false;
  while (!closed && absl::Now() < deadline) {
    pollfd p{idle.get(), POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[256];
    closed = ::recv(idle.get(), buf, sizeof(buf), 0) <= 0;
  }
  EXPECT_TRUE(closed) << "the idle connection is still open after 20 s";
}

// The defect: ~1,100 idle connections at a 1,024-descriptor limit left the worker endpoint not
// accepting while the source kept heartbeating READY. A child with room for 8 more descriptors
// is flooded: the watch reports the endpoint unhealthy, once (Serving then marks the source
// STALE).
constexpr char kChildEnv[] = "FERRY_LISTENER_TEST_CHILD";

// The child (this binary re-executed, so no gRPC state crosses the fork): a worker endpoint with
// room for 8 more descriptors; writes its port to the fd named by kChildEnv, then waits.
[[noreturn]] void ChildMain(int port_fd) {
  auto state = MakeState();
  auto server = Start({.state = state.get()});
  if (server == nullptr) std::_Exit(2);
  // Leave exactly 8 free descriptors: fill every free number below the limit, then free 8.
  rlimit lim{};
  ::getrlimit(RLIMIT_NOFILE, &lim);
  lim.rlim_cur = 1024;
  ::setrlimit(RLIMIT_NOFILE, &lim);
  std::vector<int> filler;
  for (int fd; (fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) filler.push_back(fd);
  for (int i = 0; i < 8 && !filler.empty(); ++i) {
    ::close(filler.back());
    filler.pop_back();
  }
  const int port = server->port();
  if (::write(port_fd, &port, sizeof(port)) != sizeof(port)) std::_Exit(3);
  for (;;) ::pause();
}

struct ChildHook {
  ChildHook() {
    if (const char* fd = std::getenv(kChildEnv)) ChildMain(std::atoi(fd));
  }
} child_hook;

TEST(ListenerProbeTest, AnEndpointKilledByEmfileIsSeenAsUnhealthy) {
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const std::string env = absl::StrCat(kChildEnv, "=", pipe_fds[1]);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(pipe_fds[0]);
    char* argv[] = {const_cast<char*>("listener_watch_test"), nullptr};
    char* envp[] = {const_cast<char*>(env.c_str()), nullptr};
    ::execve("/proc/self/exe", argv, envp);
    std::_Exit(127);
  }
  const ferry::testing::ChildReaper reaper(child);
  ::close(pipe_fds[1]);
  int port = 0;
  ASSERT_EQ(::read(pipe_fds[0], &port, sizeof(port)), static_cast<ssize_t>(sizeof(port)));
  ::close(pipe_fds[0]);
  ASSERT_TRUE(ProbeListener("", static_cast<uint16_t>(port), absl::Seconds(5)).ok());

  // The flood holds every descriptor the child has: new connections wait in the backlog.
  std::vector<Fd> flood;
  for (int i = 0; i < 64; ++i) flood.push_back(Dial(port));
  std::atomic<int> reports{0};
  absl::Notification reported;
  auto watch = ListenerWatch::Start({.host = "",
                                     .port = static_cast<uint16_t>(port),
                                     .what = "worker endpoint under test",
                                     .interval = absl::Milliseconds(100),
                                     .timeout = absl::Milliseconds(500),
                                     .failures = 2,
                                     .on_unhealthy = [&](const Status&) {
                                       if (++reports == 1) reported.Notify();
                                     }});
  ASSERT_TRUE(reported.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_EQ(watch->health().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(watch->health().message()), HasSubstr("worker endpoint under test"));
  EXPECT_THAT(std::string(watch->health().message()), HasSubstr("is not accepting connections"));

  // gRPC 1.51 never accepts on that listener again, even once the flood is gone: only a
  // restart helps, which is why the source goes STALE rather than waiting.
  flood.clear();
  watch->Stop();
  EXPECT_EQ(reports.load(), 1) << "reported once, not per probe";
}

}  // namespace
}  // namespace ferry::worker
