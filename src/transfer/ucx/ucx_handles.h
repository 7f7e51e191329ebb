// Small RAII owners for UCX's C handles, and the conversion of ucs_status_t into ferry's Status.
// Each owner releases its handle exactly once, in its destructor; none of them is copyable.
//
// Thread-safety: thread-compatible. A handle tied to a worker (address, endpoint, request) must
// be released by the thread that drives that worker.
#ifndef FERRY_TRANSFER_UCX_UCX_HANDLES_H_
#define FERRY_TRANSFER_UCX_UCX_HANDLES_H_

#include <ucp/api/ucp.h>

#include <initializer_list>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ferry/status.h"

namespace ferry::internal::ucx {

// "<call>: <ucs_status_string>" as a Status whose code fits the UCX status: Unavailable for
// unreachable/failed peers and timeouts, ResourceExhausted for memory, Cancelled for
// UCS_ERR_CANCELED, InvalidArgument for bad parameters, Internal otherwise. `context` is
// prepended ("<context>: <call>: ...") when non-empty.
Status UcsError(absl::string_view call, ucs_status_t status, absl::string_view context = "");

// A ucp_config_t read with no environment prefix override; released by ucp_config_release.
struct ConfigDeleter {
  void operator()(ucp_config_t* c) const { ucp_config_release(c); }
};
using Config = std::unique_ptr<ucp_config_t, ConfigDeleter>;

// Reads UCX's defaults (UCX_* environment included, as UCX always does) and applies `settings`
// (name without the UCX_ prefix -> value) with ucp_config_modify. Errors name the setting.
StatusOr<Config> ReadConfig(
    std::initializer_list<std::pair<absl::string_view, std::string>> settings);

// A ucp_context_h, cleaned up with ucp_cleanup. Everything made from it (workers, memory
// handles) must be released first; holders share it through shared_ptr for that reason.
class Context {
 public:
  static StatusOr<std::shared_ptr<Context>> Create(const ucp_config_t* config,
                                                   const ucp_params_t& params);
  ~Context() { ucp_cleanup(h_); }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ucp_context_h get() const { return h_; }

 private:
  explicit Context(ucp_context_h h) : h_(h) {}
  ucp_context_h h_;
};

struct WorkerDeleter {
  void operator()(ucp_worker* w) const { ucp_worker_destroy(w); }
};
// A ucp_worker_h. Endpoints, addresses and requests of the worker must be released first.
using Worker = std::unique_ptr<ucp_worker, WorkerDeleter>;
StatusOr<Worker> CreateWorker(ucp_context_h context, ucs_thread_mode_t mode);

// The packed address of a worker, released with ucp_worker_release_address. Borrows the worker,
// which must outlive it.
class WorkerAddress {
 public:
  static StatusOr<WorkerAddress> Get(ucp_worker_h worker);
  WorkerAddress(WorkerAddress&& o) noexcept : worker_(o.worker_), addr_(o.addr_), len_(o.len_) {
    o.addr_ = nullptr;
  }
  WorkerAddress& operator=(WorkerAddress&&) = delete;
  ~WorkerAddress() {
    if (addr_ != nullptr) ucp_worker_release_address(worker_, addr_);
  }
  std::string bytes() const { return std::string(reinterpret_cast<const char*>(addr_), len_); }

