#include "server/admin_http.h"

#include <sys/socket.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "httplib.h"

namespace ferry::server {

StatusOr<std::unique_ptr<AdminHttp>> AdminHttp::Create(const std::string& host, int port,
                                                       store::MetadataStore* store,
                                                       Metrics* metrics,
                                                       std::function<Status()> listener_health) {
  auto http = std::make_unique<httplib::Server>();
  // httplib's default adds SO_REUSEPORT, which would let a second server share the port
  // silently; a taken port must be an error.
  // The last socket httplib made is the one it bound and listens on.
  auto listen_fd = std::make_shared<int>(-1);
  http->set_socket_options([listen_fd](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    *listen_fd = sock;
  });
  // httplib's defaults (8 threads, 5 s keep-alive and read timeouts) let eight idle
  // connections hold every thread for 5 s, so a liveness probe times out on a healthy server.
  // More threads and 1 s timeouts bound what idle or slow clients can take (docs/operations.md).
  http->new_task_queue = [] { return new httplib::ThreadPool(kAdminHttpThreads); };
  http->set_keep_alive_timeout(kAdminHttpTimeoutSeconds);
  http->set_read_timeout(kAdminHttpTimeoutSeconds, 0);
  http->set_write_timeout(kAdminHttpTimeoutSeconds, 0);
  http->Get("/healthz", [store, listener_health](const httplib::Request&, httplib::Response& res) {
    if (listener_health) {
      if (Status l = listener_health(); !l.ok()) {
        res.status = 503;
        res.set_content(absl::StrCat(l.message(), "\n"), "text/plain");
        return;
      }
    }
    Status s = store->Ping();
    if (s.ok()) {
      res.set_content("ok\n", "text/plain");
    } else {
      res.status = 503;
      res.set_content(
          absl::StrCat("store ", store->Describe(), " unavailable: ", s.message(), "\n"),
          "text/plain");
    }
  });
  http->Get("/metrics", [metrics](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics->Render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  int bound = port;
  if (port == 0) {
    bound = http->bind_to_any_port(host);
  } else if (!http->bind_to_port(host, port)) {
    bound = -1;
  }
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("--admin-listen: cannot bind ", host, ":", port,
                                               " (in use or not a local address); choose another "
                                               "address or port"));
  }
  // httplib 0.11 listens with a backlog of 5: a burst of connections fills it, and the kernel
  // drops the SYN of the next one (a probe), which retries only after 1 s. listen() again on
  // the listening socket just raises its backlog.
  if (*listen_fd >= 0) ::listen(*listen_fd, kAdminHttpBacklog);
  return std::unique_ptr<AdminHttp>(new AdminHttp(std::move(http), bound));
}

AdminHttp::AdminHttp(std::unique_ptr<httplib::Server> http, int port)
    : http_(std::move(http)), port_(port) {}

AdminHttp::~AdminHttp() { Stop(); }

void AdminHttp::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { http_->listen_after_bind(); });
}

void AdminHttp::Stop() {
  http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace ferry::server
