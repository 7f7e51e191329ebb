// TransferEngine, Region and the option helpers of include/ferry/transfer.h. The
// work happens in EngineCore (engine_core.cc), the transports, peer.cc and the read core
// (read_core.cc).
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/pages.h"
#include "common/utf8.h"
#include "ferry/transfer.h"
#include "transfer/engine_core.h"
#include "transfer/tcp/tcp_socket.h"

namespace ferry {

StatusOr<TransportKind> ParseTransportKind(std::string_view name) {
  if (name == "auto") return TransportKind::kAuto;
  if (name == "ucx") return TransportKind::kUcx;
  if (name == "tcp") return TransportKind::kTcp;
  if (name == "shm") return TransportKind::kShm;
  if (name == "cuda_ipc") return TransportKind::kCudaIpc;
  return absl::InvalidArgumentError(absl::StrCat("unknown transport \"", std::string(name),
                                                 "\"; valid: auto, ucx, tcp, shm, cuda_ipc"));
}

std::string_view TransportKindName(TransportKind kind) {
  switch (kind) {
    case TransportKind::kAuto:
      return "auto";
    case TransportKind::kUcx:
      return "ucx";
    case TransportKind::kTcp:
      return "tcp";
    case TransportKind::kShm:
      return "shm";
    case TransportKind::kCudaIpc:
      return "cuda_ipc";
  }
  return "unknown";
}

Status TransferEngineOptions::Validate() const {
  // The blob carries it in a protobuf string, which a target refuses to decode unless UTF-8.
  if (!internal::IsValidUtf8(name)) {
    return absl::InvalidArgumentError(
        "TransferEngineOptions.name is not valid UTF-8, so no target could decode this engine's "
        "blob; pass a UTF-8 name");
  }
  if (!enable_shm && !enable_ucx && !enable_tcp && !enable_cuda_ipc) {
    return absl::InvalidArgumentError(
        "TransferEngineOptions: enable_shm, enable_ucx, enable_tcp and enable_cuda_ipc are all "
        "false; enable at least one");
  }
  if (shm_copy_threads < 1 || shm_copy_threads > 16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TransferEngineOptions.shm_copy_threads=", shm_copy_threads, " is outside 1..16"));
  }
  if (enable_tcp) {
    FERRY_RETURN_IF_ERROR(
        internal::tcp::ParseHostPort(tcp_listen, "TransferEngineOptions.tcp_listen").status());
  }
  if (tcp_streams < 1 || tcp_streams > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("TransferEngineOptions.tcp_streams=", tcp_streams, " is outside 1..64"));
  }
  if (tcp_socket_buffer < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("TransferEngineOptions.tcp_socket_buffer=", tcp_socket_buffer,
                     " is negative; use 0 for the kernel's autotuning"));
  }
  if (chunk_bytes < (64ull << 10) || chunk_bytes > (1ull << 30)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TransferEngineOptions.chunk_bytes=", chunk_bytes, " is outside 64 KiB..1 GiB"));
  }
  if (max_inflight < 1 || max_inflight > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("TransferEngineOptions.max_inflight=", max_inflight, " is outside 1..1024"));
  }
  if (max_upload_rate > 0 && (enable_shm || enable_ucx || enable_cuda_ipc || !enable_tcp)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TransferEngineOptions.max_upload_rate=", max_upload_rate,
        " caps what the TCP server sends, but shm, UCX and CUDA IPC reads are one-sided and "
        "cannot be paced by the source: enable TCP only (enable_shm, enable_ucx and "
        "enable_cuda_ipc false) or drop the cap"));
  }
  if (staging_slots < 2 || staging_slots > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("TransferEngineOptions.staging_slots=", staging_slots, " is outside 2..64"));
  }
  if (staging_slot_bytes < (64ull << 10) || staging_slot_bytes > (256ull << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("TransferEngineOptions.staging_slot_bytes=", staging_slot_bytes,
                     " is outside 64 KiB..256 MiB"));
  }
  return absl::OkStatus();
}

Region::~Region() { core_->RemoveRegion(id_); }

Status Region::Prefault(uint64_t offset, uint64_t length) const {
  if (offset > size_ || length > size_ - offset) {
    return absl::InvalidArgumentError(absl::StrCat("Region::Prefault: [", offset, ", +", length,
                                                   ") is outside region ", id_, " of ", size_,
                                                   " bytes"));
  }
  if (length == 0 || kind_ != MemoryKind::kHost) return absl::OkStatus();
  Status s = FaultInForWriting(static_cast<char*>(data_) + offset, length);
  if (s.code() == absl::StatusCode::kFailedPrecondition) {
    return Status(s.code(),
                  absl::StrCat("cannot fault in region ", id_, " for writing: ", s.message(),
                               "; register writable memory as a destination"));
  }
  if (!s.ok()) {
    return Status(s.code(), absl::StrCat("region ", id_, ": ", s.message(),
                                         "; free memory or pull less at once"));
  }
  return absl::OkStatus();
}

StatusOr<std::unique_ptr<TransferEngine>> TransferEngine::Create(TransferEngineOptions options) {
  FERRY_RETURN_IF_ERROR(options.Validate());
  FERRY_ASSIGN_OR_RETURN(std::shared_ptr<internal::EngineCore> core,
                         internal::EngineCore::Create(std::move(options)));
  return std::unique_ptr<TransferEngine>(new TransferEngine(std::move(core)));
}

TransferEngine::TransferEngine(std::shared_ptr<internal::EngineCore> core)
    : core_(std::move(core)) {}

TransferEngine::~TransferEngine() { Stop(); }

StatusOr<std::unique_ptr<Region>> TransferEngine::AllocateRegion(uint64_t bytes,
                                                                 AllocateOptions options) {
  return core_->AllocateRegion(bytes, options);
}

StatusOr<std::unique_ptr<Region>> TransferEngine::RegisterRegion(void* data, uint64_t bytes,
                                                                 MemoryKind kind) {
  return core_->RegisterRegion(data, bytes, kind);
}

std::string TransferEngine::ExportBlob() const { return core_->ExportBlob(); }

double TransferEngine::TakeServingLoad() { return core_->TakeLoad(); }

Status TransferEngine::LimitServing(const Region& region,
                                    std::function<bool(uint64_t, uint64_t)> allowed) {
  return core_->LimitRegion(region.id(), std::move(allowed));
}

StatusOr<std::unique_ptr<Peer>> TransferEngine::Connect(std::string_view blob,
                                                        TransportKind transport) {
  return core_->Connect(blob, transport);
}

std::vector<TransportKind> TransferEngine::transports() const { return core_->transports(); }

const TransferEngineOptions& TransferEngine::options() const { return core_->options(); }

void TransferEngine::Stop() { core_->Stop(); }

}  // namespace ferry
