// AdminHttp: the operator's HTTP/1.1 port. GET /healthz (200 "ok" while the store answers,
// 503 with the store's error otherwise) and GET /metrics (Prometheus text). Owns one thread
// between Start() and Stop(). Thread-safe.
#ifndef FERRY_SERVER_ADMIN_HTTP_H_
#define FERRY_SERVER_ADMIN_HTTP_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "ferry/status.h"
#include "server/metrics.h"
#include "store/metadata_store.h"

namespace httplib {
class Server;
}

namespace ferry::server {

// The admin port serves probes and scrapes, not traffic: a fixed pool of threads, each
// connection holding one while it waits for a request. An idle connection is closed after
// kAdminHttpTimeoutSeconds without a request; a request that stalls for that long mid-read or
// mid-write is dropped. So fewer than kAdminHttpThreads idle or slow connections cannot delay
// /healthz at all, and any number delays it by about kAdminHttpTimeoutSeconds per
// kAdminHttpThreads of them (docs/operations.md, "Probes").
inline constexpr int kAdminHttpThreads = 64;
inline constexpr int kAdminHttpTimeoutSeconds = 1;
// Connections the kernel queues for the admin port before it accepts them.
inline constexpr int kAdminHttpBacklog = 1024;

class AdminHttp {
 public:
  // Binds `host` and `port` (0 picks a free port) at once, so a taken port fails Create().
  // Borrows `store` and `metrics`.
  // `listener_health` (optional) is asked on every /healthz: a non-OK answer (the gRPC listener
  // stopped accepting) makes it 503 with that message.
  static StatusOr<std::unique_ptr<AdminHttp>> Create(
      const std::string& host, int port, store::MetadataStore* store, Metrics* metrics,
      std::function<Status()> listener_health = nullptr);
  ~AdminHttp();
  AdminHttp(const AdminHttp&) = delete;
  AdminHttp& operator=(const AdminHttp&) = delete;

  int port() const { return port_; }
  void Start();
  void Stop();  // idempotent

 private:
  AdminHttp(std::unique_ptr<httplib::Server> http, int port);

  std::unique_ptr<httplib::Server> http_;
  const int port_;
  std::thread thread_;
};

}  // namespace ferry::server

#endif  // FERRY_SERVER_ADMIN_HTTP_H_
