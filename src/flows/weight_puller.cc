#include "flows/weight_puller.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/source_selection.h"
#include "common/logging.h"
#include "ferry/publisher.h"
#include "ferry/source_identity.h"
#include "ferry/v1/transfer.pb.h"
#include "flows/buffers.h"
#include "flows/device_landing.h"
#include "flows/landing_verifier.h"
#include "flows/prefaulter.h"
#include "flows/striped_read.h"
#include "flows/transfer_plan.h"
#include "worker/centralized.h"

namespace ferry::weights {

namespace {

namespace p2p = ::model_express::p2p;

// The piece size of a read over several sources (TransferEngineOptions::chunk_bytes otherwise).
constexpr uint64_t kStripedPieceBytes = 512ull << 10;
// How far ahead a read over several sources hands each its pieces (ReadOptions::lookahead): a
// piece handed out waits for its source, however many faster ones appear meanwhile.
constexpr absl::Duration kStripedLookahead = absl::Milliseconds(100);
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

// Asks a source that is still pulling which tensors it serves, every 200 ms on its own thread,
// until it serves all of them. Thread-safe.
class HeldPoller {
 public:
  // `landing_of[j]`: the pull's index of the source's tensor j (GetTransferInfo order).
  static StatusOr<std::unique_ptr<HeldPoller>> Start(std::unique_ptr<worker::WorkerClient> client,
                                                     std::string mx_source_id,
                                                     std::string worker_id,
                                                     std::vector<size_t> landing_of,
                                                     size_t tensors) {
    std::unique_ptr<HeldPoller> poller(new HeldPoller(std::move(client), std::move(mx_source_id),
                                                      std::move(worker_id), std::move(landing_of),
                                                      tensors));
    FERRY_RETURN_IF_ERROR(poller->Poll());
    if (!poller->complete_.load()) poller->thread_ = std::thread([p = poller.get()] { p->Run(); });
    return poller;
  }
  ~HeldPoller() {
    stop_.Notify();
    if (thread_.joinable()) thread_.join();
  }
  bool Holds(size_t i) const { return held_[i].load(std::memory_order_relaxed); }
  // Whether it is filling tensor i now (it will hold it soon).
  bool Fills(size_t i) const { return filling_[i].load(std::memory_order_relaxed); }

 private:
  HeldPoller(std::unique_ptr<worker::WorkerClient> client, std::string mx_source_id,
             std::string worker_id, std::vector<size_t> landing_of, size_t tensors)
      : client_(std::move(client)),
        mx_source_id_(std::move(mx_source_id)),
        worker_id_(std::move(worker_id)),
        landing_of_(std::move(landing_of)),
        held_(tensors),
        filling_(tensors) {}

  Status Poll() {
    FERRY_ASSIGN_OR_RETURN(worker::WorkerClient::HeldState state,
                           client_->GetHeldTensors(mx_source_id_, worker_id_, landing_of_.size()));
    bool all = true;
    for (size_t j = 0; j < state.held.size(); ++j) {
      if (state.held[j]) held_[landing_of_[j]].store(true, std::memory_order_relaxed);
      filling_[landing_of_[j]].store(state.landing[j], std::memory_order_relaxed);
      all = all && state.held[j];
    }
    complete_.store(all);
    return absl::OkStatus();
  }
  void Run() {
    // A failed poll leaves what is known; the source's reads fail on their own if it is gone.
    while (!complete_.load() && !stop_.WaitForNotificationWithTimeout(absl::Milliseconds(200))) {
      Poll().IgnoreError();
    }
  }

  const std::unique_ptr<worker::WorkerClient> client_;
  const std::string mx_source_id_;
  const std::string worker_id_;
  const std::vector<size_t> landing_of_;
  std::vector<std::atomic<bool>> held_;
  std::vector<std::atomic<bool>> filling_;
  std::atomic<bool> complete_{false};
  absl::Notification stop_;
  std::thread thread_;
};

// One source opened for the pull: its record, where it holds each tensor, its connection.
struct OpenSource {
  std::string name;  // "worker ab12 at 10.0.0.5:6555"
  ferry::v1::GetTransferInfoResponse info;
  Plan plan;
  std::unique_ptr<Peer> peer;
  size_t attempt = 0;                  // index in PullResult::attempts
  std::unique_ptr<HeldPoller> poller;  // a source still pulling; null for a READY one
  std::vector<RemoteSpot> spots;       // where it holds each of the pull's tensors
};

class Puller {
 public:
  Puller(const PullOptions& options, const BufferSet* into) : options_(options), into_(into) {}

