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

namespace ferry::internal::ucx {
namespace {

// How long an aborted batch waits for UCX to finish cancelled requests before it force-closes
// the endpoint (which completes them all).
constexpr int kMadvPopulateRead = 22;  // MADV_POPULATE_READ, Linux 5.14+

constexpr absl::Duration kCancelGrace = absl::Milliseconds(50);

struct RemoteRegion {
  uint64_t base = 0;
  uint64_t size = 0;
  Rkey rkey;
};

// One piece in flight.
struct Slot {
  Request req;
  Chunk chunk;
  bool busy = false;
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
    if (r.ucx_rkey().empty()) continue;
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
    RemoteRegion rr;
    rr.base = r.base_address();
    rr.size = r.size();
    rr.rkey = *std::move(rkey);
    regions_.emplace(r.id(), std::move(rr));
  }
  return absl::OkStatus();
}

void UcxPeer::Abort(std::vector<Slot>& slots) {
  auto any_busy = [&] {
    bool busy = false;
    for (Slot& s : slots) {
      if (s.busy && s.req.status() != UCS_INPROGRESS) {
        s.req.Reset();
        s.busy = false;
      }
      busy = busy || s.busy;
    }
    return busy;
  };
  for (Slot& s : slots) {
    if (s.busy) ucp_request_cancel(worker_.get(), s.req.get());
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
      ucp_request_param_t param = {};
      void* r = ucp_get_nbx(ep_.get(), c.local, c.length, region.base + c.remote_offset,
                            region.rkey.get(), &param);
      if (UCS_PTR_IS_ERR(r)) {
        const Status e = UcsError("ucp_get_nbx", UCS_PTR_STATUS(r));
        error = fail(e.code(), absl::StrCat("failed (", e.message(), ")"), c);
        break;
      }
      if (r == nullptr) {
        feed.Done(c);
      } else {
        s.req = Request(r);
        s.chunk = c;
        s.busy = true;
      }
    }

    // Collect completions.
    bool busy = false;
    for (Slot& s : slots) {
      if (!s.busy) continue;
      const ucs_status_t st = s.req.status();
      if (st == UCS_INPROGRESS) {
        busy = true;
        continue;
      }
      if (st == UCS_OK) {
        feed.Done(s.chunk);
      } else if (error.ok()) {
        const Status e = UcsError("ucp_get_nbx", st);
        error = fail(peer_error_ != UCS_OK ? absl::StatusCode::kUnavailable : e.code(),
                     absl::StrCat("failed (", e.message(), ")"), s.chunk);
      }
      s.req.Reset();
      s.busy = false;
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
