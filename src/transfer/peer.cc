#include "transfer/peer.h"

#include <algorithm>
#include <atomic>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "transfer/read_core.h"

namespace ferry::internal {

namespace {

// Thread-safe: reads are serialized on read_mu_.
class PeerImpl : public Peer {
 public:
  PeerImpl(std::shared_ptr<PeerConnection> connection, TransportKind kind, std::string description,
           std::map<uint32_t, uint64_t> region_sizes, uint64_t chunk_bytes, std::string choice)
      : connection_(std::move(connection)),
        kind_(kind),
        description_(std::move(description)),
        region_sizes_(std::move(region_sizes)),
        chunk_bytes_(chunk_bytes),
        choice_(std::move(choice)) {}
  ~PeerImpl() override { Disconnect(); }

  TransportKind transport() const override { return kind_; }
  const std::string& description() const override { return description_; }
  const std::string& choice() const override { return choice_; }

  Status Read(std::vector<ReadOp> ops, const ReadOptions& options) override {
    FERRY_RETURN_IF_ERROR(ValidateOps(ops, region_sizes_, description_));
    absl::MutexLock lock(&read_mu_);
    FERRY_RETURN_IF_ERROR(CheckConnected());
    const ReadConnection connection{connection_.get(), description_, std::move(ops)};
    return RunRead({&connection, 1}, options.chunk_bytes > 0 ? options.chunk_bytes : chunk_bytes_,
                   options);
  }

  void Disconnect() override {
    disconnected_.store(true);
    connection_->Close();
  }

  Status CheckConnected() const {
    if (disconnected_.load()) {
      return absl::FailedPreconditionError(
          absl::StrCat("peer ", description_, " is disconnected; Connect again"));
    }
    return absl::OkStatus();
  }

  const std::shared_ptr<PeerConnection> connection_;
  const TransportKind kind_;
  const std::string description_;
  const std::map<uint32_t, uint64_t> region_sizes_;
  const uint64_t chunk_bytes_;
  const std::string choice_;
  std::atomic<bool> disconnected_{false};
  absl::Mutex read_mu_;  // held for the whole of a read
};

}  // namespace

Status ValidateOps(const std::vector<ReadOp>& ops, const std::map<uint32_t, uint64_t>& sizes,
                   const std::string& description) {
  for (size_t i = 0; i < ops.size(); ++i) {
    const ReadOp& op = ops[i];
    auto range = [&] {
      const bool overflows = op.length > UINT64_MAX - op.remote_offset;
      return overflows ? absl::StrCat("region ", op.remote_region, " [", op.remote_offset, ", +",
                                      op.length, ")")
                       : absl::StrCat("region ", op.remote_region, " [", op.remote_offset, ", ",
                                      op.remote_offset + op.length, ")");
    };
    auto it = sizes.find(op.remote_region);
    if (it == sizes.end()) {
      return absl::InvalidArgumentError(absl::StrCat("op ", i, " (", range(),
                                                     ") names a region that ", description,
                                                     " does not export; check the blob"));
    }
    if (op.remote_offset > it->second || op.length > it->second - op.remote_offset) {
      return absl::InvalidArgumentError(
          absl::StrCat("op ", i, " (", range(), ") is out of range: region ", op.remote_region,
                       " of ", description, " has ", it->second, " bytes"));
    }
    if (op.local == nullptr && op.length > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("op ", i, " (", range(), ") has a null local pointer"));
    }
  }
  return absl::OkStatus();
}

std::unique_ptr<Peer> MakePeer(std::shared_ptr<PeerConnection> connection, TransportKind kind,
                               std::string description, std::map<uint32_t, uint64_t> region_sizes,
                               uint64_t chunk_bytes, std::string choice) {
  return std::make_unique<PeerImpl>(std::move(connection), kind, std::move(description),
                                    std::move(region_sizes), chunk_bytes, std::move(choice));
}

}  // namespace ferry::internal

namespace ferry {

Status Peer::Read(std::vector<ReadOp> ops, absl::Duration timeout) {
  ReadOptions options;
  options.timeout = timeout;
  return Read(std::move(ops), options);
}

Status ReadFromPeers(absl::Span<Peer* const> peers, std::vector<ReadOp> ops,
                     const ReadOptions& options) {
  std::vector<PeerRead> reads;
  for (Peer* peer : peers) reads.push_back(PeerRead{peer, ops, nullptr});
  return ReadFromPeers(reads, options);
}

Status ReadFromPeers(absl::Span<const PeerRead> reads, const ReadOptions& options,
                     std::vector<PeerOutcome>* outcomes) {
  using internal::PeerImpl;
  if (outcomes != nullptr) outcomes->assign(reads.size(), PeerOutcome{});
  if (reads.empty()) return absl::InvalidArgumentError("ReadFromPeers needs at least one peer");
  std::vector<PeerImpl*> impls;
  for (const PeerRead& read : reads) {
    auto* impl = dynamic_cast<PeerImpl*>(read.peer);
    if (impl == nullptr) {
      return absl::InvalidArgumentError("ReadFromPeers takes peers from TransferEngine::Connect");
    }
    if (std::find(impls.begin(), impls.end(), impl) != impls.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("ReadFromPeers: ", impl->description(), " is listed twice"));
    }
    FERRY_RETURN_IF_ERROR(
        internal::ValidateOps(read.ops, impl->region_sizes_, impl->description()));
    impls.push_back(impl);
  }
  // Lock in address order, so that two reads over overlapping peer sets cannot deadlock.
  std::vector<PeerImpl*> order = impls;
  std::sort(order.begin(), order.end());
  std::vector<std::unique_ptr<absl::MutexLock>> locks;
  for (PeerImpl* impl : order) locks.push_back(std::make_unique<absl::MutexLock>(&impl->read_mu_));
  std::vector<internal::ReadConnection> connections;
  uint64_t chunk_bytes = options.chunk_bytes;
  for (size_t i = 0; i < impls.size(); ++i) {
    PeerImpl* impl = impls[i];
    FERRY_RETURN_IF_ERROR(impl->CheckConnected());
    connections.push_back({impl->connection_.get(), impl->description(), reads[i].ops,
                           reads[i].drop, reads[i].serves});
    if (options.chunk_bytes == 0) chunk_bytes = std::max(chunk_bytes, impl->chunk_bytes_);
  }
  return internal::RunRead(connections, chunk_bytes, options, outcomes);
}

std::vector<ReadOp> CoalesceReadOps(std::vector<ReadOp> ops) {
  std::vector<ReadOp> out;
  out.reserve(ops.size());
  for (const ReadOp& op : ops) {
    if (op.length == 0) continue;
    if (!out.empty()) {
      ReadOp& last = out.back();
      if (last.remote_region == op.remote_region &&
          last.remote_offset + last.length == op.remote_offset &&
          static_cast<uint8_t*>(last.local) + last.length == op.local) {
        last.length += op.length;
        continue;
      }
    }
    out.push_back(op);
  }
  return out;
}

}  // namespace ferry