  StatusOr<PullResult> Run() {
    const absl::Time start = absl::Now();
    FERRY_RETURN_IF_ERROR(Validate());
    FERRY_ASSIGN_OR_RETURN(const std::string mx_source_id, ComputeMxSourceId(options_.identity));
    who_ =
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
    selection_ = selection;
    FERRY_ASSIGN_OR_RETURN(Candidates listed,
                           ListCandidates(*options_.client, options_.identity, selection, who_));
    candidates_ = std::move(listed.ordered);
    target_id_ = selection.target_worker_id;
    if (options_.read_partial_sources) {
      // Targets still pulling, after the READY sources; never this target's own record.
      FERRY_ASSIGN_OR_RETURN(Candidates pulling,
                             ListCandidates(*options_.client, options_.identity, selection, who_,
                                            ::model_express::p2p::SOURCE_STATUS_INITIALIZING));
      for (SourceInstanceRef& ref : pulling.ordered) {
        if (ref.worker_id() == target_id_) continue;
        partial_.insert(ref.worker_id());
        candidates_.push_back(std::move(ref));
      }
    }
    if (candidates_.empty()) {
      return absl::NotFoundError(absl::StrCat(
          "no READY source for ", who_, " on ", options_.client->server_address(), " (",
          listed.ready, " READY worker(s) of this identity, none with rank ", options_.worker_rank,
          " and a compatible accelerator); start one with `ferry publish`"
          " or check the identity flags"));
    }
    tries_ = std::min<size_t>(candidates_.size(), static_cast<size_t>(options_.max_sources));

    PullResult result;
    FERRY_RETURN_IF_ERROR(Pull(&result));
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
    if (options_.serve_while_pulling && into_ != nullptr) {
      return absl::InvalidArgumentError(
          "PullOptions.serve_while_pulling is for file pulls; the caller's buffers are theirs");
    }
    if (options_.stripe < 1 || options_.stripe > 16) {
      return absl::InvalidArgumentError(
          absl::StrCat("PullOptions.stripe must be 1..16, got ", options_.stripe));
    }
    return ValidateIdentity(options_.identity);
  }

  // Opens sources until `stripe` are live or every candidate allowed was tried, then reads
  // what is missing from them; repeats while sources fail and others remain.
  Status Pull(PullResult* result) {
    const std::string note =
        into_ != nullptr ? "the model's tensors may hold partial data; load them another way"
                         : "nothing was written";
    for (;;) {
      while ((striped_ == nullptr || striped_->live_sources() < Stripe()) && next_ < tries_) {
        if (striped_ != nullptr) {
          OpenMore(result);  // the landing is fixed: the rest open at once
          continue;
        }
        TryVerdict verdict = OpenNext(result);
        if (verdict.stop()) return verdict.status();
      }
      if (striped_ == nullptr || striped_->live_sources() == 0) {
        RecordShares(result);
        return AllFailed(result->attempts, candidates_.size(), who_, note);
      }
      if (!relisted_ && options_.read_partial_sources && striped_->live_sources() < Stripe()) {
        // Targets started together publish while the first source opens: list once more
        // before reading, so that the first round already knows those that did.
        relisted_ = true;
        if (Relist()) continue;
      }
      const absl::Time transfer_start = absl::Now();
      const size_t live_before = striped_->live_sources();
      std::atomic<bool> cancel{false};
      std::atomic<bool> pause{false};
      Prefaulter prefaulter(prefault_ ? destination_ : nullptr, prefault_ops_, &cancel);
      prefault_ = false;  // once: the pages stay
      Status read;
      {
        // While fewer sources than the stripe are live, look for new ones (targets that
        // started pulling since) every 250 ms, and pause the read to add them.
        Refresher refresher(this, &pause);
        read = ReadMissing(transfer_start, &cancel, &pause, &prefaulter);
      }
      result->transfer_time += absl::Now() - transfer_start;
      Status prepared = prefaulter.Finish();
      if (!prepared.ok()) return prepared;
      RecordShares(result);
      if (striped_->complete()) break;
      if (pause.load() && read.code() == absl::StatusCode::kAborted) continue;  // add sources
      const bool late = absl::Now() >= transfer_start + options_.transfer_timeout;
      if (late || striped_->live_sources() >= live_before) {
        // Out of time, or the read stopped with every source still taking part (cancelled, no
        // progress): another round would do the same. A lost source is replaced above.
        if (read.ok()) read = absl::InternalError("the read stopped unfinished (a ferry bug)");
        return Status(read.code(),
                      absl::StrCat("could not pull ", who_, ": ", read.message(), " (", note, ")"));
      }
    }
    Finish(result);
    return absl::OkStatus();
  }

