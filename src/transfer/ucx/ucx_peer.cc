#include "transfer/ucx/ucx_peer.h"

#include <sys/mman.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "transfer/ucx/key_pieces.h"

namespace ferry::internal::ucx {
namespace {

// How long an aborted batch waits for UCX to finish cancelled requests before it force-closes
// the endpoint (which completes them all).
constexpr int kMadvPopulateRead = 22;  // MADV_POPULATE_READ, Linux 5.14+

constexpr absl::Duration kCancelGrace = absl::Milliseconds(50);

// A remote region: one key for host memory, one per allocation for device memory (key_pieces.h).
struct RemoteRegion {
  uint64_t base = 0;
  uint64_t size = 0;
  std::vector<uint64_t> starts;  // each key's first region offset, ascending, starts[0] == 0
  std::vector<Rkey> keys;
};

// One piece of the read in flight: one request per remote key it spans.
struct Slot {
  std::vector<Request> reqs;
  Chunk chunk;
  bool busy = false;
  bool partial = false;  // posting failed part way: its bytes did not all land
};

class UcxPeer final : public PeerConnection {
 public:
  UcxPeer(std::shared_ptr<Context> context, const TransferEngineOptions& options,
          std::string description)
      : context_(std::move(context)),
        max_inflight_(static_cast<size_t>(options.max_inflight)),
        description_(std::move(description)) {}
  ~UcxPeer() override { Close(); }

  Status Init(const ferry::v1::TransferBlob& remote);
  Status Execute(ChunkFeed& feed) override;
  void Close() override;

