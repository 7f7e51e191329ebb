#include "flows/weight_puller.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/source_selection.h"
#include "common/logging.h"
#include "ferry/publisher.h"
#include "ferry/source_identity.h"
#include "ferry/v1/transfer.pb.h"
#include "flows/buffers.h"
#include "flows/landing_verifier.h"
#include "flows/transfer_plan.h"
#include "worker/centralized.h"

namespace ferry::weights {

namespace {

namespace p2p = ::model_express::p2p;
using internal::MakeOps;
using internal::MakePlan;
using internal::Plan;

std::string IdentityText(const SourceIdentity& identity, const std::string& mx_source_id,
                         uint32_t rank, const std::string& accelerator) {
  std::string text = absl::StrCat("model ", identity.model_name());
  if (!identity.revision().empty()) absl::StrAppend(&text, " revision ", identity.revision());
  if (!identity.dtype().empty()) absl::StrAppend(&text, " dtype ", identity.dtype());
  absl::StrAppend(&text, " tp ", identity.tensor_parallel_size(), " rank ", rank);
  if (!accelerator.empty()) absl::StrAppend(&text, " accelerator ", accelerator);
  if (!mx_source_id.empty()) absl::StrAppend(&text, " (mx_source_id ", mx_source_id, ")");
  return text;
}

// For each of the plan's remote tensors, the buffer of the same name; FailedPrecondition naming
// the first tensor whose name, dtype or shape does not match.
StatusOr<std::vector<const NamedBuffer*>> MatchBuffers(const Plan& plan, const BufferSet& into) {
  std::map<std::string, const NamedBuffer*> by_name;
  for (const NamedBuffer& b : into.buffers) by_name[b.name] = &b;
  std::vector<const NamedBuffer*> matched(plan.remote.size(), nullptr);
  for (size_t i = 0; i < plan.remote.size(); ++i) {
    const ferry::v1::TensorEntry& e = plan.remote[i];
    auto it = by_name.find(e.name());
    if (it == by_name.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("the source has tensor ", e.name(), " (", ShapeString(plan.local[i].shape),
                       " ", std::string(DTypeName(plan.local[i].dtype)), ") that the model lacks"));
    }
    const NamedBuffer& b = *it->second;
    if (b.dtype != plan.local[i].dtype) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tensor ", e.name(), ": dtype ", std::string(DTypeName(b.dtype)), " in the model but ",
          std::string(DTypeName(plan.local[i].dtype)), " at the source"));
    }
    if (b.shape != plan.local[i].shape) {
      return absl::FailedPreconditionError(
          absl::StrCat("tensor ", e.name(), ": shape ", ShapeString(b.shape), " in the model but ",
                       ShapeString(plan.local[i].shape), " at the source"));
    }
    matched[i] = &b;
    by_name.erase(it);
  }
  if (!by_name.empty()) {
    std::vector<std::string> missing;
    for (const auto& [name, b] : by_name) {
      if (missing.size() == 5) break;
      missing.push_back(name);
    }
    return absl::FailedPreconditionError(
        absl::StrCat(by_name.size(), " tensor(s) of the model are not at the source: ",
                     absl::StrJoin(missing, ", "), by_name.size() > missing.size() ? ", ..." : ""));
  }
  return matched;
}

// Faults in a region's destination pages in the order the read fills them, on one thread that
// runs ahead of the transfer, so that the transports mostly copy into memory that is already
// there and preparing overlaps moving. A no-op for a null region (memory that exists).
class Prefaulter {
 public:
  Prefaulter(const Region* region, const std::vector<ReadOp>& ops, std::atomic<bool>* cancel)
      : cancel_(cancel) {
    if (region == nullptr) return;
    thread_ = std::thread([this, region, ops] {
      constexpr uint64_t kStep = 8ull << 20;
      const auto* base = static_cast<const char*>(region->data());
      for (const ReadOp& op : ops) {
        const uint64_t at = static_cast<uint64_t>(static_cast<const char*>(op.local) - base);
        for (uint64_t done = 0; done < op.length; done += kStep) {
          if (cancel_->load(std::memory_order_relaxed)) return;
          Status s = region->Prefault(at + done, std::min(kStep, op.length - done));
          if (!s.ok()) {
            status_ = std::move(s);
            cancel_->store(true);
            return;
          }
        }
      }
    });
  }
  ~Prefaulter() { Finish().IgnoreError(); }

