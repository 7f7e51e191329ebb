// The source side of a peer-to-peer compile-cache transfer: a directory snapshotted into one
// registered region of a TransferEngine, sealed (contract section 4), optionally signed, served
// by a worker endpoint (ModelExpress's artifact RPCs plus ferry's GetArtifactTransferInfo) and
// published to ferry-server as an artifact source with heartbeats. Used by
// `ferry artifact publish`.
#ifndef FERRY_FLOWS_ARTIFACT_SOURCE_H_
#define FERRY_FLOWS_ARTIFACT_SOURCE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "artifacts/manifest.h"
#include "artifacts/signing.h"
#include "ferry/metadata_client.h"
#include "ferry/publisher.h"
#include "ferry/status.h"
#include "ferry/transfer.h"
#include "worker/artifact_state.h"
#include "worker/serving.h"
#include "worker/worker_server.h"

namespace ferry::artifacts {

struct ArtifactSourceOptions {
  MetadataClient* client = nullptr;  // borrowed; required
  TransferEngine* engine = nullptr;  // borrowed; required (the snapshot's region belongs to it)
  // model_name required; mx_source_type must be an artifact type (3..9) and equal
  // seal.mx_source_type.
  SourceIdentity identity;
  std::string root;  // the cache directory
  SealOptions seal;
  uint32_t worker_rank = 0;
  uint32_t node_rank = 0;
  std::string accelerator;  // "" (unknown) is accepted by every target
  std::string worker_id;    // empty: GenerateWorkerId()
  // This node's datacenter domains, published as WorkerMetadata.topology (ModelExpress 0.7.0)
  // for topology-aware targets. Empty: none.
  std::map<std::string, std::string> topology;
  // Signs the artifact when set. Borrowed; only used in Create().
  const SigningKey* signing_key = nullptr;
  // Listen/advertise address, token and TLS of the worker endpoint (`artifacts` is set here).
  worker::WorkerServerOptions endpoint;
  worker::LeaseOptions leases;
  std::optional<absl::Duration> heartbeat_interval;  // unset: the Publisher's default
};

// Thread-compatible.
class ArtifactSource {
 public:
  // Validates options, snapshots and seals options.root (retrying up to 3 times when the tree
  // changes while it is copied), signs. Starts nothing.
  static StatusOr<std::unique_ptr<ArtifactSource>> Create(ArtifactSourceOptions options);
  ~ArtifactSource();  // Stop()s
  ArtifactSource(const ArtifactSource&) = delete;
  ArtifactSource& operator=(const ArtifactSource&) = delete;

  // Starts the worker endpoint, publishes the record (artifact_source payload), marks it READY
  // and starts heartbeats. On failure nothing keeps running.
  Status Start();
  // Marks the record STALE, then closes the endpoint. Idempotent.
  void Stop();

  const std::string& mx_source_id() const { return mx_source_id_; }
  const std::string& worker_id() const { return worker_id_; }
  const std::string& artifact_id() const { return state_->artifact_id(); }
  const SourceSummary& summary() const { return state_->summary(); }
  const Snapshot& snapshot() const { return snapshot_; }
  bool signed_artifact() const { return !state_->serving().signature.empty(); }
  std::string endpoint() const;  // worker endpoint host:port; "" before Start()
  const worker::ArtifactState& state() const { return *state_; }

  // The registered memory holding the snapshot, which peers read: the files back to back in
  // manifest order (snapshot().file_offsets), summary().total_size bytes. Valid until this
  // source is destroyed.
  const Region& region() const { return *region_; }

 private:
  ArtifactSource(ArtifactSourceOptions options, std::string worker_id, std::string mx_source_id);

  ArtifactSourceOptions options_;
  const std::string worker_id_;
  const std::string mx_source_id_;
  std::unique_ptr<Region> region_;
  Snapshot snapshot_;
  std::unique_ptr<worker::ArtifactState> state_;
  std::unique_ptr<worker::Serving> serving_;
  bool stopped_ = false;
};

}  // namespace ferry::artifacts

#endif  // FERRY_FLOWS_ARTIFACT_SOURCE_H_