  size_t Stripe() const { return static_cast<size_t>(options_.stripe); }

  // Tries the next candidate: its transfer info, plan and connection. The first source fixes
  // where the pull lands; each further one must serve the same tensors.
  TryVerdict OpenNext(PullResult* result) {
    const SourceInstanceRef& ref = candidates_[next_++];
    const size_t index = result->attempts.size();
    PullAttempt& attempt = result->attempts.emplace_back();
    attempt.mx_source_id = ref.mx_source_id();
    attempt.worker_id = ref.worker_id();
    TryVerdict verdict = Open(ref, &attempt, index);
    Report(ref, &result->attempts[index], verdict.status(), next_, verdict.stop());
    return verdict;
  }

  // With the landing fixed: opens as many further candidates as the stripe still wants, each in
  // its own thread (every open is a few round trips: record, transfer info, connection), then
  // adds those that opened, in candidate order.
  void OpenMore(PullResult* result) {
    const size_t count =
        std::min(Stripe() - std::min(Stripe(), striped_->live_sources()), tries_ - next_);
    struct Opening {
      const SourceInstanceRef* ref;
      PullAttempt attempt;
      StatusOr<std::unique_ptr<OpenSource>> source = absl::UnknownError("not opened");
    };
    std::vector<Opening> openings(count);  // >= 1: the caller's loop wants one more
    std::vector<std::thread> threads;
    for (size_t k = 0; k < openings.size(); ++k) {
      Opening& o = openings[k];
      o.ref = &candidates_[next_ + k];
      o.attempt.mx_source_id = o.ref->mx_source_id();
      o.attempt.worker_id = o.ref->worker_id();
      threads.emplace_back([this, &o] { o.source = Prepare(*o.ref, &o.attempt); });
    }
    for (std::thread& t : threads) t.join();
    for (Opening& o : openings) {
      ++next_;
      const size_t index = result->attempts.size();
      result->attempts.push_back(std::move(o.attempt));
      Status status = o.source.status();
      if (status.ok()) Adopt(*std::move(o.source), index);
      Report(*o.ref, &result->attempts[index], status, next_, /*stop=*/false);
    }
  }

  void Report(const SourceInstanceRef& ref, PullAttempt* attempt, const Status& status,
              size_t number, bool stop) const {
    attempt->status = status;
    if (status.ok()) return;
    const std::string where = attempt->endpoint.empty() ? "" : " at " + attempt->endpoint;
    spdlog::warn("source {} of {} (worker {}{}) failed{}: {}", number, tries_, ref.worker_id(),
                 where, stop ? ", and no other source can help" : "", status.message());
  }

  // A further source, once the landing is fixed: its transfer info, which must describe the
  // same tensors, and its connection. Thread-safe (several open at once; nothing shared is
  // changed).
  StatusOr<std::unique_ptr<OpenSource>> Prepare(const SourceInstanceRef& ref,
                                                PullAttempt* attempt) const {
    FERRY_ASSIGN_OR_RETURN(ferry::v1::GetTransferInfoResponse info, TransferInfo(ref, attempt));
    FERRY_ASSIGN_OR_RETURN(Plan plan, MakePlan(info));
    FERRY_ASSIGN_OR_RETURN(std::vector<RemoteSpot> spots, Match(plan));
    return Connect(ref, std::move(info), std::move(plan), std::move(spots), *attempt);
  }

