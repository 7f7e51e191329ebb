#include "transfer/staging/staged_connection.h"

#include <algorithm>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace ferry::internal::staging {
namespace {

// How often waits look at the feed's stopping().
constexpr absl::Duration kPollInterval = absl::Milliseconds(50);
// How long a piece waits for a slot that still holds pieces other threads of the inner
// connection have on the wire. Bounded because a thread that failed never delivers them; past
// it the asking thread is told there is nothing for it (it may return from its Execute, and
// StagedConnection runs the inner connection again for what is left).
constexpr absl::Duration kWaitForOthers = absl::Seconds(1);
// Pinned memory a connection may ask for.
constexpr uint64_t kMaxStagingBytes = 64ull << 30;

std::string Hex(uint64_t v) { return absl::StrCat("0x", absl::Hex(v)); }

}  // namespace

// The feed the inner connection sees: pieces that land in the slots.
class StagedConnection::InnerFeed final : public ChunkFeed {
 public:
  InnerFeed(StagedConnection* conn, ChunkFeed& outer) : conn_(conn), outer_(outer) {}
  bool Next(Chunk* chunk) override { return conn_->NextInner(chunk); }
  void Moved(uint64_t bytes) override { outer_.Moved(bytes); }
  void Done(const Chunk& chunk) override { conn_->InnerDone(chunk); }
  bool stopping() const override { return conn_->Stopping(); }
  const std::vector<uint32_t>& regions() const override { return outer_.regions(); }

 private:
  StagedConnection* const conn_;
  ChunkFeed& outer_;
};

StatusOr<std::unique_ptr<StagedConnection>> StagedConnection::Create(
    std::unique_ptr<PeerConnection> inner, cuda::Device* device, StagingOptions options,
    std::string description) {
  if (inner == nullptr || device == nullptr) {
    return absl::InvalidArgumentError(
        "StagedConnection: an inner connection and a device are "
        "required");
  }
  if (options.slot_bytes == 0) {
    return absl::InvalidArgumentError("StagingOptions.slot_bytes must be at least 1");
  }
  if (options.slots < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("StagingOptions.slots is ", options.slots, "; it must be at least 1"));
  }
  if (options.slot_bytes > kMaxStagingBytes / static_cast<uint64_t>(options.slots)) {
    return absl::InvalidArgumentError(absl::StrCat("StagingOptions: ", options.slots, " slots of ",
                                                   options.slot_bytes, " bytes exceed the ",
                                                   kMaxStagingBytes,
                                                   "-byte limit of pinned memory; use fewer or "
                                                   "smaller slots"));
  }
  FERRY_ASSIGN_OR_RETURN(auto slots, device->AllocatePinned(options.slot_bytes * options.slots));
  FERRY_ASSIGN_OR_RETURN(auto stream, device->CreateStream());
  return std::unique_ptr<StagedConnection>(
      new StagedConnection(std::move(inner), device, std::move(options), std::move(description),
                           std::move(slots), std::move(stream)));
}

StagedConnection::StagedConnection(std::unique_ptr<PeerConnection> inner, cuda::Device* device,
                                   StagingOptions options, std::string description,
                                   std::unique_ptr<cuda::PinnedMemory> slots,
                                   std::unique_ptr<cuda::CopyStream> stream)
    : inner_(std::move(inner)),
      device_(device),
      options_(std::move(options)),
      description_(std::move(description)),
      slots_(std::move(slots)),
      stream_(std::move(stream)) {}

StagedConnection::~StagedConnection() = default;

void StagedConnection::Close() {
  closed_.store(true);
  inner_->Close();
}

StagingStats StagedConnection::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

bool StagedConnection::Stopping() const {
  if (failed_flag_.load(std::memory_order_relaxed)) return true;
  const ChunkFeed* feed = stopping_feed_.load(std::memory_order_acquire);
  return feed != nullptr && feed->stopping();
}

void StagedConnection::Fail(Status status) {
  if (!failed_.ok()) return;
  failed_ = std::move(status);
  failed_flag_.store(true);
}