  // Joins the thread; its error, if preparing failed.
  Status Finish() {
    if (thread_.joinable()) thread_.join();
    return status_;
  }

 private:
  std::atomic<bool>* const cancel_;
  Status status_;  // written by the thread, read after join
  std::thread thread_;
};

class Puller {
 public:
  Puller(const PullOptions& options, const BufferSet* into) : options_(options), into_(into) {}

  StatusOr<PullResult> Run() {
    const absl::Time start = absl::Now();
    FERRY_RETURN_IF_ERROR(Validate());
    FERRY_ASSIGN_OR_RETURN(const std::string mx_source_id, ComputeMxSourceId(options_.identity));
    const std::string who =
        IdentityText(options_.identity, mx_source_id, options_.worker_rank, options_.accelerator);

    SourceSelection selection;
    selection.model_name = options_.identity.model_name();
    selection.worker_rank = options_.worker_rank;
    selection.accelerator = options_.accelerator;
    selection.dtype = options_.identity.dtype();
    selection.quantization = options_.identity.quantization();
    selection.target_worker_id =
        options_.target_worker_id.empty() ? GenerateWorkerId() : options_.target_worker_id;
    selection.topology = options_.topology;
    FERRY_ASSIGN_OR_RETURN(Candidates listed,
                           ListCandidates(*options_.client, options_.identity, selection, who));
    const std::vector<SourceInstanceRef>& candidates = listed.ordered;
    if (candidates.empty()) {
      return absl::NotFoundError(absl::StrCat(
          "no READY source for ", who, " on ", options_.client->server_address(), " (",
          listed.ready, " READY worker(s) of this identity, none with rank ", options_.worker_rank,
          " and a compatible accelerator); start one with `ferry publish`"
          " or check the identity flags"));
    }

    PullResult result;
    StatusOr<size_t> tried = TryCandidates(
        candidates, options_.max_sources, who,
        into_ != nullptr ? "the model's tensors may hold partial data; load them another way"
                         : "nothing was written",
        &result.attempts, [&](const SourceInstanceRef& ref, SourceAttempt* attempt) -> TryVerdict {
          return TryOne(ref, attempt, &result);
        });
    FERRY_ASSIGN_OR_RETURN(const size_t chosen, std::move(tried));
    result.mx_source_id = candidates[chosen].mx_source_id();
    result.source_worker_id = candidates[chosen].worker_id();
    result.source_endpoint = result.attempts.back().endpoint;
    result.total_time = absl::Now() - start;
    return result;
  }

 private:
  Status Validate() const {
    if (into_ != nullptr) FERRY_RETURN_IF_ERROR(ValidateBufferSet(*into_));
    if (options_.client == nullptr) {
      return absl::InvalidArgumentError("PullOptions.client is required");
    }
    if (options_.engine == nullptr) {
      return absl::InvalidArgumentError("PullOptions.engine is required");
    }
    if (options_.max_sources < 1 || options_.max_sources > 16) {
      return absl::InvalidArgumentError(
          absl::StrCat("PullOptions.max_sources must be 1..16, got ", options_.max_sources));
    }
    return ValidateIdentity(options_.identity);
  }

