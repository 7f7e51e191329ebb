#include "weights/weight_puller.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/source_selection.h"
#include "common/logging.h"
#include "ferry/publisher.h"
#include "ferry/source_identity.h"
#include "ferry/v1/transfer.pb.h"
#include "transfer/monitored_read.h"
#include "weights/buffers.h"
#include "weights/tensor_checksum.h"
#include "weights/transfer_plan.h"
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

// DataLoss naming the first tensor whose `checksums` entry differs from the source's.
Status VerifyChecksums(const Plan& plan, const std::vector<uint64_t>& checksums) {
  for (size_t i = 0; i < plan.remote.size(); ++i) {
    if (checksums[i] != plan.remote[i].checksum()) {
      return absl::DataLossError(absl::StrCat(
          "tensor ", plan.remote[i].name(), " (", plan.remote[i].size(),
          " bytes) failed verification: xxh3-64 ", absl::Hex(checksums[i], absl::kZeroPad16),
          " but the source announced ", absl::Hex(plan.remote[i].checksum(), absl::kZeroPad16),
          "; the source's memory or the transfer is corrupt"));
    }
  }
  return absl::OkStatus();
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
          if (into_ != nullptr) return TryInto(ref, attempt, &result);
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

  Status TryOne(const SourceInstanceRef& ref, PullAttempt* attempt, PullResult* result) {
    FERRY_ASSIGN_OR_RETURN(ferry::v1::GetTransferInfoResponse info, TransferInfo(ref, attempt));
    FERRY_ASSIGN_OR_RETURN(Plan plan, MakePlan(info));
    // Reuse the destination between attempts when the size matches (allocation pre-faults,
    // which costs more than the copy on this kind of machine).
    if (region_ == nullptr || region_->size() != std::max<uint64_t>(plan.total, 1)) {
      region_.reset();
      memory_.reset();
      FERRY_RETURN_IF_ERROR(PrepareDestination(std::max<uint64_t>(plan.total, 1)));
    }
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<Peer> peer,
                           options_.engine->Connect(info.transfer_blob(), options_.transport));
    uint8_t* base = static_cast<uint8_t*>(region_->data());
    const std::string source_text = absl::StrCat(
        "worker ", ref.worker_id(), attempt->endpoint.empty() ? "" : " at ", attempt->endpoint);

    const absl::Time transfer_start = absl::Now();
    FERRY_RETURN_IF_ERROR(
        Transfer(*peer, MakeOps(plan, base), plan.total, source_text, transfer_start));
    const absl::Time transfer_end = absl::Now();

    std::vector<uint64_t> checksums =
        ChecksumTensors(base, plan.local, std::max(1, options_.verify_threads));
    FERRY_RETURN_IF_ERROR(VerifyChecksums(plan, checksums));
    result->model.owned_memory = std::move(memory_);
    result->model.region = std::move(region_);
    result->model.tensors = std::move(plan.local);
    result->model.checksums = std::move(checksums);
    result->model.metadata = std::move(plan.metadata);
    result->model.total_bytes = plan.total;
    result->bytes = plan.total;
    result->peer = peer->description();
    result->transport = peer->transport();
    result->transfer_time = transfer_end - transfer_start;
    result->verify_time = absl::Now() - transfer_end;
    return absl::OkStatus();
  }

  // Reads a source's tensors straight into the caller's buffers (PullIntoBuffers). A model that
  // does not match the source's layout stops the pull: it is the caller's error, the same at
  // every source of the identity.
  TryVerdict TryInto(const SourceInstanceRef& ref, PullAttempt* attempt, PullResult* result) {
    FERRY_ASSIGN_OR_RETURN(ferry::v1::GetTransferInfoResponse info, TransferInfo(ref, attempt));
    FERRY_ASSIGN_OR_RETURN(Plan plan, MakePlan(info));
    StatusOr<std::vector<const NamedBuffer*>> matched = MatchBuffers(plan, *into_);
    if (!matched.ok()) {
      return StopTrying(absl::FailedPreconditionError(absl::StrCat(
          "the model does not match the source (worker ", ref.worker_id(), " of ",
          options_.identity.model_name(), "): ", matched.status().message(),
          "; nothing was pulled. Build the model with the source's configuration, or use "
          "another identity")));
    }
    if (span_regions_.empty()) {
      for (const MemorySpan& span : into_->spans) {
        if (span.size == 0) continue;
        FERRY_ASSIGN_OR_RETURN(std::unique_ptr<Region> region,
                               options_.engine->RegisterRegion(span.data, span.size));
        span_regions_.push_back(std::move(region));
      }
    }
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<Peer> peer,
                           options_.engine->Connect(info.transfer_blob(), options_.transport));
    // One read per distinct destination range (tied weights are read once), coalesced where
    // both sides continue each other.
    std::vector<ReadOp> ops;
    std::set<std::pair<void*, uint64_t>> seen;
    std::vector<ByteRange> ranges;
    uint64_t total = 0;
    for (size_t i = 0; i < plan.remote.size(); ++i) {
      const NamedBuffer& b = *(*matched)[i];
      ranges.push_back(ByteRange{b.data, b.size});
      if (b.size == 0 || !seen.emplace(b.data, b.size).second) continue;
      ops.push_back(ReadOp{plan.remote[i].region(), plan.remote[i].offset(), b.data, b.size});
      total += b.size;
    }
    const std::string source_text = absl::StrCat(
        "worker ", ref.worker_id(), attempt->endpoint.empty() ? "" : " at ", attempt->endpoint);
    const absl::Time transfer_start = absl::Now();
    FERRY_RETURN_IF_ERROR(
        Transfer(*peer, CoalesceReadOps(std::move(ops)), total, source_text, transfer_start));
    const absl::Time transfer_end = absl::Now();
    std::vector<uint64_t> checksums = ChecksumRanges(ranges, std::max(1, options_.verify_threads));
    FERRY_RETURN_IF_ERROR(VerifyChecksums(plan, checksums));
    result->model.metadata = std::move(plan.metadata);
    result->bytes = total;
    result->peer = peer->description();
    result->transport = peer->transport();
    result->transfer_time = transfer_end - transfer_start;
    result->verify_time = absl::Now() - transfer_end;
    return absl::OkStatus();
  }

  Status Transfer(Peer& peer, std::vector<ReadOp> ops, uint64_t total,
                  const std::string& source_text, absl::Time start) {
    MonitoredReadOptions read;
    read.timeout = options_.transfer_timeout;
    read.start = start;
    read.stall_timeout = options_.stall_timeout;
    read.batch_bytes = options_.batch_bytes;
    read.batch_pause = options_.batch_pause;
    if (options_.on_progress) {
      read.on_progress = [&](uint64_t done, uint64_t all) {
        options_.on_progress(PullProgress{done, all, source_text});
      };
    }
    return MonitoredRead(peer, std::move(ops), total, read);
  }

  // The destination: engine memory when it will be served, else anonymous memory (see
  // PullOptions.servable) registered with the engine.
  Status PrepareDestination(uint64_t bytes) {
    if (options_.servable) {
      FERRY_ASSIGN_OR_RETURN(region_, options_.engine->AllocateRegion(bytes));
      return absl::OkStatus();
    }
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot map ", bytes, " bytes for the pulled weights: ", std::strerror(errno)));
    }
    memory_ = std::shared_ptr<void>(p, [bytes](void* q) { munmap(q, bytes); });
    FERRY_ASSIGN_OR_RETURN(region_, options_.engine->RegisterRegion(p, bytes));
    return absl::OkStatus();
  }

  const PullOptions& options_;
  const BufferSet* into_;  // PullIntoBuffers: the caller's tensors; else null
  std::vector<std::unique_ptr<Region>> span_regions_;  // into_'s spans, registered once
  std::shared_ptr<void> memory_;                       // declared before region_: released after it
  std::unique_ptr<Region> region_;
};

}  // namespace

StatusOr<PullResult> PullWeights(const PullOptions& options) {
  return Puller(options, nullptr).Run();
}

StatusOr<PullResult> PullIntoBuffers(const PullOptions& options, const BufferSet& into) {
  return Puller(options, &into).Run();
}

}  // namespace ferry::weights
