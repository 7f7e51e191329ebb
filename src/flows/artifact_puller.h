// The target side of a peer-to-peer compile-cache transfer: under a node-wide install lock, find
// READY artifact sources of an identity, fetch and validate the sealed manifest (contract 4.3),
// decide trust (Ed25519 signature by a trusted key), read the snapshot one-sided through the
// transfer engine, verify every chunk and file CRC32C, stage the files beside the target
// directory and install them atomically. Used by `ferry artifact pull`.
#ifndef FERRY_FLOWS_ARTIFACT_PULLER_H_
#define FERRY_FLOWS_ARTIFACT_PULLER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "artifacts/install.h"
#include "artifacts/signing.h"
#include "client/source_selection.h"
#include "ferry/metadata_client.h"
#include "ferry/source_identity.h"
#include "ferry/status.h"
#include "ferry/transfer.h"
#include "worker/worker_client.h"

namespace ferry::artifacts {

struct ArtifactPullProgress {
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
  std::string source;  // e.g. "worker ab12 at 10.0.0.5:6555"
};

struct ArtifactPullOptions {
  MetadataClient* client = nullptr;  // borrowed; required
  TransferEngine* engine = nullptr;  // borrowed; required
  SourceIdentity identity;           // model_name and an artifact mx_source_type required
  std::string into;                  // the live cache directory to install into; required
  uint32_t node_rank = 0;            // sources must publish this node_rank
  std::string accelerator;           // the target's; "" accepts every source
  std::string target_worker_id;      // seeds the rendezvous order; empty: GenerateWorkerId()
  // This node's datacenter domains ({rack: r3, block: b1, ...}, ModelExpress 0.7.0): sources
  // sharing the narrowest domain are tried first. Empty: no locality preference.
  std::map<std::string, std::string> topology;
  TransportKind transport = TransportKind::kAuto;
  int max_sources = 3;  // 1..16
  // Token, TLS and deadline for the sources' worker endpoints (`endpoint` is set per source).
  worker::WorkerClientOptions endpoint;
  absl::Duration transfer_timeout = absl::Seconds(600);
  absl::Duration stall_timeout = absl::Seconds(15);  // zero: only transfer_timeout
  // Keys whose signatures are trusted. Borrowed; may be null (= the empty set).
  const TrustedKeys* trusted = nullptr;
  // Install unsigned artifacts, or ones signed by an untrusted key, with a warning naming the
  // source. A trusted key's bad signature is refused regardless.
  bool allow_unsigned = false;
  InstallLimits limits;
  // Node-wide lock and markers; required. The ferry command and the Python package pass
  // --state-dir / state_dir, else FERRY_ARTIFACT_STATE_DIR, else kDefaultArtifactStateDir.
  std::string state_dir;
  absl::Duration lock_timeout = absl::Minutes(30);
  // After a pull whose sources all failed, other pulls of the same artifact into the same
  // directory on this node fail at once for this long instead of repeating the transfer.
  absl::Duration failure_ttl = absl::Seconds(120);
  // Pull even if a marker says this artifact was installed (or recently failed) here.
  bool force = false;
  // Bytes read per round (chunks are read, verified and written a window at a time); raised to
  // the largest chunk when smaller. Default 256 MiB.
  uint64_t window_bytes = uint64_t{256} << 20;
  std::function<void(const ArtifactPullProgress&)> on_progress;
  std::function<void(int holder_pid)> on_lock_wait;
};

using ArtifactPullAttempt = SourceAttempt;

struct ArtifactPullResult {
  // false: a marker showed another pull on this node already installed it (nothing moved).
  bool installed = false;
  std::string installed_into;  // canonical target directory
  std::string artifact_id;
  std::string mx_source_id;
  std::string source_worker_id;
  std::string source_endpoint;
  TransportKind transport = TransportKind::kAuto;
  TrustDecision trust = TrustDecision::kTrusted;
  std::string signer;  // fingerprint of the signing key; "" when unsigned
  uint64_t bytes = 0;
  uint64_t files = 0;
  absl::Duration total_time;
  absl::Duration transfer_time;  // reading, verifying and staging the successful source
  absl::Duration install_time;   // the atomic commit
  std::vector<ArtifactPullAttempt> attempts;
};

// NotFound naming the identity when no READY artifact source exists (no marker is written:
// a source may appear soon); FailedPrecondition when a recent failure marker is active;
// DeadlineExceeded when the install lock is not acquired in time. Otherwise tries up to
// max_sources sources in rendezvous order; each failure (record gone, wrong node_rank,
// unreachable endpoint, manifest that fails validation, untrusted or bad signature, path that
// would escape `into`, transfer error or stall, CRC mismatch) moves to the next source. If all
// fail, writes the failure marker and returns Unavailable listing every attempt. `into` is
// untouched unless the result is OK.
StatusOr<ArtifactPullResult> PullArtifact(const ArtifactPullOptions& options);

// ArtifactPullOptions.state_dir when the caller has none: the ferry command and the Python
// package use FERRY_ARTIFACT_STATE_DIR when it is set (the library reads no environment).
inline constexpr char kDefaultArtifactStateDir[] = "/tmp/ferry-artifacts";

}  // namespace ferry::artifacts

#endif  // FERRY_FLOWS_ARTIFACT_PULLER_H_