  // The transfer info of `ref`: from the record (centralized mode) or the worker endpoint.
  StatusOr<ferry::v1::GetTransferInfoResponse> TransferInfo(const SourceInstanceRef& ref,
                                                            PullAttempt* attempt) {
    FERRY_ASSIGN_OR_RETURN(GetMetadataResponse record,
                           options_.client->GetMetadata(ref.mx_source_id(), ref.worker_id()));
    if (!record.found()) {
      return absl::NotFoundError("the server no longer holds this worker's record");
    }
    attempt->endpoint = record.worker().worker_grpc_endpoint();
    if (record.worker().has_nixl_metadata()) {
      FERRY_ASSIGN_OR_RETURN(std::optional<ferry::v1::GetTransferInfoResponse> info,
                             worker::DecodeCentralizedMetadata(record.worker().nixl_metadata()));
      if (info.has_value()) {
        if (!info->worker_id().empty() && info->worker_id() != ref.worker_id()) {
          return absl::FailedPreconditionError(
              absl::StrCat("the record's transfer info is for worker ", info->worker_id()));
        }
        return *std::move(info);
      }
    }
    if (attempt->endpoint.empty()) {
      return absl::FailedPreconditionError(
          "the record has neither a worker endpoint nor ferry transfer info (not a ferry "
          "source?)");
    }
    worker::WorkerClientOptions client_options = options_.endpoint;
    client_options.endpoint = attempt->endpoint;
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<worker::WorkerClient> client,
                           worker::WorkerClient::Create(client_options));
    return client->GetTransferInfo(ref.mx_source_id(), ref.worker_id());
  }

  // Where a source's bytes land and what they are checked against.
  struct Landing {
    std::vector<ReadOp> ops;
    std::vector<LandingVerifier::Tensor> tensors;  // in the plan's order
    uint64_t bytes = 0;
  };

  // One source: its transfer info, where its tensors land, the transfer with every tensor
  // verified as it completes. Both pull modes differ only in Land*.
  TryVerdict TryOne(const SourceInstanceRef& ref, PullAttempt* attempt, PullResult* result) {
    FERRY_ASSIGN_OR_RETURN(ferry::v1::GetTransferInfoResponse info, TransferInfo(ref, attempt));
    FERRY_ASSIGN_OR_RETURN(Plan plan, MakePlan(info));
    bool mismatch = false;
    StatusOr<Landing> landed =
        into_ != nullptr ? LandInBuffers(plan, ref, &mismatch) : LandInRegion(plan);
    if (!landed.ok()) return mismatch ? StopTrying(landed.status()) : landed.status();
    Landing landing = *std::move(landed);
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<Peer> peer,
                           options_.engine->Connect(info.transfer_blob(), options_.transport));
    const std::string source_text = absl::StrCat(
        "worker ", ref.worker_id(), attempt->endpoint.empty() ? "" : " at ", attempt->endpoint);

    const absl::Time transfer_start = absl::Now();
    std::atomic<bool> cancel{false};
    LandingVerifier verifier(std::move(landing.tensors), std::max(1, options_.verify_threads),
                             &cancel);
    // Pages of memory that exists, or prepared before, need no prefault thread.
    const bool prefault = into_ == nullptr && options_.prepare == PullOptions::PreparePages::kAhead;
    Prefaulter prefaulter(prefault ? region_.get() : nullptr, landing.ops, &cancel);
    Status read = Transfer(*peer, std::move(landing.ops), landing.bytes, source_text,
                           transfer_start, verifier, cancel);
    const absl::Time transfer_end = absl::Now();
    Status prepared = prefaulter.Finish();
    if (read.ok() && !prepared.ok()) read = prepared;
    if (!read.ok()) {
      verifier.Abandon();
      Status corrupt = verifier.Mismatch();  // a corrupt tensor cancels the read early
      return corrupt.ok() ? read : corrupt;
    }
    FERRY_RETURN_IF_ERROR(verifier.Finish());

    if (into_ == nullptr) {
      result->model.region = std::move(region_);
      result->model.tensors = std::move(plan.local);
      result->model.checksums = verifier.checksums();
      result->model.total_bytes = plan.total;
    }
    result->model.metadata = std::move(plan.metadata);
    result->bytes = landing.bytes;
    result->peer = peer->description();
    result->transport = peer->transport();
    result->transfer_time = transfer_end - transfer_start;
    result->verify_time = verifier.tail();
    return absl::OkStatus();
  }

  // A file pull: the tensors contiguous in source order in one region of the engine.
  StatusOr<Landing> LandInRegion(const Plan& plan) {
    // Reuse the destination between attempts when the size matches (its pages are already
    // faulted in, which costs more than the copy on this kind of machine).
    if (region_ == nullptr || region_->size() != std::max<uint64_t>(plan.total, 1)) {
      region_.reset();
      FERRY_RETURN_IF_ERROR(PrepareDestination(std::max<uint64_t>(plan.total, 1)));
    }
    uint8_t* base = static_cast<uint8_t*>(region_->data());
    Landing landing;
    landing.ops = MakeOps(plan, base);
    landing.bytes = plan.total;
    for (size_t i = 0; i < plan.remote.size(); ++i) {
      landing.tensors.push_back({plan.remote[i].name(), base + plan.local[i].offset,
                                 plan.local[i].size, plan.remote[i].checksum()});
    }
    return landing;
  }

  // PullIntoBuffers: straight into the caller's tensors. One read per distinct destination
  // range (tied weights are read once), coalesced where both sides continue each other.
  // A model that does not match the source's layout sets *mismatch: it is the caller's error,
  // the same at every source of the identity, and stops the pull.
  StatusOr<Landing> LandInBuffers(const Plan& plan, const SourceInstanceRef& ref, bool* mismatch) {
    StatusOr<std::vector<const NamedBuffer*>> matched = MatchBuffers(plan, *into_);
    if (!matched.ok()) {
      *mismatch = true;
      return absl::FailedPreconditionError(absl::StrCat(
          "the model does not match the source (worker ", ref.worker_id(), " of ",
          options_.identity.model_name(), "): ", matched.status().message(),
          "; nothing was pulled. Build the model with the source's configuration, or use "
          "another identity"));
    }
    if (span_regions_.empty()) {
      for (const MemorySpan& span : into_->spans) {
        if (span.size == 0) continue;
        FERRY_ASSIGN_OR_RETURN(std::unique_ptr<Region> region,
                               options_.engine->RegisterRegion(span.data, span.size));
        span_regions_.push_back(std::move(region));
      }
    }
    Landing landing;
    std::set<std::pair<void*, uint64_t>> seen;
    for (size_t i = 0; i < plan.remote.size(); ++i) {
      const NamedBuffer& b = *(*matched)[i];
      landing.tensors.push_back({plan.remote[i].name(), b.data, b.size, plan.remote[i].checksum()});
      if (b.size == 0 || !seen.emplace(b.data, b.size).second) continue;
      landing.ops.push_back(
          ReadOp{plan.remote[i].region(), plan.remote[i].offset(), b.data, b.size});
      landing.bytes += b.size;
    }
    landing.ops = CoalesceReadOps(std::move(landing.ops));
    return landing;
  }

  Status Transfer(Peer& peer, std::vector<ReadOp> ops, uint64_t total,
                  const std::string& source_text, absl::Time start, LandingVerifier& verifier,
                  std::atomic<bool>& cancel) {
    ReadOptions read;
    read.timeout = options_.transfer_timeout;
    read.start = start;
    read.stall_timeout = options_.stall_timeout;
    read.cancel = &cancel;
    const uint64_t pace = options_.batch_bytes;
    if (pace > 0) read.chunk_bytes = pace;
    absl::Mutex pace_mu;  // pauses one piece at a time, so the whole read is slowed down
    read.on_piece = [&](const ReadOp& piece) {
      verifier.Landed(piece.local, piece.length);
      if (pace == 0) return;
      // For tests that act while a transfer runs: a pause after every piece.
      absl::MutexLock lock(&pace_mu);
      absl::SleepFor(options_.batch_pause);
    };
    if (options_.on_progress) {
      read.on_progress = [&](uint64_t done, uint64_t all) {
        options_.on_progress(PullProgress{done, all, source_text});
      };
    }
    return peer.Read(std::move(ops), read);
  }

  // The destination: shareable engine memory when it will be served, else plain anonymous
  // memory (see PullOptions.servable). Its pages are faulted in by Prefaulter, ahead of the
  // transfer, unless options_.prepare says before.
  Status PrepareDestination(uint64_t bytes) {
    AllocateOptions allocate;
    allocate.shareable = options_.servable;
    allocate.prefault = options_.prepare == PullOptions::PreparePages::kBefore;
    FERRY_ASSIGN_OR_RETURN(region_, options_.engine->AllocateRegion(bytes, allocate));
    return absl::OkStatus();
  }

  const PullOptions& options_;
  const BufferSet* into_;  // PullIntoBuffers: the caller's tensors; else null
  std::vector<std::unique_ptr<Region>> span_regions_;  // into_'s spans, registered once
  std::unique_ptr<Region> region_;                     // the file pull's destination
};

}  // namespace

StatusOr<PullResult> PullWeights(const PullOptions& options) {
  return Puller(options, nullptr).Run();
}

StatusOr<PullResult> PullIntoBuffers(const PullOptions& options, const BufferSet& into) {
  return Puller(options, &into).Run();
}

}  // namespace ferry::weights
