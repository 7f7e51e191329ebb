#include "transfer/peer.h"

#include <algorithm>
#include <atomic>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "transfer/read_core.h"
#include "transfer/staging/staged_connection.h"

namespace ferry::internal {

namespace {

// Shares a connection with a decorator that owns what it wraps (StagedConnection takes a
// unique_ptr): Close closes the shared connection.
class SharedConnection : public PeerConnection {
 public:
  explicit SharedConnection(std::shared_ptr<PeerConnection> inner) : inner_(std::move(inner)) {}
  Status Execute(ChunkFeed& feed) override { return inner_->Execute(feed); }
  void Close() override { inner_->Close(); }

 private:
  const std::shared_ptr<PeerConnection> inner_;
};

// Thread-safe: reads are serialized on read_mu_.
class PeerImpl : public Peer {
 public:
  explicit PeerImpl(PeerSetup setup)
      : setup_(std::move(setup)), path_(TransportKindName(setup_.kind)) {}
  ~PeerImpl() override { Disconnect(); }

  TransportKind transport() const override { return setup_.kind; }
  const std::string& description() const override { return setup_.description; }
  const std::string& choice() const override { return setup_.choice; }
  std::string path() const override {
    absl::MutexLock lock(&path_mu_);
    return path_;
  }

  Status Read(std::vector<ReadOp> ops, const ReadOptions& options) override {
    FERRY_RETURN_IF_ERROR(ValidateOps(ops, setup_.region_sizes, setup_.description));
    absl::MutexLock lock(&read_mu_);
    FERRY_ASSIGN_OR_RETURN(PeerConnection * connection, ConnectionFor(ops));
    const ReadConnection read{connection, setup_.description, std::move(ops)};
    return RunRead({&read, 1}, options.chunk_bytes > 0 ? options.chunk_bytes : setup_.chunk_bytes,
                   options);
  }

  void Disconnect() override {
    disconnected_.store(true);
    setup_.connection->Close();
  }

  // For ReadFromPeers, which reads over several peers at once.
  const PeerSetup& setup() const { return setup_; }
  absl::Mutex& read_mu() ABSL_LOCK_RETURNED(read_mu_) { return read_mu_; }

  // The connection that executes `ops`: the transport's own, or a StagedConnection over it
  // when they land in device memory the transport cannot write. Records the read's path.
  StatusOr<PeerConnection*> ConnectionFor(const std::vector<ReadOp>& ops)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(read_mu_) {
    FERRY_RETURN_IF_ERROR(CheckConnected());
    FERRY_ASSIGN_OR_RETURN(cuda::Device * device, StagingDevice(ops));
    PeerConnection* connection = setup_.connection.get();
    if (device != nullptr) {
      if (staged_ == nullptr || staged_device_ != device) {
        staging::StagingOptions staging;
        staging.slots = setup_.staging_slots;
        staging.slot_bytes = setup_.staging_slot_bytes;
        FERRY_ASSIGN_OR_RETURN(staged_, staging::StagedConnection::Create(
                                            std::make_unique<SharedConnection>(setup_.connection),
                                            device, staging, setup_.description));
        staged_device_ = device;
      }
      connection = staged_.get();
    }
    bool source_staged = false;
    for (const ReadOp& op : ops) {
      source_staged = source_staged || setup_.remote_device_regions.count(op.remote_region) > 0;
    }
    {
      absl::MutexLock path_lock(&path_mu_);
      path_ = std::string(TransportKindName(setup_.kind));
      // cuda_ipc moves device memory itself; over any other transport device memory on either
      // end went through pinned host memory.
      if ((device != nullptr || source_staged) && setup_.kind != TransportKind::kCudaIpc) {
        path_ += "+staged";
      }
    }
    return connection;
  }

 private:
  // The Device to stage this read into, or null when it lands in host memory or the transport
  // writes device memory itself. InvalidArgument for a read that lands in both host and device
  // memory, or on two GPUs: split it.
  StatusOr<cuda::Device*> StagingDevice(const std::vector<ReadOp>& ops) const {
    if (setup_.writes_device || !setup_.local_device) return nullptr;
    cuda::Device* device = nullptr;
    bool host = false;
    for (const ReadOp& op : ops) {
      if (op.length == 0) continue;
      FERRY_ASSIGN_OR_RETURN(cuda::Device * d, setup_.local_device(op.local));
      if (d == nullptr) {
        host = true;
      } else if (device != nullptr && d != device) {
        return absl::InvalidArgumentError(
            absl::StrCat("a read from ", setup_.description, " lands on two GPUs (", device->name(),
                         " and ", d->name(), "); read into one device at a time"));
      } else {
        device = d;
      }
    }
    if (device != nullptr && host) {
      return absl::InvalidArgumentError(absl::StrCat(
          "a read from ", setup_.description, " lands in both host memory and ", device->name(),
          " over ", std::string(TransportKindName(setup_.kind)),
          ", which stages device memory: read host and device destinations separately"));
    }
    return device;
  }

  Status CheckConnected() const {
    if (disconnected_.load()) {
      return absl::FailedPreconditionError(
          absl::StrCat("peer ", setup_.description, " is disconnected; Connect again"));
    }
    return absl::OkStatus();
  }

  const PeerSetup setup_;
  std::atomic<bool> disconnected_{false};
  absl::Mutex read_mu_;  // held for the whole of a read
  std::unique_ptr<staging::StagedConnection> staged_ ABSL_GUARDED_BY(read_mu_);
  cuda::Device* staged_device_ ABSL_GUARDED_BY(read_mu_) = nullptr;
  mutable absl::Mutex path_mu_;
  std::string path_ ABSL_GUARDED_BY(path_mu_);
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

std::unique_ptr<Peer> MakePeer(PeerSetup setup) {
  return std::make_unique<PeerImpl>(std::move(setup));
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
        internal::ValidateOps(read.ops, impl->setup().region_sizes, impl->description()));
    impls.push_back(impl);
  }
  // Lock in address order, so that two reads over overlapping peer sets cannot deadlock.
  std::vector<PeerImpl*> order = impls;
  std::sort(order.begin(), order.end());
  std::vector<std::unique_ptr<absl::MutexLock>> locks;
  for (PeerImpl* impl : order) locks.push_back(std::make_unique<absl::MutexLock>(&impl->read_mu()));
  std::vector<internal::ReadConnection> connections;
  uint64_t chunk_bytes = options.chunk_bytes;
  for (size_t i = 0; i < impls.size(); ++i) {
    PeerImpl* impl = impls[i];
    // Held: every lock above (the analysis cannot follow a vector of locks).
    impl->read_mu().AssertHeld();
    FERRY_ASSIGN_OR_RETURN(internal::PeerConnection * connection,
                           impl->ConnectionFor(reads[i].ops));
    connections.push_back({connection, impl->description(), reads[i].ops, reads[i].drop,
                           reads[i].serves, reads[i].fills, reads[i].own});
    if (options.chunk_bytes == 0) chunk_bytes = std::max(chunk_bytes, impl->setup().chunk_bytes);
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
