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
#include "weights/tensor_checksum.h"
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
  int max_sources = 3;  // sources opened in all before giving up; 1..16
  // Sources read at once (a striped pull): the pull's pieces are handed out to them
  // dynamically, and when one fails, stalls or serves bytes that fail verification, another
  // candidate (up to max_sources in all) takes its place and only the missing bytes are read.
  // 1..16.
  int stripe = 1;
  // Also read from targets that are still pulling this model and serve what they have verified
  // (INITIALIZING ferry workers that answer GetHeldTensors): each piece is read only from a
  // source that holds it, what they hold is polled every 200 ms, and they are tried after the
  // READY sources. The worker `target_worker_id` (this target's own record) is never read from.
  bool read_partial_sources = true;
  // Serving while pulling (file pulls): called once the destination exists and before any
  // byte is read, with the model as it will be served and which of its tensors are verified
  // (marked as the pull verifies them). The destination region is handed over with `model`:
  // the caller keeps it alive, and PullResult::model then has no region. An error stops the
  // pull.
  std::function<Status(ServedModel model, std::shared_ptr<worker::HeldTensors> held)>
      serve_while_pulling;
  // Token, TLS and deadline for the sources' worker endpoints (`endpoint` is set per source).
  worker::WorkerClientOptions endpoint;
  // Limit for reading one source's tensors.
  absl::Duration transfer_timeout = absl::Seconds(300);
  // A transfer during which no byte lands for this long is abandoned and the next source tried
  // (a hung or stopped source). Zero: only transfer_timeout applies.
  absl::Duration stall_timeout = absl::Seconds(15);
  int verify_threads = 2;
  // A file pull's destination: -1 host memory; N: device memory of GPU N (cuda:N), where the
  // tensors are verified (the tree checksum on the GPU, xxh3-64 over a copy in host memory).
  int device = -1;
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
};

// One source tried.
using PullAttempt = SourceAttempt;

struct PullResult {
  ServedModel model;  // in a region of options.engine; tensors contiguous in source order
  // The source that delivered the most bytes:
  std::string mx_source_id;
  std::string source_worker_id;
  std::string source_endpoint;
  std::string peer;  // the engine's description of the peer
  TransportKind transport = TransportKind::kAuto;
  // How the bytes moved ("tcp", "cuda_ipc", "tcp+staged": Peer::path) and why auto chose the
  // transport (Peer::choice; empty for an explicit --transport).
  std::string path;
  std::string transport_choice;
  ChecksumAlgorithm checksum_algorithm = ChecksumAlgorithm::kXxh3_64;  // what was verified
  uint64_t bytes = 0;
  absl::Duration total_time;     // from the call to the verified result
  absl::Duration transfer_time;  // reading the bytes, over every round
  absl::Duration verify_time;    // checksumming still left when the transfer ended
                                 // (tensors are verified as they land)
  // Every source opened, in order, with the bytes of verified tensors each delivered and why it
  // stopped (OK for those that served until the end).
  std::vector<PullAttempt> attempts;
  int sources_used = 0;  // sources that delivered bytes
};

// NotFound naming the identity when no READY source of this rank and accelerator exists;
// otherwise opens up to `stripe` sources in rendezvous order and reads the model from all of
// them at once (flows/striped_read.h), every tensor verified as it lands. A source that fails
// (record gone, endpoint unreachable, refused worker_id, transfer error or stall, bytes that
// fail verification) is replaced by the next candidate, up to max_sources opened in all, and
// only what is missing is read; if every source fails the error lists what happened at each.
// Never returns unverified data.
StatusOr<PullResult> PullWeights(const PullOptions& options);

}  // namespace ferry::weights

#endif  // FERRY_FLOWS_WEIGHT_PULLER_H_
