// MetadataStore: where ferry-server keeps worker records. One interface, several backends
// (memory now, Redis later), all held to the same conformance suite (store_conformance.h).
//
// Data model (contract section 5.1): records are keyed by (mx_source_id, worker_id, rank). A
// worker (mx_source_id, worker_id) has one or more rank records and a representative rank, the
// rank of its most recent Publish. Per mx_source_id the store keeps the last published
// SourceIdentity in its original case.
//
// Thread safety: every implementation is thread-safe; all methods may be called concurrently.
// Errors: NotFound for a missing record, Aborted for a lost compare-and-set, PermissionDenied
// when the caller does not own the worker or source, ResourceExhausted when a principal would
// own too many workers, Unavailable when the backend cannot be reached.
// Never NotFound for a backend failure.
#ifndef FERRY_STORE_METADATA_STORE_H_
#define FERRY_STORE_METADATA_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ferry/status.h"
#include "model_express/p2p.pb.h"

namespace ferry::store {

using ::model_express::p2p::SourceIdentity;
using ::model_express::p2p::SourceStatus;
using ::model_express::p2p::WorkerMetadata;

// What a Publish writes. The caller (the P2P service) has already validated and normalized
// `worker`: status and updated_at are final, the tensor list lives in source_payload.
struct PublishRecord {
  std::string mx_source_id;
  SourceIdentity identity;  // stored per mx_source_id, last writer wins
  std::string worker_id;
  WorkerMetadata worker;  // the rank is worker.worker_rank()
  std::string owner;      // principal that published; empty when authentication is off
  // Ownership: a worker already owned by another non-empty principal may only be replaced when
  // this is true (an admin); otherwise Publish fails with PermissionDenied. Likewise a source
  // (mx_source_id) belongs to the non-empty principal whose Publish created it, until its last
  // worker is removed: a Publish by another non-empty principal that is not override_owner is
  // PermissionDenied, whichever worker it names.
  bool override_owner = false;
  // When > 0: Publish fails with ResourceExhausted (and writes nothing) if it would give `owner`
  // more than this many workers across all sources. Workers published with an empty owner
  // (authentication off) count as one principal's. 0: no limit.
  uint64_t max_owner_workers = 0;
};

// One worker as ListWorkers reports it: the representative rank's fields.
struct WorkerSummary {
  std::string mx_source_id;
  std::string worker_id;
  std::string model_name;  // from the stored identity, original case
  uint32_t worker_rank = 0;
  SourceStatus status = model_express::p2p::SOURCE_STATUS_UNKNOWN;
  // Bit (1u << status) is set for the status of every rank record of this worker, so that a
  // status filter can match "any rank has this status" (contract 5.3 step 2).
  uint32_t status_mask = 0;
  std::string accelerator;
  int64_t updated_at = 0;  // unix ms
  std::optional<uint64_t> training_step;
  std::optional<std::string> layout_signature;
  // The representative rank's WorkerMetadata.topology, as published.
  std::map<std::string, std::string> topology;
  // The representative rank's last reported source_load (UpdateStatus); unset when its last
  // heartbeat carried none, or it has sent none since it was published.
  std::optional<float> source_load;
  // Changes on every write to this worker; pass it back as a compare-and-set token.
  uint64_t version = 0;
  std::string owner;
};

// The record GetWorker returns: the lowest-rank record of the worker.
struct WorkerDetail {
  WorkerMetadata worker;
  std::optional<SourceIdentity> identity;
  std::string owner;
  uint64_t version = 0;
};

struct ListQuery {
  // Only workers of this source; all workers when unset.
  std::optional<std::string> mx_source_id;
};

struct StatusUpdate {
  std::string mx_source_id;
  std::string worker_id;
  // The rank to update; unset updates every rank of the worker (the reaper's mark-stale).
  std::optional<uint32_t> worker_rank;
  SourceStatus status = model_express::p2p::SOURCE_STATUS_UNKNOWN;
  int64_t updated_at = 0;  // server clock, unix ms
  // If set, the update happens only if the worker's version still equals it; else Aborted.
  std::optional<uint64_t> expected_version;
  // The principal asking. Unless override_owner (an admin, or the reaper), a worker owned by a
  // different non-empty principal is PermissionDenied.
  std::string caller;
  bool override_owner = false;
  // What the worker reported as its load (UpdateStatusRequest.source_load). With worker_rank
  // set, it replaces that rank's stored load, an unset value clearing it (the worker has no
  // reading now; so does a value that is not a finite number); an update of every rank
  // (worker_rank unset, the reaper) leaves loads alone.
  std::optional<float> source_load;
};

namespace internal {

// The errors every backend returns for the source-ownership and owner-worker checks of Publish.
inline Status SourceOwnerDenied(const std::string& owner, const std::string& caller,
                                const std::string& source_id) {
  return absl::PermissionDeniedError(absl::StrCat(
      "source '", source_id, "' belongs to principal '", owner,
      "', which first published under it; principal '", caller,
      "' may not publish workers under it: only '", owner, "' or an admin principal may"));
}

inline Status OwnerWorkersExhausted(const std::string& owner, uint64_t limit) {
  return absl::ResourceExhaustedError(
      absl::StrCat(owner.empty() ? std::string("the anonymous principal (authentication off)")
                                 : absl::StrCat("principal '", owner, "'"),
                   " already owns ", limit, " workers, the limit"));
}

}  // namespace internal

class MetadataStore {
 public:
  virtual ~MetadataStore() = default;

  // Human-readable backend description for logs and errors ("memory", "redis://host:port/0").
  virtual std::string Describe() const = 0;

  // Inserts or replaces the record of (mx_source_id, worker_id, worker.worker_rank()), makes
  // that rank the representative, records the owner, and replaces the source's stored
  // identity. All or nothing. PermissionDenied (and nothing written) when the worker or the
  // source is owned by another principal and !override_owner; ResourceExhausted when the owner
  // would exceed max_owner_workers.
  virtual Status Publish(const PublishRecord& record) = 0;

  // One summary per worker, in no particular order.
  virtual StatusOr<std::vector<WorkerSummary>> ListWorkers(const ListQuery& query) = 0;

  // The worker's lowest-rank record. NotFound if the worker has no record.
  virtual StatusOr<WorkerDetail> GetWorker(const std::string& mx_source_id,
                                           const std::string& worker_id) = 0;

  // Sets status and updated_at (and, for one rank, its source_load). Never creates a record:
  // NotFound when the worker or the rank does not exist; Aborted when expected_version is set and
  // no longer matches; PermissionDenied when the caller does not own the worker.
  virtual Status UpdateStatus(const StatusUpdate& update) = 0;

  // Deletes the worker with all its ranks; the source goes away with its last worker.
  // NotFound if absent; Aborted if expected_version is set and no longer matches.
  virtual Status RemoveWorker(const std::string& mx_source_id, const std::string& worker_id,
                              std::optional<uint64_t> expected_version) = 0;

  // OK when the backend can serve requests; Unavailable otherwise. Used by health checks.
  virtual Status Ping() = 0;
};

}  // namespace ferry::store

#endif  // FERRY_STORE_METADATA_STORE_H_