  TryVerdict Open(const SourceInstanceRef& ref, PullAttempt* attempt, size_t index) {
    if (landing_plan_ != nullptr) {
      FERRY_ASSIGN_OR_RETURN(std::unique_ptr<OpenSource> source, Prepare(ref, attempt));
      Adopt(std::move(source), index);
      return absl::OkStatus();
    }
    FERRY_ASSIGN_OR_RETURN(ferry::v1::GetTransferInfoResponse info, TransferInfo(ref, attempt));
    FERRY_ASSIGN_OR_RETURN(Plan plan, MakePlan(info));
    // The first source that answered fixes where the pull lands, once: a source that fails
    // after this (its connection, say) leaves the landing to the next, which must match it.
    bool stop = false;
    Status landed = into_ != nullptr ? LandInBuffers(plan, ref, &stop) : LandInRegion(plan, &stop);
    if (!landed.ok()) return stop ? StopTrying(landed) : landed;
    std::vector<RemoteSpot> spots;
    for (const ferry::v1::TensorEntry& e : plan.remote) spots.push_back({e.region(), e.offset()});
    for (size_t i = 0; i < plan.remote.size(); ++i) landing_index_[plan.remote[i].name()] = i;
    landing_plan_ = std::make_unique<Plan>(plan);
    landing_source_ = absl::StrCat("worker ", ref.worker_id());
    FERRY_ASSIGN_OR_RETURN(
        std::unique_ptr<OpenSource> source,
        Connect(ref, std::move(info), std::move(plan), std::move(spots), *attempt));
    Adopt(std::move(source), index);
    return absl::OkStatus();
  }

  // The connection to a source whose plan matched, and, for a target still pulling, the poller
  // of what it serves.
  StatusOr<std::unique_ptr<OpenSource>> Connect(const SourceInstanceRef& ref,
                                                ferry::v1::GetTransferInfoResponse info, Plan plan,
                                                std::vector<RemoteSpot> spots,
                                                const PullAttempt& attempt) const {
    std::unique_ptr<HeldPoller> poller;
    if (partial_.count(ref.worker_id()) > 0) {
      // A target still pulling: read only what it serves.
      std::vector<size_t> landing_of;
      for (const ferry::v1::TensorEntry& e : info.tensors()) {
        landing_of.push_back(landing_index_.at(e.name()));
      }
      worker::WorkerClientOptions client_options = options_.endpoint;
      client_options.endpoint = attempt.endpoint;
      FERRY_ASSIGN_OR_RETURN(std::unique_ptr<worker::WorkerClient> client,
                             worker::WorkerClient::Create(client_options));
      FERRY_ASSIGN_OR_RETURN(
          poller, HeldPoller::Start(std::move(client), ref.mx_source_id(), ref.worker_id(),
                                    std::move(landing_of), tensors_.size()));
    }
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<Peer> peer,
                           options_.engine->Connect(info.transfer_blob(), options_.transport));
    auto source = std::make_unique<OpenSource>();
    source->name = absl::StrCat("worker ", ref.worker_id(), attempt.endpoint.empty() ? "" : " at ",
                                attempt.endpoint);
    source->info = std::move(info);
    source->plan = std::move(plan);
    source->peer = std::move(peer);
    source->poller = std::move(poller);
    source->spots = std::move(spots);
    return source;
  }

  // Adds an opened source to the read (the first one creates it); `index` is its attempt's.
  void Adopt(std::unique_ptr<OpenSource> source, size_t index) {
    source->attempt = index;
    if (striped_ == nullptr) {
      StripedReadOptions striped;
      striped.verify_threads = options_.verify_threads;
      striped.algorithm = landing_plan_->algorithm;
      if (device_landing_.has_value()) {
        striped.checksum = device_landing_->checksum;
        striped.to_host = device_landing_->to_host;
      }
      if (held_ != nullptr) {
        striped.on_verified = [held = held_](size_t i) { held->Mark(i); };
        striped.on_landing = [held = held_](size_t i) { held->MarkLanding(i); };
      }
      striped_ = std::make_unique<StripedRead>(tensors_, std::move(striped));
    }
    std::function<bool(size_t)> holds;
    std::function<bool(size_t)> fills;
    if (source->poller != nullptr) {
      holds = [poller = source->poller.get()](size_t i) { return poller->Holds(i); };
      fills = [poller = source->poller.get()](size_t i) { return poller->Fills(i); };
    }
    striped_->AddSource(source->peer.get(), source->name, std::move(source->spots),
                        std::move(holds), std::move(fills));
    sources_.push_back(std::move(source));
  }

