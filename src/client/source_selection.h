// Choosing which sources a target tries, and in which order (contract section 10.1, step 5).
#ifndef FERRY_CLIENT_SOURCE_SELECTION_H_
#define FERRY_CLIENT_SOURCE_SELECTION_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "ferry/metadata_client.h"
#include "ferry/source_identity.h"
#include "ferry/status.h"

namespace ferry {

// Whether a target with accelerator `target` can take weights from a source with `source`, as
// ModelExpress decides it: empty on either side (unknown) is accepted; the same family (case
// insensitive) is accepted; cuda<->xpu only for unquantized fp32/fp16/bf16 weights
// (`dtype`, `quantization` from the identity); anything else is refused.
bool AcceleratorsCompatible(absl::string_view target, absl::string_view source,
                            absl::string_view dtype, absl::string_view quantization);

// The rendezvous score of `candidate` for the target (model, worker id, rank): the first 8
// bytes, big-endian, of SHA-256 over
// "{model_name}|{target_worker_id}|{target_rank}|{mx_source_id}|{worker_id}|{worker_rank}".
// (ModelExpress uses blake2b-64 over the same text; OpenSSL 3.0 has no 64-bit blake2b, and the
// order only needs to be stable and well spread, not identical.)
uint64_t RendezvousScore(absl::string_view model_name, absl::string_view target_worker_id,
                         uint32_t target_rank, const SourceInstanceRef& candidate);

struct SourceSelection {
  std::string model_name;
  uint32_t worker_rank = 0;
  // false: every rank is a candidate (artifact caches are per node, not per rank);
  // worker_rank still seeds the order.
  bool match_rank = true;
  std::string accelerator;  // the target's; "" accepts every source
  std::string dtype;
  std::string quantization;
  std::string target_worker_id;  // seeds the rendezvous order

  // Topology-aware ordering (ModelExpress 0.7.0's topology_aware): the target's own datacenter
  // domains ({rack: r3, block: b1, ...}); sources sharing a narrower domain with it come first.
  // Empty: no locality preference.
  std::map<std::string, std::string> topology;
  // The domains, broad to narrow. Default: Grove's ClusterTopology order, as ModelExpress.
  std::vector<std::string> topology_levels = DefaultTopologyLevels();

  // Load-aware ordering (ModelExpress 0.7.0's load_aware): within one locality tier the score is
  // rendezvous_score / 2^64 - load_weight * source_load, so a busy source sinks by up to
  // load_weight and sources that all report 0 stay in rendezvous order. A source that reported
  // no load counts as kUnknownSourceLoad. 0: ignore loads.
  double load_weight = 1.0;

  static std::vector<std::string> DefaultTopologyLevels() {
    return {"region", "zone", "datacenter", "block", "rack", "host", "numa"};
  }
};

// The load a source that reported none is assumed to have (ModelExpress's UNKNOWN_LOAD_PRIOR):
// neither preferred over sources that report idle nor buried under busy ones.
inline constexpr double kUnknownSourceLoad = 0.5;

// How many levels of `levels` (broad to narrow) the two topologies share as a prefix: the index
// of the narrowest shared level, -1 when none. A level absent on both sides is skipped; one
// present on one side only, or different, ends the prefix (domain values are unique only
// within their parent).
int SharedTopologyDepth(const std::vector<std::string>& levels,
                        const std::map<std::string, std::string>& target,
                        const google::protobuf::Map<std::string, std::string>& source);

// Keeps the refs with the target's rank (when match_rank) and a compatible accelerator, and
// orders them by, first to last: the narrowest topology domain shared with the target
// (descending); rendezvous score minus the load penalty (descending; see load_weight); then
// mx_source_id and worker_id. Many targets spread over many sources, nearby and idle sources
// first, and one target always tries them in the same order.
std::vector<SourceInstanceRef> OrderCandidates(const std::vector<SourceInstanceRef>& refs,
                                               const SourceSelection& selection);

// What a target may try: the READY workers of `identity` that `selection` keeps, in its order.
struct Candidates {
  std::vector<SourceInstanceRef> ordered;
  size_t ready = 0;  // READY workers of the identity before filtering
};

// ListSources(identity, `status`) then OrderCandidates. A listing failure keeps its code, with a
// message naming `who` (the identity in words).
StatusOr<Candidates> ListCandidates(
    MetadataClient& client, const SourceIdentity& identity, const SourceSelection& selection,
    const std::string& who,
    ::model_express::p2p::SourceStatus status = ::model_express::p2p::SOURCE_STATUS_READY);

// One source a target tried.
struct SourceAttempt {
  std::string mx_source_id;
  std::string worker_id;
  std::string endpoint;  // its worker endpoint, once known
  Status status;
  uint64_t bytes = 0;  // bytes it delivered (a striped weight pull)
};

// What one try tells TryCandidates: OK (done), a failure after which the next source may still
// succeed (built implicitly from any Status, so `return status;` and FERRY_RETURN_IF_ERROR work
// in a function returning TryVerdict), or StopTrying(status): no other source can help, because
// the failure is the target's own and the same at every source (the caller's model does not
// match the identity's layout, for example).
class TryVerdict {
 public:
  TryVerdict(Status status) : status_(std::move(status)) {}  // NOLINT: implicit by design

  const Status& status() const { return status_; }
  bool stop() const { return stop_; }

 private:
  friend TryVerdict StopTrying(Status status);
  Status status_;
  bool stop_ = false;
};

// The verdict that ends TryCandidates with `status`, unchanged. REQUIRES: !status.ok().
TryVerdict StopTrying(Status status);

// Tries `candidates` in order, at most `max_tries` of them: appends an attempt for each to
// `attempts` and calls `try_one(ref, &attempt)` (which may set attempt.endpoint) until one
// returns OK or a StopTrying verdict; each failure is logged. Returns the index of the
// successful candidate; the stopping status itself, unchanged; or, when every source tried
// failed, "could not pull WHO: N of M READY source(s) tried, all failed (NOTE):" followed by one
// line per attempt, with the code every attempt failed with when that is UNAUTHENTICATED,
// PERMISSION_DENIED, FAILED_PRECONDITION or INVALID_ARGUMENT (AggregateCode), else UNAVAILABLE.
StatusOr<size_t> TryCandidates(
    const std::vector<SourceInstanceRef>& candidates, int max_tries, const std::string& who,
    const std::string& note, std::vector<SourceAttempt>* attempts,
    const std::function<TryVerdict(const SourceInstanceRef&, SourceAttempt*)>& try_one);

// "could not pull WHO: N of M READY source(s) tried, all failed (NOTE):" and one line per
// attempt, with AggregateCode's code: TryCandidates' error, for flows that try sources their own
// way. REQUIRES: !attempts.empty().
Status AllFailed(const std::vector<SourceAttempt>& attempts, size_t listed, const std::string& who,
                 const std::string& note);

// The code of TryCandidates' error when every attempt in `attempts` (at least one) failed: the
// code they all share if it is one the caller must act on (see the .cc file), else UNAVAILABLE.
absl::StatusCode AggregateCode(absl::Span<const SourceAttempt> attempts);

}  // namespace ferry

#endif  // FERRY_CLIENT_SOURCE_SELECTION_H_
