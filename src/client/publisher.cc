#include "ferry/publisher.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "spdlog/spdlog.h"

namespace ferry {

namespace p2p = ::model_express::p2p;

namespace {

constexpr absl::Duration kDefaultHeartbeatInterval = absl::Seconds(30);

StatusOr<absl::Duration> ResolveInterval(const std::optional<absl::Duration>& configured) {
  if (configured.has_value()) {
    if (*configured <= absl::ZeroDuration() || *configured == absl::InfiniteDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat("PublisherOptions.heartbeat_interval=", absl::FormatDuration(*configured),
                       " must be a positive, finite duration"));
    }
    return *configured;
  }
  return kDefaultHeartbeatInterval;
}

}  // namespace

std::string GenerateWorkerId() {
  absl::BitGen gen;
  return absl::StrFormat("%016x", absl::Uniform<uint64_t>(gen));
}

StatusOr<std::unique_ptr<Publisher>> Publisher::Create(PublisherOptions options) {
  if (options.client == nullptr) {
    return absl::InvalidArgumentError(
        "PublisherOptions.client is required (a MetadataClient that outlives "
        "the Publisher)");
  }
  if (Status s = ValidateIdentity(options.identity); !s.ok()) {
    return Status(s.code(), absl::StrCat("PublisherOptions.", s.message()));
  }
  if (options.worker_id.size() > kMaxIdentityStringBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("PublisherOptions.worker_id is ", options.worker_id.size(),
                     " bytes; the limit is ", kMaxIdentityStringBytes));
  }
  FERRY_ASSIGN_OR_RETURN(absl::Duration interval, ResolveInterval(options.heartbeat_interval));
  std::string worker_id = options.worker_id.empty() ? GenerateWorkerId() : options.worker_id;
  return std::unique_ptr<Publisher>(
      new Publisher(std::move(options), std::move(worker_id), interval));
}

Publisher::Publisher(PublisherOptions options, std::string worker_id, absl::Duration interval)
    : options_(std::move(options)), worker_id_(std::move(worker_id)), interval_(interval) {}

Publisher::~Publisher() { Stop(); }

Status Publisher::Start() {
  absl::MutexLock lifecycle(&lifecycle_mu_);
  if (state_ != State::kNew) {
    return absl::FailedPreconditionError(
        absl::StrCat("Publisher for worker ", worker_id_, " was already ",
                     state_ == State::kRunning ? "started" : "stopped",
                     "; create a new Publisher to publish again"));
  }
  FERRY_RETURN_IF_ERROR(PublishAndMarkReady());
  thread_ = std::thread(&Publisher::Run, this);
  state_ = State::kRunning;
  spdlog::info("publishing source {} worker {} rank {} to {} (heartbeat every {})", mx_source_id(),
               worker_id_, options_.worker.worker_rank(), options_.client->server_address(),
               absl::FormatDuration(interval_));
  return absl::OkStatus();
}

void Publisher::Stop() {
  absl::MutexLock lifecycle(&lifecycle_mu_);
  if (state_ == State::kStopped) return;
  const bool was_running = state_ == State::kRunning;
  state_ = State::kStopped;
  if (!was_running) return;
  {
    absl::MutexLock lock(&mu_);
    stop_requested_ = true;
  }
  thread_.join();  // before STALE, so that no heartbeat can follow it

  std::string source_id;
  bool ready_sent;
  {
    absl::MutexLock lock(&mu_);
    source_id = mx_source_id_;
    ready_sent = ready_sent_;
  }
  if (!ready_sent) return;
  Status s = options_.client->UpdateStatus(source_id, worker_id_, options_.worker.worker_rank(),
                                           p2p::SOURCE_STATUS_STALE);
  if (!s.ok()) {
    spdlog::warn("could not mark source {} worker {} STALE: {}", source_id, worker_id_,
                 std::string(s.message()));
  }
}

std::string Publisher::mx_source_id() const {
  absl::MutexLock lock(&mu_);
  return mx_source_id_;
}

int Publisher::heartbeat_count() const {
  absl::MutexLock lock(&mu_);
  return heartbeat_count_;
}

int Publisher::failed_heartbeat_count() const {
  absl::MutexLock lock(&mu_);
  return failed_heartbeat_count_;
}