  // Where `plan`'s source holds each of the pull's tensors; FailedPrecondition naming the first
  // tensor it lacks or describes differently from the first source.
  StatusOr<std::vector<RemoteSpot>> Match(const Plan& plan) const {
    std::map<std::string, size_t> by_name;
    for (size_t i = 0; i < plan.remote.size(); ++i) by_name.emplace(plan.remote[i].name(), i);
    const Plan& first = *landing_plan_;
    if (plan.algorithm != first.algorithm) {
      // Their checksums cannot be compared, so they cannot share one pull's verification.
      return absl::FailedPreconditionError(
          absl::StrCat("it checksums with ", ChecksumAlgorithmName(plan.algorithm), " where ",
                       landing_source_, " uses ", ChecksumAlgorithmName(first.algorithm)));
    }
    if (plan.remote.size() != first.remote.size()) {
      return absl::FailedPreconditionError(
          absl::StrCat("it serves ", plan.remote.size(), " tensors where ", landing_source_,
                       " serves ", first.remote.size(), " (not the same model)"));
    }
    std::vector<RemoteSpot> spots;
    for (size_t i = 0; i < first.remote.size(); ++i) {
      auto it = by_name.find(first.remote[i].name());
      const bool same = it != by_name.end() &&
                        plan.local[it->second].dtype == first.local[i].dtype &&
                        plan.local[it->second].shape == first.local[i].shape &&
                        plan.remote[it->second].checksum() == first.remote[i].checksum();
      if (!same) {
        return absl::FailedPreconditionError(absl::StrCat(
            "its tensor ", first.remote[i].name(), " is missing or differs (dtype, shape or ",
            "checksum) from ", landing_source_, "'s (not the same model)"));
      }
      const ferry::v1::TensorEntry& e = plan.remote[it->second];
      spots.push_back({e.region(), e.offset()});
    }
    return spots;
  }

  // Runs beside a read while it needs more sources: every 250 ms, lists the identity's sources
  // again, appends new ones to the candidates, and sets *pause when one can be opened.
  class Refresher {
   public:
    Refresher(Puller* puller, std::atomic<bool>* pause) : puller_(puller), pause_(pause) {
      if (puller_->striped_->live_sources() >= puller_->Stripe()) return;
      thread_ = std::thread([this] {
        while (!done_.WaitForNotificationWithTimeout(absl::Milliseconds(250))) {
          if (puller_->Relist()) {
            pause_->store(true);
            return;
          }
        }
      });
    }
    ~Refresher() {
      done_.Notify();
      if (thread_.joinable()) thread_.join();
    }

   private:
    Puller* const puller_;
    std::atomic<bool>* const pause_;
    absl::Notification done_;
    std::thread thread_;
  };

  // Lists sources again; true when a candidate not yet opened can be (the read's thread does
  // not touch candidates_ while a Refresher runs).
  bool Relist() {
    SourceSelection selection = selection_;
    std::set<std::string> known;
    for (const SourceInstanceRef& ref : candidates_) known.insert(ref.worker_id());
    bool added = false;
    for (auto status : {::model_express::p2p::SOURCE_STATUS_READY,
                        ::model_express::p2p::SOURCE_STATUS_INITIALIZING}) {
      if (status == ::model_express::p2p::SOURCE_STATUS_INITIALIZING &&
          !options_.read_partial_sources) {
        continue;
      }
      StatusOr<Candidates> listed =
          ListCandidates(*options_.client, options_.identity, selection, who_, status);
      if (!listed.ok()) return false;
      for (SourceInstanceRef& ref : listed->ordered) {
        if (ref.worker_id() == target_id_ || !known.insert(ref.worker_id()).second) continue;
        if (status == ::model_express::p2p::SOURCE_STATUS_INITIALIZING) {
          partial_.insert(ref.worker_id());
        }
        candidates_.push_back(std::move(ref));
        added = true;
      }
    }
    if (added) {
      tries_ = std::min<size_t>(candidates_.size(), static_cast<size_t>(options_.max_sources));
    }
    return next_ < tries_;
  }

