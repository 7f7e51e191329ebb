// The target side of a peer-to-peer weight transfer: find READY sources of an identity, pick
// them in rendezvous order, and read one source's tensors into a region of the local
// TransferEngine, verifying every checksum. Used by `ferry pull`.
#ifndef FERRY_FLOWS_WEIGHT_PULLER_H_
#define FERRY_FLOWS_WEIGHT_PULLER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "client/source_selection.h"
#include "ferry/metadata_client.h"
#include "ferry/status.h"
#include "ferry/transfer.h"
#include "flows/weight_source.h"
#include "worker/worker_client.h"

namespace ferry::weights {

struct PullProgress {
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
  std::string source;  // the worker being read, e.g. "worker ab12 at 10.0.0.5:6555"
};

struct PullOptions {
  MetadataClient* client = nullptr;  // borrowed; required
  TransferEngine* engine = nullptr;  // borrowed; required: the pulled region belongs to it
  SourceIdentity identity;           // model_name required
  uint32_t worker_rank = 0;
  std::string accelerator = "cpu";  // the target's; "" accepts every source
  std::string target_worker_id;     // seeds the rendezvous order; empty: GenerateWorkerId()
  // This node's datacenter domains ({rack: r3, block: b1, ...}, ModelExpress 0.7.0): sources
  // sharing the narrowest domain are tried first. Empty: no locality preference.
  std::map<std::string, std::string> topology;
  TransportKind transport = TransportKind::kAuto;
  int max_sources = 3;  // sources tried before giving up; 1..16
  // Token, TLS and deadline for the sources' worker endpoints (`endpoint` is set per source).
  worker::WorkerClientOptions endpoint;
  // Limit for reading one source's tensors.
  absl::Duration transfer_timeout = absl::Seconds(300);
  // A transfer during which no byte lands for this long is abandoned and the next source tried
  // (a hung or stopped source). Zero: only transfer_timeout applies.
  absl::Duration stall_timeout = absl::Seconds(15);
  int verify_threads = 2;
  // The pulled weights will be served afterwards (`ferry pull --then-publish`): the destination
  // is shareable engine memory, which every transport can serve (a memfd when shared memory is
  // enabled). Otherwise it is plain anonymous memory registered with the engine, cheaper to
  // prepare (AllocateOptions::shareable).
  bool servable = false;
  // When the destination's pages (PullWeights) are faulted in: ahead of the transfer, on one
  // thread running before the bytes (the default: preparing overlaps moving), or all before
  // the transfer starts.
  enum class PreparePages { kAhead, kBefore };
  PreparePages prepare = PreparePages::kAhead;
  // Called about ten times a second from a helper thread while bytes move, and once at the end.
  std::function<void(const PullProgress&)> on_progress;
  // Reads are submitted in batches of this many bytes (0: one batch), with `batch_pause`
  // between batches. For tests that must act while a transfer is under way.
  uint64_t batch_bytes = 0;
  absl::Duration batch_pause = absl::ZeroDuration();
};

// One source tried.
using PullAttempt = SourceAttempt;

struct PullResult {
  ServedModel model;  // in a region of options.engine; tensors contiguous in source order
  std::string mx_source_id;
  std::string source_worker_id;
  std::string source_endpoint;
  std::string peer;  // the engine's description of the peer
  TransportKind transport = TransportKind::kAuto;
  uint64_t bytes = 0;
  absl::Duration total_time;          // from the call to the verified result
  absl::Duration transfer_time;       // reading the successful source's bytes
  absl::Duration verify_time;         // checksumming still left when the transfer ended
                                      // (tensors are verified as they land)
  std::vector<PullAttempt> attempts;  // every source tried, the successful one last
};

// NotFound naming the identity when no READY source of this rank and accelerator exists;
// otherwise tries up to max_sources sources in rendezvous order and returns the first verified
// copy. Each failure (record gone, endpoint unreachable, refused worker_id, transfer error or
// timeout, checksum mismatch) moves to the next source; if all fail the error lists what
// happened at each. Never returns unverified data.
StatusOr<PullResult> PullWeights(const PullOptions& options);

}  // namespace ferry::weights

#endif  // FERRY_FLOWS_WEIGHT_PULLER_H_
