// AdminHttp: the operator's HTTP/1.1 port. GET /healthz (200 "ok" while the store answers,
// 503 with the store's error otherwise) and GET /metrics (Prometheus text). Owns one thread
// between Start() and Stop(). Thread-safe.
#ifndef FERRY_SERVER_ADMIN_HTTP_H_
#define FERRY_SERVER_ADMIN_HTTP_H_

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

class AdminHttp {
 public:
  // Binds `host` and `port` (0 picks a free port) at once, so a taken port fails Create().
  // Borrows `store` and `metrics`.
  static StatusOr<std::unique_ptr<AdminHttp>> Create(const std::string& host, int port,
                                                     store::MetadataStore* store, Metrics* metrics);
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
