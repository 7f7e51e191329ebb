#include "worker/serving.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace ferry::worker {

StatusOr<std::unique_ptr<Serving>> Serving::Start(
    WorkerServerOptions endpoint, PublisherOptions publisher,
    const std::function<void(const std::string&, model_express::p2p::WorkerMetadata*)>& fill_record,
    ServingOptions serving_options) {
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<WorkerServer> server,
                         WorkerServer::Create(std::move(endpoint)));
  FERRY_RETURN_IF_ERROR(server->Start());
  fill_record(server->endpoint(), &publisher.worker);
  StatusOr<std::unique_ptr<Publisher>> created = Publisher::Create(std::move(publisher));
  Status started = created.ok() ? (*created)->Start() : created.status();
  if (!started.ok()) {
    server->Stop();
    return started;
  }
  std::unique_ptr<Serving> serving(new Serving(std::move(server), *std::move(created)));
  // A worker endpoint that stopped accepting (gRPC gives up on a listener after EMFILE) must not
  // stay READY: targets would pick it and wait. The record goes STALE; restart the source.
  ferry::internal::ListenerWatch::Options watch;
  watch.port = static_cast<uint16_t>(serving->server_->port());
  watch.host = ferry::internal::ProbeHost(serving->server_->listen_address());
  watch.what = absl::StrCat("worker endpoint ", serving->server_->endpoint());
  watch.interval = serving_options.listener_probe_interval;
  Publisher* heartbeats = serving->publisher_.get();
  watch.on_unhealthy = [heartbeats](const Status& s) {
    spdlog::error("{}; marking this source STALE so that targets stop picking it", s.message());
    heartbeats->Stop();
  };
  if (watch.interval > absl::ZeroDuration()) {
    serving->watch_ = ferry::internal::ListenerWatch::Start(std::move(watch));
  }
  return serving;
}

Serving::~Serving() { Stop(); }

void Serving::Stop() {
  if (stopped_) return;
  stopped_ = true;
  if (watch_ != nullptr) watch_->Stop();
  publisher_->Stop();
  server_->Stop();
}

}  // namespace ferry::worker