 private:
  WorkerAddress(ucp_worker_h w, ucp_address_t* a, size_t len) : worker_(w), addr_(a), len_(len) {}
  ucp_worker_h worker_;
  ucp_address_t* addr_;
  size_t len_;
};

// A ucp_mem_h, unmapped with ucp_mem_unmap. Borrows the context, which must outlive it.
class MemHandle {
 public:
  // ucp_mem_map of [address, address+length); UCP_MEM_MAP_ALLOCATE when address is null.
  // `memory_type`: what the memory is (UCS_MEMORY_TYPE_CUDA for device memory); UNKNOWN lets
  // UCX detect it.
  static StatusOr<MemHandle> Map(ucp_context_h context, void* address, uint64_t length,
                                 ucs_memory_type_t memory_type = UCS_MEMORY_TYPE_UNKNOWN);
  // Takes ownership of an existing handle (e.g. an Allocation's).
  MemHandle(ucp_context_h context, ucp_mem_h memh) : context_(context), memh_(memh) {}
  MemHandle(MemHandle&& o) noexcept : context_(o.context_), memh_(o.memh_) { o.memh_ = nullptr; }
  MemHandle& operator=(MemHandle&&) = delete;
  ~MemHandle() { Reset(); }
  void Reset();
  // Gives up ownership without unmapping.
  ucp_mem_h release() {
    ucp_mem_h h = memh_;
    memh_ = nullptr;
    return h;
  }
  ucp_mem_h get() const { return memh_; }
  // The mapped address (the allocation's address after Map(nullptr, ...)).
  StatusOr<void*> address() const;

 private:
  ucp_context_h context_;
  ucp_mem_h memh_;
};

// ucp_rkey_pack of a memory handle, copied out (the UCX buffer is released at once).
StatusOr<std::string> PackRkey(ucp_context_h context, ucp_mem_h memh);

// A ucp_ep_h. Borrows its worker, which must outlive it; closed (Close or the destructor) by
// the thread that drives the worker.
class Endpoint {
 public:
  Endpoint() = default;
  Endpoint(ucp_worker_h worker, ucp_ep_h ep) : worker_(worker), ep_(ep) {}
  Endpoint(Endpoint&& o) noexcept : worker_(o.worker_), ep_(o.ep_) { o.ep_ = nullptr; }
  // Force-closes the endpoint held now, then takes `o`'s.
  Endpoint& operator=(Endpoint&& o) noexcept {
    if (this != &o) {
      Close(/*force=*/true);
      worker_ = o.worker_;
      ep_ = o.ep_;
      o.ep_ = nullptr;
    }
    return *this;
  }
  ~Endpoint() { Close(/*force=*/true); }
  // Closes the endpoint and drives the worker until UCX finished closing it, or `timeout`
  // passed (then the endpoint is abandoned to ucp_worker_destroy). `force` skips the flush
  // (required after a peer failure; outstanding requests complete with UCS_ERR_CANCELED).
  // Idempotent.
  void Close(bool force, absl::Duration timeout = absl::Seconds(5));
  ucp_ep_h get() const { return ep_; }

 private:
  ucp_worker_h worker_ = nullptr;
  ucp_ep_h ep_ = nullptr;
};

struct RkeyDeleter {
  void operator()(ucp_rkey* r) const { ucp_rkey_destroy(r); }
};
// An unpacked remote key. Must be destroyed before its endpoint.
using Rkey = std::unique_ptr<ucp_rkey, RkeyDeleter>;
StatusOr<Rkey> UnpackRkey(ucp_ep_h ep, const std::string& packed);

// A UCX request returned by a non-blocking call, freed with ucp_request_free. Freeing an
// unfinished request does not cancel it; drive the worker until it finishes first.
class Request {
 public:
  Request() = default;
  explicit Request(void* r) : r_(r) {}
  Request(Request&& o) noexcept : r_(o.r_) { o.r_ = nullptr; }
  Request& operator=(Request&& o) noexcept {
    if (this != &o) {
      Reset();
      r_ = o.r_;
      o.r_ = nullptr;
    }
    return *this;
  }
  ~Request() { Reset(); }
  void Reset() {
    if (r_ != nullptr) ucp_request_free(r_);
    r_ = nullptr;
  }
  void* get() const { return r_; }
  // UCS_INPROGRESS while unfinished; UCS_OK for no request (finished immediately).
  ucs_status_t status() const { return r_ == nullptr ? UCS_OK : ucp_request_check_status(r_); }

 private:
  void* r_ = nullptr;
};

}  // namespace ferry::internal::ucx

#endif  // FERRY_TRANSFER_UCX_UCX_HANDLES_H_
