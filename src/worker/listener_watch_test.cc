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
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/fd.h"
#include "common/listener_probe.h"
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
  options.listen = "127.0.0.1:0";
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
  EXPECT_TRUE(ProbeListener(static_cast<uint16_t>(plain->port()), absl::Seconds(5)).ok());

  ferry::testing::TempDir tmp;
  auto certs = ferry::testing::MakeTestCerts(tmp.path());
  ASSERT_TRUE(certs.ok()) << certs.status();
  auto tls = Start({.state = state.get(),
                    .tls_cert = certs->server_cert,
                    .tls_key = certs->server_key,
                    .tls_client_ca = certs->ca});
  ASSERT_NE(tls, nullptr);
  EXPECT_TRUE(ProbeListener(static_cast<uint16_t>(tls->port()), absl::Seconds(5)).ok());
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
  const Status s = ProbeListener(ntohs(a.sin_port), absl::Milliseconds(500));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("is not accepting connections"));
  fd.Reset();
  const Status closed = ProbeListener(ntohs(a.sin_port), absl::Milliseconds(500));
  EXPECT_THAT(std::string(closed.message()), HasSubstr("refused a connection"));
}

// Connections that never send an HTTP/2 preface are closed after the handshake timeout (5 s;
// gRPC's default was 120 s), so idle connections cannot pile up.
TEST(ListenerProbeTest, IdleConnectionsAreClosedByTheHandshakeTimeout) {
  auto state = MakeState();
  auto server = Start({.state = state.get()});
  ASSERT_NE(server, nullptr);
  Fd idle = Dial(server->port());
  pollfd p{idle.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 20000), 1) << "the idle connection is still open after 20 s";
  char c;
  EXPECT_LE(::recv(idle.get(), &c, 1, 0), 0);
}

// The defect: ~1,100 idle connections at a 1,024-descriptor limit stopped the worker endpoint's
// accept loop for good while the source kept heartbeating READY. In a child with a low limit
// the flood kills gRPC's listener; the probe and the watch see it, and the watch reports it
// once. (The watch then marks the source STALE: Serving's on_unhealthy.)
TEST(ListenerProbeTest, AnEndpointKilledByEmfileIsSeenAsUnhealthy) {
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto state = MakeState();
    auto server = Start({.state = state.get()});
    if (server == nullptr) ::_exit(2);
    rlimit lim{};
    ::getrlimit(RLIMIT_NOFILE, &lim);
    int highest = 0;
    for (int fd = 0; fd < 4096; ++fd) {
      if (::fcntl(fd, F_GETFD) >= 0) highest = fd;
    }
    lim.rlim_cur = static_cast<rlim_t>(highest + 8);
    ::setrlimit(RLIMIT_NOFILE, &lim);
    const int port = server->port();
    if (::write(pipe_fds[1], &port, sizeof(port)) != sizeof(port)) ::_exit(3);
    ::pause();
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  int port = 0;
  ASSERT_EQ(::read(pipe_fds[0], &port, sizeof(port)), static_cast<ssize_t>(sizeof(port)));
  ::close(pipe_fds[0]);
  ASSERT_TRUE(ProbeListener(static_cast<uint16_t>(port), absl::Seconds(5)).ok());

  std::vector<Fd> flood;
  for (int i = 0; i < 64; ++i) flood.push_back(Dial(port));
  flood.clear();  // the descriptors come back; gRPC's listener does not
  const Status dead = ProbeListener(static_cast<uint16_t>(port), absl::Seconds(2));
  EXPECT_EQ(dead.code(), absl::StatusCode::kUnavailable) << dead;

  std::atomic<int> reports{0};
  absl::Notification reported;
  auto watch = ListenerWatch::Start({.port = static_cast<uint16_t>(port),
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
  watch->Stop();
  EXPECT_EQ(reports.load(), 1);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
}

}  // namespace
}  // namespace ferry::worker
