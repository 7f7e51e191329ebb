// What an artifact source's worker endpoint serves: one sealed artifact (a compile-cache
// snapshot held in a registered region), answered through ModelExpress's artifact RPCs
// (contract section 11: header, chunk pages, Prepare/Release leases) and ferry's
// GetArtifactTransferInfo (the transfer blob, where each file sits in the region, the source
// root, and the signature).
#ifndef FERRY_WORKER_ARTIFACT_STATE_H_
#define FERRY_WORKER_ARTIFACT_STATE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "artifacts/manifest.h"
#include "ferry/status.h"
#include "ferry/v1/worker.pb.h"
#include "model_express/p2p.pb.h"
#include "worker/lease_options.h"

namespace ferry::worker {

// One sealed artifact in registered memory. Plain data, filled by the artifact publish flow.
struct ArtifactServing {
  std::string worker_id;  // required
  uint32_t worker_rank = 0;
  uint32_t node_rank = 0;
  std::string accelerator;
  std::string agent_name;  // ModelExpress's NIXL fields; empty for ferry sources
  std::string metadata_endpoint;
  artifacts::Manifest manifest;  // sealed from the snapshot's bytes
  std::string source_root;       // canonical root every manifest path starts with
  std::string transfer_blob;     // serialized ferry.v1.TransferBlob
  uint32_t region = 0;           // region id of the snapshot in the blob
  uint64_t region_base_address = 0;
  uint64_t region_bytes = 0;
  std::vector<uint64_t> file_offsets;  // by file_index: where the file's bytes start in the region
  std::string signature;               // Ed25519, 64 bytes; empty: unsigned
  std::string signing_public_key;      // raw 32 bytes; empty: unsigned
};

// Thread-safe. The artifact is immutable; the mx_source_id is set once published, and leases
// change under a mutex.
class ArtifactState {
 public:
  // InvalidArgument naming the field when `serving` is unusable: empty worker_id, a manifest
  // that fails ValidateManifest, a file_offsets list of the wrong length, a file outside the
  // region, a manifest path outside source_root, or a signature without a key (or vice versa).
  static StatusOr<std::unique_ptr<ArtifactState>> Create(ArtifactServing serving,
                                                         LeaseOptions leases = {});

  ArtifactState(const ArtifactState&) = delete;
  ArtifactState& operator=(const ArtifactState&) = delete;

  const ArtifactServing& serving() const { return serving_; }
  const artifacts::SourceSummary& summary() const { return summary_; }
  const std::string& artifact_id() const { return summary_.artifact_id; }

  std::string mx_source_id() const;  // "" until set
  void SetMxSourceId(std::string mx_source_id);

  // The selection rules of contract section 11: a non-empty mx_source_id other than the served
  // one is FailedPrecondition; a non-empty artifact_id other than the served one is
  // FailedPrecondition. `mx_source_id_now` receives the served id.
  Status Check(std::string_view mx_source_id, std::string_view artifact_id,
               std::string* mx_source_id_now) const;

  void FillHeader(const std::string& mx_source_id,
                  model_express::p2p::GetArtifactManifestHeaderResponse* response) const;
  // InvalidArgument when start_chunk_index > chunk_count. Page size min(max_chunks or 1024, 1024).
  Status FillChunks(const std::string& mx_source_id, uint32_t start_chunk_index,
                    uint32_t max_chunks,
                    model_express::p2p::GetArtifactManifestChunksResponse* response) const;
  // A lease on one chunk's range: InvalidArgument for an index out of range, ResourceExhausted
  // when max_leases are outstanding (expired leases are dropped first).
  Status Prepare(const std::string& mx_source_id, uint32_t chunk_index,
                 model_express::p2p::PrepareArtifactChunkResponse* response);
  // NotFound for an unknown or expired lease.
  Status Release(const std::string& mx_source_id, std::string_view lease_id,
                 model_express::p2p::ReleaseArtifactChunkResponse* response);
  void FillTransferInfo(const std::string& mx_source_id,
                        ferry::v1::GetArtifactTransferInfoResponse* response) const;

  int outstanding_leases() const;

 private:
  ArtifactState(ArtifactServing serving, LeaseOptions leases);
  void DropExpiredLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FillChunk(uint32_t index, model_express::p2p::ArtifactManifestChunk* out) const;

  const ArtifactServing serving_;
  const LeaseOptions lease_options_;
  artifacts::SourceSummary summary_;

  mutable absl::Mutex mu_;
  std::string mx_source_id_ ABSL_GUARDED_BY(mu_);
  struct Lease {
    uint32_t chunk_index = 0;
    absl::Time expires;
  };
  std::map<std::string, Lease> leases_ ABSL_GUARDED_BY(mu_);
  const std::function<absl::Time()> now_;  // LeaseOptions::clock_for_test, or absl::Now
};

// Converts between the manifest and its protobuf form.
void ManifestFileToProto(const artifacts::ManifestFile& file,
                         model_express::p2p::ArtifactManifestFile* out);
void ManifestChunkToProto(const artifacts::ManifestChunk& chunk,
                          model_express::p2p::ArtifactManifestChunk* out);
artifacts::ManifestFile ManifestFileFromProto(const model_express::p2p::ArtifactManifestFile& f);
artifacts::ManifestChunk ManifestChunkFromProto(const model_express::p2p::ArtifactManifestChunk& c);

}  // namespace ferry::worker

#endif  // FERRY_WORKER_ARTIFACT_STATE_H_