  Status ReadMissing(absl::Time start, std::atomic<bool>* cancel, std::atomic<bool>* pause,
                     Prefaulter* prefaulter) {
    ReadOptions read;
    if (prefaulter->active()) {
      read.before_piece = [prefaulter](void* local, uint64_t length) {
        prefaulter->Prepare(local, length);
      };
    }
    read.timeout = options_.transfer_timeout;
    read.start = start;
    read.stall_timeout = options_.stall_timeout;
    read.cancel = cancel;
    read.pause = pause;
    read.first_piece = TakePart();
    if (Stripe() > 1) {
      // Finer pieces spread a read over several sources more evenly, and give targets that
      // pull at once more distinct pieces to trade. A short lookahead keeps each source's
      // share small, so that a pause to add sources ends soon and the original source is not
      // asked for pieces that targets pulling beside this one are about to hold.
      read.chunk_bytes = kStripedPieceBytes;
      read.lookahead = kStripedLookahead;
    }
    if (options_.on_progress) {
      const std::string text = striped_->live_sources() == 1
                                   ? LiveName()
                                   : absl::StrCat(striped_->live_sources(), " sources");
      read.on_progress = [this, text](uint64_t done, uint64_t all) {
        options_.on_progress(PullProgress{done, all, text});
      };
    }
    return striped_->Run(read);
  }

  // Sets this target's part of the model (StripedRead::SetPart) and returns where it starts
  // reading, in pieces of the whole pull. Targets pulling at once take different parts, so that
  // the original source sends each of them a different one, which they then give each other:
  // every target knows the same set of targets still pulling (the INITIALIZING records listed,
  // and itself), and takes the part at its rank in that set sorted by worker id (equal parts,
  // none twice), reading it first from complete sources and leaving the others' parts to them.
  // A target the others do not know of yet, a pull that lists none, or one that does not serve
  // while it pulls takes no part and starts at a place hashed from its id.
  uint64_t TakePart() {
    const uint64_t chunk = Stripe() > 1 ? kStripedPieceBytes : 0;
    // Only a target that serves while it pulls is one of the others' set (listed INITIALIZING).
    if (chunk == 0 || partial_.empty() || landing_plan_ == nullptr || target_id_.empty() ||
        held_ == nullptr) {
      striped_->SetPart(0, 0);
      return std::hash<std::string>{}(target_id_);
    }
    std::set<std::string> members = partial_;
    members.insert(target_id_);
    const uint64_t rank =
        static_cast<uint64_t>(std::distance(members.begin(), members.find(target_id_)));
    striped_->SetPart(rank, members.size());
    const uint64_t whole = std::max<uint64_t>(1, (landing_plan_->total + chunk - 1) / chunk);
    return rank * whole / members.size();
  }

  std::string LiveName() const {
    for (size_t s = 0; s < sources_.size(); ++s) {
      if (striped_->sources()[s].live) return sources_[s]->name;
    }
    return "no source";
  }

  // Copies each source's share and status into its attempt.
  void RecordShares(PullResult* result) const {
    if (striped_ == nullptr) return;
    for (size_t s = 0; s < sources_.size(); ++s) {
      const SourceShare& share = striped_->sources()[s];
      PullAttempt& attempt = result->attempts[sources_[s]->attempt];
      attempt.bytes = share.bytes;
      attempt.status = share.status;
    }
  }

  // The result of a complete pull: the destination, and the source that delivered the most.
  void Finish(PullResult* result) {
    size_t top = 0;
    for (size_t s = 0; s < sources_.size(); ++s) {
      if (striped_->sources()[s].bytes > striped_->sources()[top].bytes) top = s;
    }
    OpenSource& main = *sources_[top];
    if (into_ == nullptr) {
      result->model.region = std::move(region_);
      result->model.tensors = landing_plan_->local;
      result->model.checksums = striped_->checksums();
      result->model.total_bytes = landing_plan_->total;
    }
    result->model.metadata = landing_plan_->metadata;
    result->bytes = bytes_;
    result->mx_source_id = candidates_[0].mx_source_id();
    for (const SourceInstanceRef& ref : candidates_) {
      if (ref.worker_id() == result->attempts[main.attempt].worker_id) {
        result->mx_source_id = ref.mx_source_id();
      }
    }
    result->source_worker_id = result->attempts[main.attempt].worker_id;
    result->source_endpoint = result->attempts[main.attempt].endpoint;
    result->peer = main.peer->description();
    result->transport = main.peer->transport();
    result->path = main.peer->path();
    result->checksum_algorithm = landing_plan_->algorithm;
    result->transport_choice = main.peer->choice();
    result->verify_time = striped_->verify_tail();
    result->sources_used = 0;
    for (const SourceShare& share : striped_->sources()) {
      if (share.bytes > 0) ++result->sources_used;
    }
  }

