#include "transfer/ucx/ucx_handles.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace ferry::internal::ucx {

Status UcsError(absl::string_view call, ucs_status_t status, absl::string_view context) {
  std::string msg = context.empty()
                        ? absl::StrCat(call, ": ", ucs_status_string(status))
                        : absl::StrCat(context, ": ", call, ": ", ucs_status_string(status));
  switch (status) {
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_TIMED_OUT:
    case UCS_ERR_REJECTED:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_IO_ERROR:
    case UCS_ERR_NO_DEVICE:
    case UCS_ERR_SHMEM_SEGMENT:
      return absl::UnavailableError(msg);
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_EXCEEDS_LIMIT:
      return absl::ResourceExhaustedError(msg);
    case UCS_ERR_CANCELED:
      return absl::CancelledError(msg);
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
    case UCS_ERR_NO_ELEM:
      return absl::InvalidArgumentError(msg);
    default:
      return absl::InternalError(msg);
  }
}

StatusOr<Config> ReadConfig(
    std::initializer_list<std::pair<absl::string_view, std::string>> settings) {
  ucp_config_t* raw = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &raw);
  if (st != UCS_OK) return UcsError("ucp_config_read", st);
  Config config(raw);
  for (const auto& [name, value] : settings) {
    const std::string n(name);
    st = ucp_config_modify(config.get(), n.c_str(), value.c_str());
    if (st != UCS_OK) {
      return UcsError(absl::StrCat("ucp_config_modify(", n, "=\"", value, "\")"), st,
                      "UCX configuration");
    }
  }
  return config;
}

StatusOr<std::shared_ptr<Context>> Context::Create(const ucp_config_t* config,
                                                   const ucp_params_t& params) {
  ucp_context_h h = nullptr;
  const ucs_status_t st = ucp_init(&params, config, &h);
  if (st != UCS_OK) return UcsError("ucp_init", st);
  return std::shared_ptr<Context>(new Context(h));
}

StatusOr<Worker> CreateWorker(ucp_context_h context, ucs_thread_mode_t mode) {
  ucp_worker_params_t params = {};
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  params.thread_mode = mode;
  ucp_worker_h w = nullptr;
  const ucs_status_t st = ucp_worker_create(context, &params, &w);
  if (st != UCS_OK) return UcsError("ucp_worker_create", st);
  return Worker(w);
}

StatusOr<WorkerAddress> WorkerAddress::Get(ucp_worker_h worker) {
  ucp_address_t* addr = nullptr;
  size_t len = 0;
  const ucs_status_t st = ucp_worker_get_address(worker, &addr, &len);
  if (st != UCS_OK) return UcsError("ucp_worker_get_address", st);
  return WorkerAddress(worker, addr, len);
}

void Endpoint::Close(bool force, absl::Duration timeout) {
  if (ep_ == nullptr) return;
  ucp_request_param_t param = {};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  void* req = ucp_ep_close_nbx(ep_, &param);
  ep_ = nullptr;
  if (req == nullptr || UCS_PTR_IS_ERR(req)) return;
  const absl::Time give_up = absl::Now() + timeout;
  while (ucp_request_check_status(req) == UCS_INPROGRESS) {
    ucp_worker_progress(worker_);
    if (absl::Now() > give_up) {
      spdlog::warn("UCX endpoint close did not finish within {}; leaving it to worker teardown",
                   absl::FormatDuration(timeout));
      break;
    }
  }
  ucp_request_free(req);
}

StatusOr<MemHandle> MemHandle::Map(ucp_context_h context, void* address, uint64_t length,
                                   ucs_memory_type_t memory_type) {
  ucp_mem_map_params_t params = {};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  params.address = address;
  params.length = length;
  params.flags = address == nullptr ? UCP_MEM_MAP_ALLOCATE : 0;
  if (memory_type != UCS_MEMORY_TYPE_UNKNOWN) {
    params.field_mask |= UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    params.memory_type = memory_type;
  }
  ucp_mem_h memh = nullptr;
  const ucs_status_t st = ucp_mem_map(context, &params, &memh);
  if (st != UCS_OK) {
    return UcsError(address == nullptr ? "ucp_mem_map(ALLOCATE)" : "ucp_mem_map", st,
                    absl::StrCat(length, " bytes"));
  }
  return MemHandle(context, memh);
}

void MemHandle::Reset() {
  if (memh_ == nullptr) return;
  const ucs_status_t st = ucp_mem_unmap(context_, memh_);
  if (st != UCS_OK) spdlog::error("ucp_mem_unmap: {}", ucs_status_string(st));
  memh_ = nullptr;
}

StatusOr<void*> MemHandle::address() const {
  ucp_mem_attr_t attr = {};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS;
  const ucs_status_t st = ucp_mem_query(memh_, &attr);
  if (st != UCS_OK) return UcsError("ucp_mem_query", st);
  return attr.address;
}

StatusOr<std::string> PackRkey(ucp_context_h context, ucp_mem_h memh) {
  void* buf = nullptr;
  size_t len = 0;
  const ucs_status_t st = ucp_rkey_pack(context, memh, &buf, &len);
  if (st != UCS_OK) return UcsError("ucp_rkey_pack", st);
  std::string packed(static_cast<const char*>(buf), len);
  ucp_rkey_buffer_release(buf);
  return packed;
}

StatusOr<Rkey> UnpackRkey(ucp_ep_h ep, const std::string& packed) {
  ucp_rkey_h rkey = nullptr;
  const ucs_status_t st = ucp_ep_rkey_unpack(ep, packed.data(), &rkey);
  if (st != UCS_OK) return UcsError("ucp_ep_rkey_unpack", st);
  return Rkey(rkey);
}

}  // namespace ferry::internal::ucx
