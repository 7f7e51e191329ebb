// ferry::Publisher: keeps one worker rank discoverable on a metadata server.
//
// Start() publishes the record and marks it READY; a heartbeat thread then refreshes it with
// UpdateStatus(READY) every interval, as ModelExpress's PublisherThread does (contract 6.1).
// Unlike ModelExpress, when the server answers that it no longer holds the record (it was
// restarted, its store was flushed, or the reaper deleted the record during a partition), the
// publisher publishes it again and marks it READY within the same tick. Stop() marks it STALE.
#ifndef FERRY_PUBLISHER_H_
#define FERRY_PUBLISHER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ferry/metadata_client.h"
#include "ferry/source_identity.h"
#include "ferry/status.h"

namespace ferry {

struct PublisherOptions {
  // Borrowed: must outlive the Publisher. Required.
  MetadataClient* client = nullptr;

  // What the worker serves; identity.model_name is required.
  SourceIdentity identity;

  // Identifies this worker process under the source. Empty: a random 16-hex-character id
  // (see GenerateWorkerId).
  std::string worker_id;

  // The record to publish: worker_rank, endpoints, accelerator, payload, topology (ModelExpress
  // 0.7.0: this node's datacenter domains, e.g. {rack: r3, block: b1}, which topology-aware
  // targets compare with their own). status and updated_at are ignored; the server sets both.
  WorkerMetadata worker;

  // The source's own busyness in [0, 1], sent with every READY as UpdateStatusRequest.source_load
  // (ModelExpress 0.7.0) so that load-aware targets prefer sources with headroom. Called before
  // each READY, on the thread that sends it (Start()'s caller, then the heartbeat thread): it
  // must be thread-safe and quick. Values are clamped to [0, 1]; nullopt or NaN sends no
  // reading. Unset: 0, "idle", which is what a source that measures nothing reports (targets
  // then order it by rendezvous alone).
  std::function<std::optional<float>()> source_load;

  // Kubernetes owner information, sent as-is (ModelExpress reads POD_NAME etc.).
  std::string pod_name;
  std::string pod_uid;
  std::string pod_namespace;

  // Time between heartbeats; must be positive. Unset: 30 s (the ferry command and the Python
  // package fill it from FERRY_HEARTBEAT_INTERVAL, fallback MX_HEARTBEAT_INTERVAL_SECS; the
  // library reads no environment). Keep it well below the server's heartbeat timeout (90 s by
  // default), or READY listings will drop the worker between heartbeats.
  std::optional<absl::Duration> heartbeat_interval;

  // true: Start() publishes the record as INITIALIZING and heartbeats keep it so (a target that
  // serves what it has verified while it still pulls: ModelExpress clients list READY sources
  // only) until MarkReady().
  bool start_initializing = false;
};

// A random worker id of 16 lowercase hex characters (64 bits). ModelExpress mints 8 (32 bits);
// records are keyed by (mx_source_id, worker_id, rank) and a collision silently overwrites
// another worker's record, and with 32 bits the birthday bound makes that likely enough to
// matter (about 1% among 10,000 workers of one source, counting restarts, which mint new ids).
// With 64 bits it is about 3e-12.
std::string GenerateWorkerId();

// Thread-safe: every method may be called from any thread; Start() and Stop() are serialized.
class Publisher {
 public:
  // Validates `options` (errors name the field) and resolves the heartbeat interval. Does not
  // contact the server.
  static StatusOr<std::unique_ptr<Publisher>> Create(PublisherOptions options);

  // Calls Stop().
  ~Publisher();
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  // Publishes the record, marks it READY, then starts the heartbeat thread. On failure no
  // thread runs and Start() may be called again (a record published before a failed READY
  // stays INITIALIZING until the server's reaper ages it out). FailedPrecondition if already
  // started or stopped.
  Status Start();

  // Stops and joins the heartbeat thread (waking it at once; an RPC it has in flight finishes
  // first, bounded by the client's deadlines), then, if READY was ever sent, marks the record
  // STALE (best effort: a failure is logged). Because the thread is joined first, no heartbeat
  // can overwrite STALE. Idempotent; a publisher cannot be restarted.
  void Stop();

  // After Start() with start_initializing: marks the record READY, and heartbeats keep it so.
  // FailedPrecondition before Start(); OK at once when already READY.
  Status MarkReady();

  // Valid after a successful Start().
  std::string mx_source_id() const;
  const std::string& worker_id() const { return worker_id_; }
  absl::Duration heartbeat_interval() const { return interval_; }

  // Counters, for tests and metrics.
  int heartbeat_count() const;         // successful READY refreshes by the thread
  int failed_heartbeat_count() const;  // ticks that ended in an error
  int republish_count() const;         // re-publishes after the server forgot the record

 private:
  enum class State { kNew, kRunning, kStopped };

  Publisher(PublisherOptions options, std::string worker_id, absl::Duration interval);

  // Publish + READY. Used by Start() and by the thread after NotFound.
  Status PublishAndMarkReady();
  // UpdateStatus(status) with the current source_load.
  Status SendStatus(const std::string& mx_source_id, ::model_express::p2p::SourceStatus status);
  void Run();
  void Tick();

  const PublisherOptions options_;
  const std::string worker_id_;
  const absl::Duration interval_;

  // Serializes Start() and Stop(); never taken by the heartbeat thread.
  absl::Mutex lifecycle_mu_;
  State state_ ABSL_GUARDED_BY(lifecycle_mu_) = State::kNew;
  std::thread thread_ ABSL_GUARDED_BY(lifecycle_mu_);

  mutable absl::Mutex mu_;
  bool stop_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool ready_sent_ ABSL_GUARDED_BY(mu_) = false;
  bool ready_ ABSL_GUARDED_BY(mu_) = false;  // the status heartbeats send: READY, or INITIALIZING
  std::string mx_source_id_ ABSL_GUARDED_BY(mu_);
  int heartbeat_count_ ABSL_GUARDED_BY(mu_) = 0;
  int failed_heartbeat_count_ ABSL_GUARDED_BY(mu_) = 0;
  int republish_count_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ferry

#endif  // FERRY_PUBLISHER_H_