 private:
  static void OnError(void* arg, ucp_ep_h ep, ucs_status_t status) {
    auto* self = static_cast<UcxPeer*>(arg);
    if (self->peer_error_ == UCS_OK) self->peer_error_ = status;
  }
  // Stops every busy slot: cancels, drives the worker, force-closes the endpoint if UCX does not
  // finish them within kCancelGrace. On return UCX writes into no caller buffer.
  void Abort(std::vector<Slot>& slots) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CloseLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  // Destruction order matters: rkeys, then endpoint, then worker, then context.
  std::shared_ptr<Context> context_;
  Worker worker_ ABSL_GUARDED_BY(mu_);
  Endpoint ep_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint32_t, RemoteRegion> regions_ ABSL_GUARDED_BY(mu_);
  // Set by OnError, which UCX calls from ucp_worker_progress on the thread holding mu_.
  ucs_status_t peer_error_ = UCS_OK;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;  // endpoint failed or was force-closed
  const size_t max_inflight_;
  const std::string description_;
};

Status UcxPeer::Init(const ferry::v1::TransferBlob& remote) {
  absl::MutexLock lock(&mu_);
  auto fail = [&](const Status& s) {
    return absl::UnavailableError(
        absl::StrCat("UCX connect to ", description_, ": ", s.message(),
                     "; is the source process alive and on a reachable host?"));
  };
  auto worker = CreateWorker(context_->get(), UCS_THREAD_MODE_SINGLE);
  if (!worker.ok()) return fail(worker.status());
  worker_ = *std::move(worker);

  const std::string& addr = remote.ucx().worker_address();
  ucp_ep_params_t params = {};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(addr.data());
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = &UcxPeer::OnError;
  params.err_handler.arg = this;
  ucp_ep_h ep = nullptr;
  const ucs_status_t st = ucp_ep_create(worker_.get(), &params, &ep);
  if (st != UCS_OK) return fail(UcsError("ucp_ep_create", st));
  ep_ = Endpoint(worker_.get(), ep);

  for (const auto& r : remote.regions()) {
    RemoteRegion rr;
    rr.base = r.base_address();
    rr.size = r.size();
    if (!r.ucx_rkey().empty()) {
      auto rkey = UnpackRkey(ep, r.ucx_rkey());
      if (!rkey.ok()) {
        return fail(
            absl::UnavailableError(absl::StrCat("region ", r.id(), ": ", rkey.status().message())));
      }
      // Shared memory: the region is mapped into this process now. Fault its pages in with one
      // madvise rather than one page fault per page during the first read (slow in VMs).
      void* local = nullptr;
      if (ucp_rkey_ptr(rkey->get(), r.base_address(), &local) == UCS_OK && local != nullptr) {
        (void)::madvise(local, r.size(), kMadvPopulateRead);
      }
      rr.starts.push_back(0);
      rr.keys.push_back(*std::move(rkey));
    } else if (r.ucx_pieces_size() > 0) {
      // A corrupt blob is the source's fault, not a sign it is unreachable: DataLoss, so auto
      // does not quietly move on to another transport.
      if (Status s = CheckKeyPieces(r); !s.ok()) {
        return absl::DataLossError(
            absl::StrCat("UCX connect to ", description_, ": ", s.message()));
      }
      for (const auto& piece : r.ucx_pieces()) {
        auto rkey = UnpackRkey(ep, piece.rkey());
        if (!rkey.ok()) {
          return fail(absl::UnavailableError(absl::StrCat("region ", r.id(), " at ", piece.offset(),
                                                          ": ", rkey.status().message())));
        }
        rr.starts.push_back(piece.offset());
        rr.keys.push_back(*std::move(rkey));
      }
    } else {
      continue;  // not served over UCX
    }
    regions_.emplace(r.id(), std::move(rr));
  }
  return absl::OkStatus();
}

void UcxPeer::Abort(std::vector<Slot>& slots) {
  auto any_busy = [&] {
    bool busy = false;
    for (Slot& s : slots) {
      if (!s.busy) continue;
      bool done = true;
      for (Request& req : s.reqs) done = done && req.status() != UCS_INPROGRESS;
      if (done) {
        s.reqs.clear();
        s.busy = false;
      }
      busy = busy || s.busy;
    }
    return busy;
  };
  for (Slot& s : slots) {
    if (!s.busy) continue;
    for (Request& req : s.reqs) {
      if (req.status() == UCS_INPROGRESS) ucp_request_cancel(worker_.get(), req.get());
    }
  }
  const absl::Time force_at = absl::Now() + kCancelGrace;
  while (any_busy()) {
    ucp_worker_progress(worker_.get());
    if (absl::Now() > force_at && ep_.get() != nullptr) {
      // RMA requests cannot be cancelled one by one; closing the endpoint by force completes
      // them all (with UCS_ERR_CANCELED).
      ep_.Close(/*force=*/true);
      broken_ = true;
    }
  }
  if (broken_) regions_.clear();  // no request uses an rkey any more
}

Status UcxPeer::Execute(ChunkFeed& feed) {
  absl::MutexLock lock(&mu_);
  if (closed_) {
    return absl::FailedPreconditionError(
        absl::StrCat("UCX read from ", description_, ": the connection is closed"));
  }
  if (broken_ || peer_error_ != UCS_OK) {
    return absl::FailedPreconditionError(
        absl::StrCat("UCX read from ", description_, ": the connection failed earlier (",
                     ucs_status_string(peer_error_ != UCS_OK ? peer_error_ : UCS_ERR_CANCELED),
                     "); connect again"));
  }
  for (uint32_t region : feed.regions()) {
    if (!regions_.contains(region)) {
      return absl::InvalidArgumentError(absl::StrCat("UCX read from ", description_,
                                                     ": the read needs region ", region,
                                                     ", which the peer did not export over UCX"));
    }
  }

  std::vector<Slot> slots(std::max<size_t>(1, max_inflight_));
  bool exhausted = false;
  Status error;
  auto fail = [&](absl::StatusCode code, absl::string_view what, const Chunk& c) {
    return absl::Status(
        code, absl::StrCat("UCX read from ", description_, " ", what, " at ", RangeText(c)));
  };

  uint64_t polls = 0;
  for (;;) {
    // Post pieces into free slots.
    for (Slot& s : slots) {
      if (s.busy || exhausted) continue;
      Chunk c;
      if (!feed.Next(&c)) {
        exhausted = true;
        break;
      }
      const RemoteRegion& region = regions_.at(c.remote_region);
      if (c.remote_offset > region.size || c.length > region.size - c.remote_offset) {
        error = fail(absl::StatusCode::kInvalidArgument, "is outside the region", c);
        break;
      }
      // One get per remote key the piece spans (device regions: one key per allocation).
      for (const KeySpan& span :
           SplitAtKeyEdges(region.starts, region.size, c.remote_offset, c.length)) {
        ucp_request_param_t param = {};
        void* r = ucp_get_nbx(ep_.get(), c.local + (span.offset - c.remote_offset), span.length,
                              region.base + span.offset, region.keys[span.piece].get(), &param);
        if (UCS_PTR_IS_ERR(r)) {
          const Status e = UcsError("ucp_get_nbx", UCS_PTR_STATUS(r));
          error = fail(e.code(), absl::StrCat("failed (", e.message(), ")"), c);
          break;
        }
        if (r != nullptr) s.reqs.emplace_back(r);
      }
      if (!error.ok()) {
        // Requests already posted for this piece still run: wait for them like any other, but
        // the piece never counts as landed.
        s.chunk = c;
        s.busy = !s.reqs.empty();
        s.partial = true;
        break;
      }
      if (s.reqs.empty()) {
        feed.Done(c);
      } else {
        s.chunk = c;
        s.busy = true;
      }
    }

    // Collect completions.
    bool busy = false;
    for (Slot& s : slots) {
      if (!s.busy) continue;
      ucs_status_t st = UCS_OK;
      for (Request& req : s.reqs) {
        const ucs_status_t one = req.status();
        if (one == UCS_INPROGRESS || st == UCS_OK) st = one;
        if (st == UCS_INPROGRESS) break;
      }
      if (st == UCS_INPROGRESS) {
        busy = true;
        continue;
      }
      if (st == UCS_OK) {
        if (!s.partial) feed.Done(s.chunk);
      } else if (error.ok()) {
        const Status e = UcsError("ucp_get_nbx", st);
        error = fail(peer_error_ != UCS_OK ? absl::StatusCode::kUnavailable : e.code(),
                     absl::StrCat("failed (", e.message(), ")"), s.chunk);
      }
      s.reqs.clear();
      s.busy = false;
      s.partial = false;
    }
    if (error.ok() && peer_error_ != UCS_OK) {
      error = absl::UnavailableError(
          absl::StrCat("UCX read from ", description_, " failed: peer unreachable (",
                       ucs_status_string(peer_error_), "); is the source process alive?"));
    }
    if (error.ok() && !busy && exhausted) return absl::OkStatus();
    const bool stop = error.ok() && (++polls % 16 == 0 || !busy) && feed.stopping();
    if (!error.ok() || stop) {
      Abort(slots);
      if (peer_error_ != UCS_OK) broken_ = true;
      return error;
    }
    if (busy) ucp_worker_progress(worker_.get());
  }
}

void UcxPeer::CloseLocked() {
  if (closed_) return;
  closed_ = true;
  regions_.clear();  // rkeys before the endpoint
  ep_.Close(/*force=*/broken_ || peer_error_ != UCS_OK, absl::Seconds(2));
  worker_.reset();
}

void UcxPeer::Close() {
  absl::MutexLock lock(&mu_);
  CloseLocked();
}

}  // namespace

StatusOr<std::unique_ptr<PeerConnection>> ConnectUcxPeer(std::shared_ptr<Context> context,
                                                         const TransferEngineOptions& options,
                                                         const ferry::v1::TransferBlob& remote,
                                                         const std::string& description) {
  if (!remote.has_ucx() || remote.ucx().worker_address().empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("UCX connect to ", description, ": the peer does not serve UCX"));
  }
  auto peer = std::make_unique<UcxPeer>(std::move(context), options, description);
  FERRY_RETURN_IF_ERROR(peer->Init(remote));
  return std::unique_ptr<PeerConnection>(std::move(peer));
}

}  // namespace ferry::internal::ucx
