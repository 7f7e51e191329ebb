#include "client/source_selection.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/hashing.h"
#include "common/logging.h"

namespace ferry {

namespace {

bool Unquantized(absl::string_view dtype, absl::string_view quantization) {
  std::string d = absl::AsciiStrToLower(dtype);
  if (absl::StartsWith(d, "torch.")) d = d.substr(6);
  const bool plain_dtype = d == "float32" || d == "fp32" || d == "float16" || d == "fp16" ||
                           d == "half" || d == "bfloat16" || d == "bf16" || d == "float";
  const std::string q = absl::AsciiStrToLower(quantization);
  return plain_dtype && (q.empty() || q == "none");
}

}  // namespace

bool AcceleratorsCompatible(absl::string_view target, absl::string_view source,
                            absl::string_view dtype, absl::string_view quantization) {
  if (target.empty() || source.empty()) return true;
  const std::string t = absl::AsciiStrToLower(target);
  const std::string s = absl::AsciiStrToLower(source);
  if (t == s) return true;
  const bool cross_gpu = (t == "cuda" && s == "xpu") || (t == "xpu" && s == "cuda");
  return cross_gpu && Unquantized(dtype, quantization);
}

uint64_t RendezvousScore(absl::string_view model_name, absl::string_view target_worker_id,
                         uint32_t target_rank, const SourceInstanceRef& candidate) {
  const std::string text = absl::StrCat(model_name, "|", target_worker_id, "|", target_rank, "|",
                                        candidate.mx_source_id(), "|", candidate.worker_id(), "|",
                                        candidate.worker_rank());
  const internal::Sha256Digest digest = internal::Sha256(text);
  uint64_t score = 0;
  for (int i = 0; i < 8; ++i) score = (score << 8) | digest[i];
  return score;
}

int SharedTopologyDepth(const std::vector<std::string>& levels,
                        const std::map<std::string, std::string>& target,
                        const google::protobuf::Map<std::string, std::string>& source) {
  int depth = -1;
  for (size_t i = 0; i < levels.size(); ++i) {
    auto t = target.find(levels[i]);
    auto s = source.find(levels[i]);
    const bool in_target = t != target.end();
    const bool in_source = s != source.end();
    if (!in_target && !in_source) continue;  // neither side knows this level
    if (!in_target || !in_source || t->second != s->second) break;
    depth = static_cast<int>(i);
  }
  return depth;
}

std::vector<SourceInstanceRef> OrderCandidates(const std::vector<SourceInstanceRef>& refs,
                                               const SourceSelection& selection) {
  struct Scored {
    int depth;
    double score;
    const SourceInstanceRef* ref;
  };
  std::vector<Scored> scored;
  for (const SourceInstanceRef& ref : refs) {
    if (selection.match_rank && ref.worker_rank() != selection.worker_rank) continue;
    if (!AcceleratorsCompatible(selection.accelerator, ref.accelerator(), selection.dtype,
                                selection.quantization)) {
      continue;
    }
    const uint64_t hrw = RendezvousScore(selection.model_name, selection.target_worker_id,
                                         selection.worker_rank, ref);
    double score = static_cast<double>(hrw) / 18446744073709551616.0;  // [0, 1)
    if (selection.load_weight > 0) {
      double load = kUnknownSourceLoad;
      if (ref.has_source_load() && !std::isnan(ref.source_load())) {
        load = std::clamp(static_cast<double>(ref.source_load()), 0.0, 1.0);
      }
      score -= selection.load_weight * load;
    }
    const int depth =
        selection.topology.empty()
            ? -1
            : SharedTopologyDepth(selection.topology_levels, selection.topology, ref.topology());
    scored.push_back({depth, score, &ref});
  }
  std::sort(scored.begin(), scored.end(), [](const Scored& a, const Scored& b) {
    return std::forward_as_tuple(b.depth, b.score, a.ref->mx_source_id(), a.ref->worker_id()) <
           std::forward_as_tuple(a.depth, a.score, b.ref->mx_source_id(), b.ref->worker_id());
  });
  std::vector<SourceInstanceRef> out;
  out.reserve(scored.size());
  for (const Scored& s : scored) out.push_back(*s.ref);
  return out;
}

StatusOr<Candidates> ListCandidates(MetadataClient& client, const SourceIdentity& identity,
                                    const SourceSelection& selection, const std::string& who,
                                    ::model_express::p2p::SourceStatus status) {
  ListSourcesRequest request;
  *request.mutable_identity() = identity;
  request.set_status_filter(status);
  StatusOr<std::vector<SourceInstanceRef>> refs = client.ListSources(request);
  if (!refs.ok()) {
    return Status(refs.status().code(),
                  absl::StrCat("listing sources for ", who, " failed: ", refs.status().message()));
  }
  return Candidates{OrderCandidates(*refs, selection), refs->size()};
}

TryVerdict StopTrying(Status status) {
  TryVerdict verdict(std::move(status));
  verdict.stop_ = true;
  return verdict;
}

absl::StatusCode AggregateCode(absl::Span<const SourceAttempt> attempts) {
  if (attempts.empty()) return absl::StatusCode::kUnavailable;
  const absl::StatusCode code = attempts.front().status.code();
  for (const SourceAttempt& a : attempts) {
    if (a.status.code() != code) return absl::StatusCode::kUnavailable;
  }
  switch (code) {
    // Failures that retrying, later or at other sources, will not cure: the caller must act.
    // Every source refused this target's credentials (UNAUTHENTICATED: fix the token) or its
    // principal (PERMISSION_DENIED: use another, or configure the source to trust it); every
    // source found the request malformed (INVALID_ARGUMENT: fix the input) or not applicable
    // in its state (FAILED_PRECONDITION: e.g. every record points at a restarted source, so
    // re-list, or the target's own setup does not fit the sources).
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kInvalidArgument:
      return code;
    // Everything else (dead or slow sources, corrupt bytes, busy endpoints, vanished records)
    // may pass: "try again later or load another way" is what UNAVAILABLE tells the caller.
    default:
      return absl::StatusCode::kUnavailable;
  }
}

StatusOr<size_t> TryCandidates(
    const std::vector<SourceInstanceRef>& candidates, int max_tries, const std::string& who,
    const std::string& note, std::vector<SourceAttempt>* attempts,
    const std::function<TryVerdict(const SourceInstanceRef&, SourceAttempt*)>& try_one) {
  const size_t first = attempts->size();
  const size_t tries = std::min<size_t>(candidates.size(), static_cast<size_t>(max_tries));
  for (size_t i = 0; i < tries; ++i) {
    const SourceInstanceRef& ref = candidates[i];
    SourceAttempt& attempt = attempts->emplace_back();
    attempt.mx_source_id = ref.mx_source_id();
    attempt.worker_id = ref.worker_id();
    TryVerdict verdict = try_one(ref, &attempt);
    attempt.status = verdict.status();
    if (attempt.status.ok()) return i;
    const std::string where = attempt.endpoint.empty() ? "" : " at " + attempt.endpoint;
    spdlog::warn("source {} of {} (worker {}{}) failed{}: {}", i + 1, tries, ref.worker_id(), where,
                 verdict.stop() ? ", and no other source can help" : "", attempt.status.message());
    if (verdict.stop()) return attempt.status;
  }
  std::vector<SourceAttempt> mine(attempts->begin() + first, attempts->end());
  return AllFailed(mine, candidates.size(), who, note);
}

Status AllFailed(const std::vector<SourceAttempt>& attempts, size_t listed, const std::string& who,
                 const std::string& note) {
  std::string failures;
  for (size_t i = 0; i < attempts.size(); ++i) {
    const SourceAttempt& attempt = attempts[i];
    const std::string where = attempt.endpoint.empty() ? "" : " at " + attempt.endpoint;
    absl::StrAppend(
        &failures, "\n  [", i + 1, "] worker ", attempt.worker_id, where, ": ",
        attempt.status.ok() ? "stopped before the pull ended" : attempt.status.message());
  }
  return Status(AggregateCode(attempts),
                absl::StrCat("could not pull ", who, ": ", attempts.size(), " of ", listed,
                             " READY source(s) tried,", " all failed (", note, "):", failures));
}

}  // namespace ferry