Status StagedConnection::Execute(ChunkFeed& feed) {
  if (closed_.load()) {
    return absl::FailedPreconditionError(
        absl::StrCat("staged connection to ", description_, " is closed; Connect again"));
  }
  if (broken_.load()) {
    return absl::FailedPreconditionError(absl::StrCat("staged connection to ", description_,
                                                      " is unusable: a copy into ", device_->name(),
                                                      " failed earlier; reconnect"));
  }
  {
    absl::MutexLock lock(&mu_);
    feed_ = &feed;
    stopping_feed_.store(&feed, std::memory_order_release);
    failed_ = absl::OkStatus();
    failed_flag_.store(false);
    outer_.clear();
    partial_.reset();
    inner_pieces_.clear();
    on_wire_.clear();
    copies_.clear();
    slot_users_.assign(options_.slots, 0);
    current_slot_ = 0;
    current_offset_ = 0;
  }
  InnerFeed inner_feed(this, feed);
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      round_over_ = false;
      landed_in_round_ = 0;
    }
    std::thread completer;
    try {
      completer = std::thread([this] { Complete(); });
    } catch (const std::system_error& e) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "staged read from ", description_, " failed: cannot start a thread: ", e.what(),
          "; raise the process's thread (pids) limit"));
    }
    const Status inner = inner_->Execute(inner_feed);
    {
      absl::MutexLock lock(&mu_);
      round_over_ = true;
    }
    completer.join();  // every copy enqueued completed (or the stream failed)
    absl::MutexLock lock(&mu_);
    if (!failed_.ok()) {
      feed_ = nullptr;
      stopping_feed_.store(nullptr);
      return failed_;
    }
    if (!inner.ok() || feed.stopping() || !partial_.has_value()) {
      feed_ = nullptr;
      stopping_feed_.store(nullptr);
      return inner;
    }
    // The inner connection returned with an outer piece half cut: its threads gave up waiting
    // for slots that others held. Go on with what is left.
    if (landed_in_round_ == 0) {
      feed_ = nullptr;
      stopping_feed_.store(nullptr);
      return absl::InternalError(absl::StrCat(
          "staged read from ", description_, " failed: the inner connection took no piece of ",
          RangeText(outer_[*partial_].chunk), "; this is a bug"));
    }
  }
}

bool StagedConnection::NextInner(Chunk* chunk) {
  absl::MutexLock lock(&mu_);
  absl::Time give_up = absl::InfiniteFuture();
  bool waited = false;
  for (;;) {
    if (!failed_.ok() || feed_->stopping()) return false;
    if (!partial_.has_value()) {
      Chunk c;
      if (!feed_->Next(&c)) return false;
      if (c.length == 0) {
        feed_->Done(c);
        continue;
      }
      outer_[c.index] = OuterPiece{c};
      partial_ = c.index;
    }
    if (current_offset_ == options_.slot_bytes) {
      const int next = (current_slot_ + 1) % options_.slots;
      if (slot_users_[next] != 0) {
        // A thread with pieces on the wire receives them instead of waiting: it asks again
        // after its next one landed.
        auto wire = on_wire_.find(std::this_thread::get_id());
        if (wire != on_wire_.end() && wire->second > 0) return false;
        bool unlanded = false;
        for (const auto& [index, p] : inner_pieces_) {
          unlanded = unlanded || (p.slot == next && !p.landed);
        }
        if (unlanded) {
          if (give_up == absl::InfiniteFuture()) give_up = absl::Now() + kWaitForOthers;
          if (absl::Now() >= give_up) {
            ++stats_.gave_up;
            return false;
          }
        }
        if (!waited) ++stats_.slot_waits;
        waited = true;
        // Wakes also when another thread moved on to that slot (it takes pieces there, so it
        // will not look free again before this one takes a look at the slot after it).
        const int current = current_slot_;
        const uint64_t offset = current_offset_;
        auto freed = [this, next, current, offset]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return slot_users_[next] == 0 || current_slot_ != current || current_offset_ != offset ||
                 !failed_.ok();
        };
        mu_.AwaitWithTimeout(absl::Condition(&freed), kPollInterval);
        continue;  // the slot position may have moved meanwhile
      }
      current_slot_ = next;
      current_offset_ = 0;
    }
    OuterPiece& o = outer_[*partial_];
    const uint64_t length = std::min(o.chunk.length - o.cut, options_.slot_bytes - current_offset_);
    InnerPiece p;
    p.chunk.index = next_inner_index_++;
    p.chunk.remote_region = o.chunk.remote_region;
    p.chunk.remote_offset = o.chunk.remote_offset + o.cut;
    p.chunk.local = slots_->data() + current_slot_ * options_.slot_bytes + current_offset_;
    p.chunk.length = length;
    p.outer = o.chunk.index;
    p.device_address = reinterpret_cast<uint64_t>(o.chunk.local) + o.cut;
    p.slot = current_slot_;
    p.owner = std::this_thread::get_id();
    o.cut += length;
    ++o.open;
    if (o.cut == o.chunk.length) partial_.reset();
    current_offset_ += length;
    ++slot_users_[current_slot_];
    *chunk = p.chunk;
    ++on_wire_[p.owner];
    inner_pieces_[p.chunk.index] = p;
    return true;
  }
}