  // The transfer info of `ref`: from the record (centralized mode) or the worker endpoint.
  StatusOr<ferry::v1::GetTransferInfoResponse> TransferInfo(const SourceInstanceRef& ref,
                                                            PullAttempt* attempt) const {
    FERRY_ASSIGN_OR_RETURN(GetMetadataResponse record,
                           options_.client->GetMetadata(ref.mx_source_id(), ref.worker_id()));
    if (!record.found()) {
      return absl::NotFoundError("the server no longer holds this worker's record");
    }
    attempt->endpoint = record.worker().worker_grpc_endpoint();
    if (record.worker().has_nixl_metadata()) {
      FERRY_ASSIGN_OR_RETURN(
          std::optional<ferry::v1::GetTransferInfoResponse> info,
          worker::DecodeCentralizedMetadata(record.worker().nixl_metadata(), ref.worker_id()));
      if (info.has_value()) return *std::move(info);
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

  // A file pull: the tensors contiguous in the first source's order in one region of the
  // engine.
  // `*stop` is set when serving the destination while pulling failed (this target's own
  // failure, the same at every source).
  Status LandInRegion(const Plan& plan, bool* stop) {
    FERRY_RETURN_IF_ERROR(PrepareDestination(std::max<uint64_t>(plan.total, 1), plan.algorithm));
    destination_ = region_.get();
    uint8_t* base = static_cast<uint8_t*>(region_->data());
    prefault_ops_ = MakeOps(plan, base);
    prefault_ = options_.prepare == PullOptions::PreparePages::kAhead && options_.device < 0;
    bytes_ = plan.total;
    for (size_t i = 0; i < plan.remote.size(); ++i) {
      tensors_.push_back({plan.remote[i].name(), base + plan.local[i].offset, plan.local[i].size,
                          plan.remote[i].checksum()});
    }
    if (options_.serve_while_pulling) {
      ServedModel served;
      served.region = std::move(region_);  // the caller's from now on
      served.tensors = plan.local;
      for (const ferry::v1::TensorEntry& e : plan.remote) served.checksums.push_back(e.checksum());
      served.checksum_algorithm = plan.algorithm;
      served.metadata = plan.metadata;
      served.total_bytes = plan.total;
      held_ = std::make_shared<worker::HeldTensors>(plan.remote.size());
      Status serving = options_.serve_while_pulling(std::move(served), held_);
      if (!serving.ok()) {
        *stop = true;
        return Status(serving.code(),
                      absl::StrCat("serving the pull's destination failed: ", serving.message()));
      }
    }
    return absl::OkStatus();
  }

  // PullIntoBuffers: straight into the caller's tensors (tied weights are read once). A model
  // that does not match the source's layout sets *mismatch: it is the caller's error, the same
  // at every source of the identity, and stops the pull.
  Status LandInBuffers(const Plan& plan, const SourceInstanceRef& ref, bool* mismatch) {
    StatusOr<std::vector<const NamedBuffer*>> matched = MatchBuffers(plan, *into_);
    if (!matched.ok()) {
      *mismatch = true;
      return absl::FailedPreconditionError(absl::StrCat(
          "the model does not match the source (worker ", ref.worker_id(), " of ",
          options_.identity.model_name(), "): ", matched.status().message(),
          "; nothing was pulled. Build the model with the source's configuration, or use "
          "another identity"));
    }
    bool on_device = false;
    for (const MemorySpan& span : into_->spans) {
      if (span.size == 0) continue;
      on_device = on_device || span.device >= 0;
      FERRY_ASSIGN_OR_RETURN(
          std::unique_ptr<Region> region,
          options_.engine->RegisterRegion(
              span.data, span.size, span.device >= 0 ? MemoryKind::kCuda : MemoryKind::kHost));
      span_regions_.push_back(std::move(region));
    }
    if (on_device) {
      // Verified where each tensor lands; failed copies compared after a copy to the host.
      DeviceLanding landing;
      FERRY_ASSIGN_OR_RETURN(landing.checksum, SpanChecksum(into_->spans, plan.algorithm));
      std::map<int, std::function<Status(void*, const void*, uint64_t)>> to_host;
      for (const MemorySpan& span : into_->spans) {
        if (span.device < 0 || to_host.count(span.device) != 0) continue;
        FERRY_ASSIGN_OR_RETURN(DeviceLanding d, MakeDeviceLanding(span.device, plan.algorithm));
        to_host.emplace(span.device, std::move(d.to_host));
      }
      landing.to_host = [spans = into_->spans, to_host = std::move(to_host)](
                            void* host, const void* local, uint64_t n) -> Status {
        for (const MemorySpan& span : spans) {
          const uintptr_t lo = reinterpret_cast<uintptr_t>(span.data);
          const uintptr_t at = reinterpret_cast<uintptr_t>(local);
          if (span.device >= 0 && at >= lo && at - lo < span.size) {
            return to_host.at(span.device)(host, local, n);
          }
        }
        std::memcpy(host, local, n);
        return absl::OkStatus();
      };
      device_landing_ = std::move(landing);
    }
    std::set<std::pair<void*, uint64_t>> seen;
    for (size_t i = 0; i < plan.remote.size(); ++i) {
      const NamedBuffer& b = *(*matched)[i];
      tensors_.push_back({plan.remote[i].name(), b.data, b.size, plan.remote[i].checksum()});
      if (b.size > 0 && seen.emplace(b.data, b.size).second) bytes_ += b.size;
    }
    return absl::OkStatus();
  }

  // The destination: shareable engine memory when it will be served, else plain anonymous
  // memory (see PullOptions.servable). Its pages are faulted in by Prefaulter, ahead of the
  // transfer, unless options_.prepare says before.
  Status PrepareDestination(uint64_t bytes, ChecksumAlgorithm algorithm) {
    AllocateOptions allocate;
    if (options_.device >= 0) {
      FERRY_ASSIGN_OR_RETURN(DeviceLanding landing, MakeDeviceLanding(options_.device, algorithm));
      device_landing_ = std::move(landing);
      allocate.kind = MemoryKind::kCuda;
      allocate.device = options_.device;
      FERRY_ASSIGN_OR_RETURN(region_, options_.engine->AllocateRegion(bytes, allocate));
      return absl::OkStatus();
    }
    allocate.shareable = options_.servable;
    allocate.prefault = options_.prepare == PullOptions::PreparePages::kBefore;
    FERRY_ASSIGN_OR_RETURN(region_, options_.engine->AllocateRegion(bytes, allocate));
    return absl::OkStatus();
  }

  const PullOptions& options_;
  const BufferSet* into_;  // PullIntoBuffers: the caller's tensors; else null
  std::string who_;
  std::vector<SourceInstanceRef> candidates_;
  size_t tries_ = 0;                              // candidates that may be opened
  size_t next_ = 0;                               // the next candidate to open
  std::unique_ptr<Plan> landing_plan_;            // the plan that fixed the landing
  std::string landing_source_;                    // whose plan it is, for messages
  std::vector<LandingVerifier::Tensor> tensors_;  // where the pull lands (the first source's order)
  uint64_t bytes_ = 0;                            // distinct bytes landing
  std::vector<std::unique_ptr<Region>> span_regions_;  // into_'s spans, registered once
  std::unique_ptr<Region> region_;                     // the file pull's destination
  std::optional<DeviceLanding> device_landing_;        // options_.device >= 0
  std::vector<ReadOp> prefault_ops_;  // the order the file pull's pages are prepared in
  bool prefault_ = false;
  SourceSelection selection_;
  std::string target_id_;                        // this target's worker id (seeds the order)
  std::set<std::string> partial_;                // worker ids of candidates still pulling
  bool relisted_ = false;                        // listed again before the first round
  std::map<std::string, size_t> landing_index_;  // tensor name -> index in tensors_
  Region* destination_ = nullptr;  // the file pull's destination (owned by region_ or the
                                   // caller of serve_while_pulling)
  std::shared_ptr<worker::HeldTensors> held_;         // serve_while_pulling: what is verified
  std::vector<std::unique_ptr<OpenSource>> sources_;  // in the order added to striped_
  std::unique_ptr<StripedRead> striped_;              // destroyed before sources_' peers
};

}  // namespace

StatusOr<PullResult> PullWeights(const PullOptions& options) {
  return Puller(options, nullptr).Run();
}

StatusOr<PullResult> PullIntoBuffers(const PullOptions& options, const BufferSet& into) {
  return Puller(options, &into).Run();
}

}  // namespace ferry::weights