int Publisher::republish_count() const {
  absl::MutexLock lock(&mu_);
  return republish_count_;
}

Status Publisher::PublishAndMarkReady() {
  p2p::PublishMetadataRequest request;
  *request.mutable_identity() = options_.identity;
  *request.mutable_worker() = options_.worker;
  // As ModelExpress's client: status and updated_at unset; the server owns both.
  request.mutable_worker()->clear_status();
  request.mutable_worker()->clear_updated_at();
  request.set_worker_id(worker_id_);
  request.set_pod_name(options_.pod_name);
  request.set_pod_uid(options_.pod_uid);
  request.set_pod_namespace(options_.pod_namespace);
  FERRY_ASSIGN_OR_RETURN(PublishResult published, options_.client->Publish(request));
  bool ready;
  {
    absl::MutexLock lock(&mu_);
    mx_source_id_ = published.mx_source_id;
    if (!options_.start_initializing) ready_ = true;
    ready = ready_;
  }
  FERRY_RETURN_IF_ERROR(SendStatus(
      published.mx_source_id, ready ? p2p::SOURCE_STATUS_READY : p2p::SOURCE_STATUS_INITIALIZING));
  absl::MutexLock lock(&mu_);
  ready_sent_ = true;  // a status was sent: Stop() marks the record STALE
  return absl::OkStatus();
}

Status Publisher::MarkReady() {
  {
    absl::MutexLock lifecycle(&lifecycle_mu_);
    if (state_ != State::kRunning) {
      return absl::FailedPreconditionError(
          absl::StrCat("Publisher for worker ", worker_id_, " is not running; Start() it first"));
    }
  }
  std::string source_id;
  {
    absl::MutexLock lock(&mu_);
    if (ready_) return absl::OkStatus();
    ready_ = true;  // from now on heartbeats say READY, even if this update fails
    source_id = mx_source_id_;
  }
  return SendStatus(source_id, p2p::SOURCE_STATUS_READY);
}

Status Publisher::SendStatus(const std::string& mx_source_id, p2p::SourceStatus status) {
  std::optional<float> load = 0.0f;
  if (options_.source_load) load = options_.source_load();
  if (load.has_value()) {
    if (std::isnan(*load)) {
      load.reset();
    } else {
      load = std::clamp(*load, 0.0f, 1.0f);
    }
  }
  return options_.client->UpdateStatus(mx_source_id, worker_id_, options_.worker.worker_rank(),
                                       status, load);
}

// Ticks on a fixed schedule (one interval after the previous tick was due, or at once if a
// tick overran), until Stop() sets stop_requested_, which wakes the wait immediately.
void Publisher::Run() {
  absl::Time next = absl::Now() + interval_;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithDeadline(absl::Condition(&stop_requested_), next);
      if (stop_requested_) return;
    }
    Tick();
    next = std::max(next + interval_, absl::Now());
  }
}

void Publisher::Tick() {
  const std::string source_id = mx_source_id();
  const uint32_t rank = options_.worker.worker_rank();
  bool ready;
  {
    absl::MutexLock lock(&mu_);
    ready = ready_;
  }
  Status s =
      SendStatus(source_id, ready ? p2p::SOURCE_STATUS_READY : p2p::SOURCE_STATUS_INITIALIZING);
  bool republished = false;
  if (absl::IsNotFound(s)) {
    // The server lost the record (restart of a memory store, flushed Redis, GC after a
    // partition). ModelExpress's client only logs this and stays invisible until restarted.
    spdlog::warn(
        "server {} no longer holds source {} worker {} rank {}; publishing "
        "again",
        options_.client->server_address(), source_id, worker_id_, rank);
    s = PublishAndMarkReady();
    republished = s.ok();
  }
  {
    absl::MutexLock lock(&mu_);
    if (s.ok()) {
      ++heartbeat_count_;
      if (republished) ++republish_count_;
    } else {
      ++failed_heartbeat_count_;
    }
  }
  if (!s.ok()) {
    spdlog::warn("heartbeat for source {} worker {} rank {} failed: {}; next try in {}", source_id,
                 worker_id_, rank, std::string(s.message()), absl::FormatDuration(interval_));
  }
}

}  // namespace ferry