void StagedConnection::InnerDone(const Chunk& chunk) {
  InnerPiece piece;
  {
    absl::MutexLock lock(&mu_);
    auto it = inner_pieces_.find(chunk.index);
    if (it == inner_pieces_.end() || it->second.landed) return;
    it->second.landed = true;
    if (auto wire = on_wire_.find(it->second.owner);
        wire != on_wire_.end() && --wire->second == 0) {
      on_wire_.erase(wire);
    }
    ++landed_in_round_;
    ++stats_.pieces_staged;
    piece = it->second;
  }
  if (options_.verify) {
    if (Status v = options_.verify(piece.chunk, piece.device_address); !v.ok()) {
      absl::MutexLock lock(&mu_);
      Fail(Status(v.code(),
                  absl::StrCat("staged read from ", description_, " failed: ", v.message())));
      return;
    }
  }
  absl::MutexLock lock(&mu_);
  if (!failed_.ok()) return;
  // Whether an earlier copy is still running: the wire delivered this piece meanwhile.
  bool copying = false;
  if (!copies_.empty()) {
    StatusOr<bool> reached = stream_->Reached(copies_.back().marker);
    copying = reached.ok() && !*reached;
  }
  Status s = stream_->ToDevice(piece.device_address, piece.chunk.local, piece.chunk.length);
  StatusOr<cuda::CopyMarker> marker = s.ok() ? stream_->Record() : StatusOr<cuda::CopyMarker>(s);
  if (!marker.ok()) {
    broken_.store(true);
    Fail(Status(marker.status().code(),
                absl::StrCat("staged read from ", description_, " failed: host-to-device copy of ",
                             RangeText(piece.chunk), " into ", device_->name(), " at ",
                             Hex(piece.device_address), ": ", marker.status().message())));
    return;
  }
  if (copying) ++stats_.landed_while_copying;
  copies_.push_back(PendingCopy{*marker, piece.chunk.index});
}

void StagedConnection::Complete() {
  for (;;) {
    PendingCopy front;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !copies_.empty() || round_over_;
      };
      mu_.Await(absl::Condition(&ready));
      if (copies_.empty()) return;  // the round is over and every copy completed
      front = copies_.front();
    }
    StatusOr<bool> reached = stream_->WaitUntil(front.marker, absl::Now() + kPollInterval);
    std::vector<Chunk> done;
    ChunkFeed* feed = nullptr;
    {
      absl::MutexLock lock(&mu_);
      auto it = inner_pieces_.find(front.inner);
      if (!reached.ok()) {
        // The stream is unusable; nothing queued after the failure runs.
        broken_.store(true);
        const InnerPiece& p = it->second;
        Fail(Status(
            reached.status().code(),
            absl::StrCat("staged read from ", description_, " failed: host-to-device copy of ",
                         RangeText(p.chunk), " into ", device_->name(), " at ",
                         Hex(p.device_address), ": ", reached.status().message())));
        copies_.clear();
        return;
      }
      if (!*reached) continue;
      copies_.pop_front();
      ++stats_.copies_completed;
      const InnerPiece& p = it->second;
      --slot_users_[p.slot];
      auto o = outer_.find(p.outer);
      if (--o->second.open == 0 && o->second.cut == o->second.chunk.length) {
        done.push_back(o->second.chunk);
        outer_.erase(o);
      }
      inner_pieces_.erase(it);
      feed = feed_;
    }
    for (const Chunk& c : done) feed->Done(c);
  }
}

}  // namespace ferry::internal::staging
