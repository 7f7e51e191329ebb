#include "worker/serving.h"

#include <utility>

namespace ferry::worker {

StatusOr<std::unique_ptr<Serving>> Serving::Start(
    WorkerServerOptions endpoint, PublisherOptions publisher,
    const std::function<void(const std::string&, model_express::p2p::WorkerMetadata*)>&
        fill_record) {
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
  return std::unique_ptr<Serving>(new Serving(std::move(server), *std::move(created)));
}

Serving::~Serving() { Stop(); }

void Serving::Stop() {
  if (stopped_) return;
  stopped_ = true;
  publisher_->Stop();
  server_->Stop();
}

}  // namespace ferry::worker
