// A source's serving lifecycle, shared by weight and artifact sources: the worker endpoint,
// then the record published READY with heartbeats; stopped in the reverse order (STALE first, so
// no target picks a closing endpoint).
#ifndef FERRY_WORKER_SERVING_H_
#define FERRY_WORKER_SERVING_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "common/listener_probe.h"
#include "ferry/publisher.h"
#include "ferry/status.h"
#include "worker/worker_server.h"

namespace ferry::worker {

struct ServingOptions {
  // How often the worker endpoint's listener is probed from inside the process
  // (internal::ListenerWatch); after two failed probes in a row the record is marked STALE and
  // heartbeats stop. Zero disables the probe.
  absl::Duration listener_probe_interval = absl::Seconds(10);
};

class Serving {
 public:
  // Starts the endpoint `endpoint` describes, lets `fill_record` complete publisher.worker with
  // the endpoint's host:port, then publishes READY and starts heartbeats. On failure nothing
  // keeps running.
  static StatusOr<std::unique_ptr<Serving>> Start(
      WorkerServerOptions endpoint, PublisherOptions publisher,
      const std::function<void(const std::string& endpoint,
                               model_express::p2p::WorkerMetadata* record)>& fill_record,
      ServingOptions serving_options = {});
  ~Serving();  // Stop()s
  Serving(const Serving&) = delete;
  Serving& operator=(const Serving&) = delete;

  // Marks the record STALE (the heartbeat thread stops first), then closes the endpoint.
  // Idempotent.
  void Stop();

  std::string endpoint() const { return server_->endpoint(); }
  // The id the server computed (it keys the record targets find).
  std::string mx_source_id() const { return publisher_->mx_source_id(); }
  // Publisher::MarkReady (a record started INITIALIZING).
  Status MarkReady() { return publisher_->MarkReady(); }

 private:
  Serving(std::unique_ptr<WorkerServer> server, std::unique_ptr<Publisher> publisher)
      : server_(std::move(server)), publisher_(std::move(publisher)) {}

  std::unique_ptr<WorkerServer> server_;
  std::unique_ptr<Publisher> publisher_;
  std::unique_ptr<ferry::internal::ListenerWatch> watch_;  // null when the probe is disabled
  bool stopped_ = false;
};

}  // namespace ferry::worker

#endif  // FERRY_WORKER_SERVING_H_
