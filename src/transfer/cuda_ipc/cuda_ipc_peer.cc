#include "transfer/cuda_ipc/cuda_ipc_peer.h"

#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "transfer/shm/shm_wire.h"

namespace ferry::internal::cuda_ipc {

using shm::FromReply;
using shm::OpenRequest;
using shm::Reply;
using shm::SendPacket;

StatusOr<std::unique_ptr<CudaIpcPeerConnection>> CudaIpcPeerConnection::Create(
    const std::string& socket_name, const std::string& secret, std::shared_ptr<IpcMemory> memory,
    std::string description) {
  FERRY_ASSIGN_OR_RETURN(Fd control, shm::Greet(socket_name, secret, "cuda_ipc", description));
  return std::unique_ptr<CudaIpcPeerConnection>(
      new CudaIpcPeerConnection(std::move(control), std::move(memory), std::move(description)));
}

CudaIpcPeerConnection::CudaIpcPeerConnection(Fd control, std::shared_ptr<IpcMemory> memory,
                                             std::string description)
    : memory_(std::move(memory)),
      description_(std::move(description)),
      control_(std::move(control)) {}

CudaIpcPeerConnection::~CudaIpcPeerConnection() { Close(); }

void CudaIpcPeerConnection::Close() {
  closing_.store(true);  // a running Execute stops between copies
  absl::MutexLock lock(&mu_);
  mappings_.clear();  // closing the socket tells the source these mappings are gone
  control_.Reset();
}

void CudaIpcPeerConnection::Unmap(uint32_t region) {
  if (mappings_.erase(region) == 0) return;
  const OpenRequest closed{region, shm::kClosedExport};
  if (!SendPacket(control_.get(), &closed, sizeof(closed))) broken_.store(true);
}

Status CudaIpcPeerConnection::DrainNotices() {
  auto removed = shm::ReadRemovalNotices(control_.get());
  if (!removed.ok()) {
    broken_.store(true);
    return removed.status();
  }
  for (uint32_t region : *removed) {
    removed_.insert(region);
    Unmap(region);
  }
  return absl::OkStatus();
}

Status CudaIpcPeerConnection::MapAll(const std::vector<uint32_t>& regions, uint64_t local) {
  auto answer = [&](uint32_t region, const Reply& reply, Fd, bool* broken) -> Status {
    mu_.AssertHeld();  // called within this function (the analysis does not see it)
    if (reply.code != 0) {
      Status s = FromReply(reply);
      return Status(s.code(), absl::StrCat("failed: ", s.message()));
    }
    // From here the source counts the region as mapped by us: every failure below breaks the
    // connection (closing it tells the source we hold nothing), or tells the source at once.
    auto protocol = [&](const Status& s) {
      *broken = true;
      return Status(s.code(), absl::StrCat("failed: opening region ", region, ": ", s.message()));
    };
    const int control = control_.get();
    auto closed = [&] {
      const OpenRequest request{region, shm::kClosedExport};
      SendPacket(control, &request, sizeof(request));
    };
    if (reply.records == 0 || reply.records > kMaxRecords) {
      return protocol(absl::DataLossError(
          absl::StrCat("the source announced ", reply.records, " records (1..", kMaxRecords, ")")));
    }
    const absl::Time deadline = absl::Now() + shm::kControlTimeout;
    const size_t bytes = size_t{reply.records} * sizeof(PieceRecord);
    auto raw = shm::RecvBytes(control, bytes, bytes, deadline);
    if (!raw.ok()) return protocol(raw.status());
    std::vector<PieceRecord> records(reply.records);
    std::memcpy(records.data(), raw->data(), bytes);
    size_t fd_count = 0;
    for (const PieceRecord& r : records) {
      fd_count += r.kind == static_cast<uint32_t>(cuda::ExportKind::kPosixFd) ? 1 : 0;
    }
    auto fds = shm::RecvFds(control, fd_count, deadline);
    if (!fds.ok()) return protocol(fds.status());
    if (Status valid = ValidateRecords(records, fds->size(), reply.size); !valid.ok()) {
      return protocol(absl::DataLossError(valid.message()));
    }
    auto mapping = memory_->Import(records, std::move(*fds), reply.size, local);
    if (!mapping.ok()) {
      closed();  // nothing mapped: tell the source now rather than at removal
      return Status(mapping.status().code(),
                    absl::StrCat("failed: mapping region ", region, " on ", memory_->name(), ": ",
                                 mapping.status().message()));
    }
    if (removed_.count(region) != 0) {
      mapping->reset();
      closed();
      return shm::RegionRemovedError(region);
    }
    mappings_.emplace(region, std::move(*mapping));
    return absl::OkStatus();
  };
  bool broken = false;
  Status opened = shm::OpenRegions(
      control_.get(), regions,
      [&](uint32_t region) {
        mu_.AssertHeld();
        return mappings_.count(region) != 0;
      },
      shm::kOpenExport, shm::kExportReply, absl::InfiniteFuture(), &removed_, answer, &broken);
  if (broken) broken_.store(true);
  return opened;
}

Status CudaIpcPeerConnection::Execute(ChunkFeed& feed) {
  FERRY_RETURN_IF_ERROR(shm::CheckConnectionUsable(closing_.load(), false, description_));
  absl::MutexLock lock(&mu_);
  FERRY_RETURN_IF_ERROR(shm::CheckConnectionUsable(closing_.load() || !control_.valid(),
                                                   broken_.load(), description_));
  auto fail = [&](const Status& s) {
    return Status(s.code(), absl::StrCat("cuda_ipc read from ", description_, " ", s.message()));
  };
  if (feed.regions().empty()) return absl::OkStatus();
  if (Status drained = DrainNotices(); !drained.ok()) return fail(drained);
  // The first piece's destination tells the memory which device maps the regions (CUDA maps
  // and copies in the context of the GPU the bytes go to).
  Chunk first;
  if (!feed.Next(&first)) return absl::OkStatus();
  if (Status all = MapAll(feed.regions(), reinterpret_cast<uint64_t>(first.local)); !all.ok()) {
    return fail(all);
  }
  std::map<uint32_t, const Mapping*> mapped;
  for (uint32_t region : feed.regions()) mapped.emplace(region, mappings_.at(region).get());
  const std::function<bool()> stop = [&] { return closing_.load() || feed.stopping(); };
  std::vector<Chunk> pieces{first};
  std::vector<CopyJob> jobs;
  std::vector<size_t> owner;    // jobs[i] belongs to pieces[owner[i]]
  std::vector<size_t> pending;  // per piece: jobs not completed yet
  while (!stop()) {
    Chunk c;
    while (pieces.size() < kPiecesPerRound && feed.Next(&c)) pieces.push_back(c);
    if (pieces.empty()) break;
    jobs.clear();
    owner.clear();
    pending.assign(pieces.size(), 0);
    for (size_t p = 0; p < pieces.size(); ++p) {
      const Chunk& piece = pieces[p];
      if (removed_.count(piece.remote_region) != 0) {
        return fail(absl::NotFoundError(absl::StrCat("failed: the source removed region ",
                                                     piece.remote_region, " during the read")));
      }
      const Mapping& m = *mapped.at(piece.remote_region);
      // Split where the mapping is not contiguous (legacy pieces mapped apart).
      for (uint64_t done = 0; done < piece.length;) {
        const auto [address, contiguous] = m.At(piece.remote_offset + done);
        if (contiguous == 0) {
          return fail(absl::InvalidArgumentError(absl::StrCat(
              "failed: ", RangeText(piece), " is outside the source's mapped region")));
        }
        const uint64_t n = std::min(contiguous, piece.length - done);
        jobs.push_back({reinterpret_cast<uint64_t>(piece.local) + done, address, n});
        owner.push_back(p);
        ++pending[p];
        done += n;
      }
      if (piece.length == 0) feed.Done(piece);
    }
    Status copied = memory_->Copy(jobs, stop, [&](size_t job) {
      const size_t p = owner[job];
      feed.Moved(jobs[job].length);
      if (--pending[p] == 0) feed.Done(pieces[p]);
    });
    if (!copied.ok()) return fail(copied);
    if (Status drained = DrainNotices(); !drained.ok()) return fail(drained);
    pieces.clear();
  }
  if (closing_.load()) {
    return fail(absl::FailedPreconditionError("stopped: the connection was closed"));
  }
  return absl::OkStatus();
}

}  // namespace ferry::internal::cuda_ipc
