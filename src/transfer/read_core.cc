#include "transfer/read_core.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <set>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace ferry::internal {

namespace {

constexpr absl::Duration kWatchInterval = absl::Milliseconds(100);
// Pieces one connection of a multi-peer read holds at once, at most: enough to keep a TCP
// connection's streams or a UCX endpoint busy (with 8 MiB pieces, 64 MiB in flight), few
// enough that a slow peer never holds much of the read.
constexpr size_t kHeldPerConnection = 8;
// With a lookahead: pieces a connection may always hold (one landing, one requested behind it),
// and at most (a transport keeps no more in flight anyway).
constexpr size_t kLookaheadFloor = 2;
constexpr size_t kLookaheadCeiling = 256;
// Pieces a complete source looks through for one that no partial peer holds (each costs a
// look at every peer's predicates, under the read's lock): 128 MiB of 512 KiB pieces ahead of
// the read's cursor, which is where the parts still being filled are.
constexpr size_t kUniqueScan = 256;
// Pieces after another peer's held run that a complete source leaves to that peer while other
// pieces are free (see Take).
constexpr size_t kClaimed = 4;

enum class Piece : uint8_t { kPending, kTaken, kDone };

// The pieces of one read and who holds them. Thread-safe.
class Schedule {
 public:
  // `pieces[c]` are connection c's pieces: the same local bytes at its remote coordinates.
  // `serves[c]`, `fills[c]` and `owns[c]` are connection c's predicates (may be null; see
  // PeerRead).
  Schedule(std::vector<std::vector<Chunk>> pieces, std::vector<std::vector<uint32_t>> regions,
           std::vector<std::function<bool(const ReadOp&)>> serves,
           std::vector<std::function<bool(const ReadOp&)>> fills,
           std::vector<std::function<bool(const ReadOp&)>> owns, const ReadOptions& options,
           absl::Time deadline)
      : all_pieces_(std::move(pieces)),
        pieces_(all_pieces_[0]),
        regions_(std::move(regions)),
        serves_(std::move(serves)),
        fills_(std::move(fills)),
        owns_(std::move(owns)),
        any_partial_(std::any_of(serves_.begin(), serves_.end(),
                                 [](const std::function<bool(const ReadOp&)>& f) { return !!f; })),
        options_(options),
        deadline_(deadline),
        has_deadline_(deadline != absl::InfiniteFuture()),
        delivered_(all_pieces_.size()),
        state_(pieces_.size(), Piece::kPending),
        owner_(pieces_.size(), 0),
        held_(all_pieces_.size(), 0),
        recent_(all_pieces_.size()),
        first_(pieces_.empty() ? 0 : options.first_piece % pieces_.size()),
        held_cap_(
            std::clamp<size_t>(pieces_.size() / (2 * all_pieces_.size()), 1, kHeldPerConnection)) {}

  const std::vector<uint32_t>& regions(size_t connection) const { return regions_[connection]; }
  uint64_t delivered(size_t connection) const {
    return delivered_[connection].load(std::memory_order_relaxed);
  }

  bool Stopping() const {
    return stop_.load(std::memory_order_relaxed) || cancelled() || past_deadline();
  }
  bool cancelled() const {
    return options_.cancel != nullptr && options_.cancel->load(std::memory_order_relaxed);
  }
  bool past_deadline() const { return has_deadline_ && absl::Now() >= deadline_; }
  bool paused() const {
    return options_.pause != nullptr && options_.pause->load(std::memory_order_relaxed);
  }
  // Stops every connection (the last one failed).
  void StopAll() { stop_.store(true); }

  // The next piece `connection` may take: a piece given back by a failed connection first,
  // then the next in the read's order (from options.first_piece, wrapping around); with a
  // `serves` predicate, the first such piece its peer serves; without one (a complete source)
  // while other connections have one (partial peers), as PickFromSourceLocked says. At most
  // the connection's window (WindowLocked) at a time.
  bool Take(size_t connection, Chunk* chunk) {
    if (paused()) return false;
    absl::MutexLock lock(&mu_);
    if (held_[connection] >= WindowLocked(connection, absl::Now())) return false;
    const std::vector<Chunk>& mine = all_pieces_[connection];
    const std::function<bool(const ReadOp&)>& serves = serves_[connection];
    auto usable = [&](uint32_t index) { return !serves || ServedBy(connection, index); };
    uint32_t index = UINT32_MAX;
    for (auto it = requeued_.begin(); it != requeued_.end(); ++it) {
      if (usable(*it)) {
        index = *it;
        requeued_.erase(it);
        break;
      }
    }
    if (index == UINT32_MAX) {
      const size_t n = pieces_.size();
      while (cursor_ < n && state_[(cursor_ + first_) % n] != Piece::kPending) ++cursor_;
      if (!serves && any_partial_) {
        bool hold_back = false;
        index = PickFromSourceLocked(connection, &hold_back);
        if (hold_back) return false;
      }
      for (size_t k = cursor_; index == UINT32_MAX && k < n; ++k) {
        const auto at = static_cast<uint32_t>((k + first_) % n);
        if (state_[at] == Piece::kPending && usable(at)) {  // requeued ones were tried above
          index = at;
          break;
        }
      }
    }
    if (index == UINT32_MAX) return false;
    state_[index] = Piece::kTaken;
    owner_[index] = connection;
    ++held_[connection];
    *chunk = mine[index];
    return true;
  }

  void Finish(size_t connection, const Chunk& chunk) {
    {
      absl::MutexLock lock(&mu_);
      if (chunk.index >= pieces_.size() || state_[chunk.index] != Piece::kTaken ||
          owner_[chunk.index] != connection) {
        return;
      }
      state_[chunk.index] = Piece::kDone;
      --held_[connection];
      ++done_count_;
      if (options_.lookahead > absl::ZeroDuration()) recent_[connection].push_back(absl::Now());
    }
    done_bytes_.fetch_add(chunk.length, std::memory_order_relaxed);
    delivered_[connection].fetch_add(chunk.length, std::memory_order_relaxed);
    if (options_.on_piece) {
      options_.on_piece(ReadOp{chunk.remote_region, chunk.remote_offset, chunk.local, chunk.length},
                        connection);
    }
  }

  // ReadOptions::before_piece for a piece just taken, outside the lock.
  void BeforePiece(const Chunk& chunk) const {
    if (options_.before_piece && chunk.length > 0) options_.before_piece(chunk.local, chunk.length);
  }

  // After `connection` stopped executing: its unfinished pieces go back to the queue. Returns
  // how many.
  size_t Reclaim(size_t connection) {
    absl::MutexLock lock(&mu_);
    if (held_[connection] == 0) return 0;
    size_t count = 0;
    for (size_t i = 0; i < pieces_.size(); ++i) {
      if (state_[i] == Piece::kTaken && owner_[i] == connection) {
        state_[i] = Piece::kPending;
        requeued_.insert(static_cast<uint32_t>(i));
        ++count;
      }
    }
    held_[connection] = 0;
    return count;
  }

  // `connection` stopped taking part (failed, stalled or dropped): its peer's pieces are no
  // longer left to it.
  void MarkGone(size_t connection) {
    absl::MutexLock lock(&mu_);
    gone_[connection] = true;
  }

  bool Holds(size_t connection) {
    absl::MutexLock lock(&mu_);
    return held_[connection] > 0;
  }

  // Waits (up to `timeout`) until every piece is done or some piece is free to take.
  // True when there is something to take.
  bool AwaitWork(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return done_count_ == pieces_.size() || !requeued_.empty() || cursor_ < pieces_.size();
    };
    mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
    return !requeued_.empty() || cursor_ < pieces_.size();
  }

  // Waits up to `timeout` for the read to finish (a connection that found nothing it can serve
  // waits here before asking again).
  void AwaitDone(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto done = [this]()
                    ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_count_ == pieces_.size(); };
    mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  }

  bool AllDone() {
    absl::MutexLock lock(&mu_);
    return done_count_ == pieces_.size();
  }

  uint64_t done_bytes() const { return done_bytes_.load(std::memory_order_relaxed); }

  // "region R [a, b)" of the lowest piece not done, or "none".
  std::string FirstUnfinished() {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < pieces_.size(); ++i) {
      if (state_[i] != Piece::kDone) {
        return RangeText(pieces_[i]);
      }
    }
    return "none";
  }

 private:
  // Whether connection `c`'s peer serves piece `index`. REQUIRES: serves_[c].
  bool ServedBy(size_t c, uint32_t index) const { return Test(serves_[c], c, index); }

  // Whether a peer other than `connection`'s, still taking part, is filling piece `index`.
  bool FilledElsewhereLocked(size_t connection, uint32_t index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (size_t c = 0; c < fills_.size(); ++c) {
      if (c != connection && fills_[c] && !gone_[c] && Test(fills_[c], c, index)) return true;
    }
    return false;
  }

  // How many peers other than `connection`'s, still taking part, serve piece `index`.
  size_t HoldersLocked(size_t connection, uint32_t index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    size_t holders = 0;
    for (size_t c = 0; c < serves_.size(); ++c) {
      if (c != connection && serves_[c] && !gone_[c] && ServedBy(c, index)) ++holders;
    }
    return holders;
  }

  // The next piece for `connection`, a complete source read beside partial peers (targets that
  // serve what they verified). Its upload is shared with every other reader, so each piece
  // should leave it once:
  //  - first the pieces of this reader's own part (`own`), in the read's order; without one,
  //    its run onward from the cursor until it reaches pieces another peer holds;
  //  - then the last free piece in the read's order (within kUniqueScan of the cursor): free
  //    means no other peer holds it, is filling it, or has just held the pieces before it (it
  //    is reading on there); the last is the end of the part before this reader's, which its
  //    owner, reading onward, reaches last (in a large model: far ahead of that owner);
  //  - with nothing free: while other peers of this read deliver, pieces others hold, fewest
  //    holders first, one at a time (its upload then serves every reader's last pieces a
  //    little), and nothing while some piece is still on its way to another (*hold_back;
  //    UINT32_MAX). With no other peer delivering it takes anything (the read progresses).
  uint32_t PickFromSourceLocked(size_t connection, bool* hold_back)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const size_t n = pieces_.size();
    const std::function<bool(const ReadOp&)>& own = owns_[connection];
    bool& crossed = crossed_[connection];
    // Pieces since the last one another peer holds; the scan starts a little before the cursor
    // so that a held run ending just before it counts.
    size_t since_held = SIZE_MAX;
    uint32_t first_unheld = UINT32_MAX;
    uint32_t last_free = UINT32_MAX;
    uint32_t rarest = UINT32_MAX;
    size_t rarest_holders = SIZE_MAX;
    const size_t end = std::min(n, cursor_ + kUniqueScan);
    for (size_t k = cursor_ - std::min(cursor_, kClaimed); k < end; ++k) {
      const auto at = static_cast<uint32_t>((k + first_) % n);
      if (const size_t holders = HoldersLocked(connection, at); holders > 0) {
        crossed = true;
        since_held = 0;
        if (state_[at] == Piece::kPending && holders < rarest_holders) {
          rarest = at;
          rarest_holders = holders;
        }
        continue;
      }
      if (since_held != SIZE_MAX) ++since_held;
      if (state_[at] != Piece::kPending) continue;
      if (own && Test(own, connection, at)) return at;
      if (first_unheld == UINT32_MAX) first_unheld = at;
      if (since_held <= kClaimed || FilledElsewhereLocked(connection, at)) continue;
      if (!own && !crossed) return at;
      last_free = at;
    }
    if (last_free != UINT32_MAX) return last_free;
    bool others_busy = false;
    for (size_t c = 0; c < held_.size(); ++c) {
      others_busy = others_busy || (c != connection && !gone_[c] && held_[c] > 0);
    }
    if (!others_busy) return first_unheld != UINT32_MAX ? first_unheld : rarest;
    if (first_unheld == UINT32_MAX && held_[connection] == 0 && rarest != UINT32_MAX) {
      return rarest;
    }
    *hold_back = true;
    return UINT32_MAX;
  }

  // `f` (a connection's predicate) of piece `index` in connection `c`'s coordinates.
  bool Test(const std::function<bool(const ReadOp&)>& f, size_t c, uint32_t index) const {
    const Chunk& p = all_pieces_[c][index];
    return f(ReadOp{p.remote_region, p.remote_offset, p.local, p.length});
  }

  // Pieces `connection` may hold now. Several connections and no lookahead: a few each, so
  // that the rest stay free for whichever finishes first (a faster peer takes more).
  size_t WindowLocked(size_t connection, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (options_.lookahead <= absl::ZeroDuration()) {
      return all_pieces_.size() > 1 ? held_cap_ : SIZE_MAX;
    }
    std::deque<absl::Time>& recent = recent_[connection];
    while (!recent.empty() && now - recent.front() > options_.lookahead) recent.pop_front();
    return std::min(kLookaheadFloor + recent.size(), kLookaheadCeiling);
  }

  const std::vector<std::vector<Chunk>> all_pieces_;
  const std::vector<Chunk>& pieces_;  // connection 0's: lengths and the ranges errors name
  const std::vector<std::vector<uint32_t>> regions_;
  const std::vector<std::function<bool(const ReadOp&)>> serves_;  // per connection; may be null
  const std::vector<std::function<bool(const ReadOp&)>> fills_;   // per connection; may be null
  const std::vector<std::function<bool(const ReadOp&)>> owns_;    // per connection; may be null
  const bool any_partial_;  // some connection has `serves` (a partial peer)
  const ReadOptions& options_;
  const absl::Time deadline_;
  const bool has_deadline_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> done_bytes_{0};
  std::vector<std::atomic<uint64_t>> delivered_;  // bytes of finished pieces per connection

  absl::Mutex mu_;
  std::vector<Piece> state_ ABSL_GUARDED_BY(mu_);
  std::vector<size_t> owner_ ABSL_GUARDED_BY(mu_);
  std::vector<size_t> held_ ABSL_GUARDED_BY(mu_);  // pieces taken and not done, per connection
  // With a lookahead: when each connection finished its pieces of the last `lookahead`.
  std::vector<std::deque<absl::Time>> recent_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> gone_ ABSL_GUARDED_BY(mu_) = std::vector<bool>(all_pieces_.size(), false);
  // A complete source's pick without an own part: whether its run reached pieces another peer
  // holds (PickFromSourceLocked).
  std::deque<bool> crossed_ ABSL_GUARDED_BY(mu_) = std::deque<bool>(all_pieces_.size(), false);
  // Positions in the read's order (piece (k + first_) % count) before cursor_ are all taken.
  size_t cursor_ ABSL_GUARDED_BY(mu_) = 0;
  const size_t first_;
  // Pieces one connection of a multi-peer read may hold: kHeldPerConnection, or fewer for a
  // short read, so that every connection gets a share.
  const size_t held_cap_;
  size_t done_count_ ABSL_GUARDED_BY(mu_) = 0;
  // Pieces given back by failed connections, taken before the others, lowest first.
  std::set<uint32_t> requeued_ ABSL_GUARDED_BY(mu_);
};

// One connection's view of the schedule.
class Feed final : public ChunkFeed {
 public:
  Feed(Schedule* schedule, size_t id, const std::atomic<bool>* drop)
      : schedule_(schedule), id_(id), drop_(drop) {}

  bool Next(Chunk* chunk) override {
    if (stopping() || !schedule_->Take(id_, chunk)) return false;
    taken_.fetch_add(1, std::memory_order_relaxed);
    schedule_->BeforePiece(*chunk);
    return true;
  }
  uint64_t taken() const { return taken_.load(std::memory_order_relaxed); }
  void Moved(uint64_t bytes) override { moved_.fetch_add(bytes, std::memory_order_relaxed); }
  void Done(const Chunk& chunk) override {
    moved_.fetch_add(1, std::memory_order_relaxed);  // a zero-byte piece is movement too
    schedule_->Finish(id_, chunk);
  }
  bool stopping() const override {
    return stalled_.load(std::memory_order_relaxed) || dropped() || schedule_->Stopping();
  }
  const std::vector<uint32_t>& regions() const override { return schedule_->regions(id_); }
  bool dropped() const { return drop_ != nullptr && drop_->load(std::memory_order_relaxed); }

  uint64_t moved() const { return moved_.load(std::memory_order_relaxed); }
  void MarkStalled() { stalled_.store(true); }
  bool stalled() const { return stalled_.load(); }
  void MarkFinished() { finished_.store(true); }
  bool finished() const { return finished_.load(); }

 private:
  Schedule* const schedule_;
  const size_t id_;
  const std::atomic<bool>* const drop_;  // the caller's flag for this connection; may be null
  std::atomic<uint64_t> taken_{0};
  std::atomic<uint64_t> moved_{0};
  std::atomic<bool> stalled_{false};
  std::atomic<bool> finished_{false};  // its runner returned
};

// Reports progress and marks connections that hold pieces but deliver nothing as stalled.
class Watcher {
 public:
  Watcher(Schedule& schedule, std::vector<std::unique_ptr<Feed>>& feeds, uint64_t total,
          const ReadOptions& options)
      : schedule_(schedule), feeds_(feeds), total_(total), options_(options) {
    if (options.stall_timeout <= absl::ZeroDuration() && !options.on_progress) return;
    thread_ = std::thread([this] { Run(); });
  }
  ~Watcher() {
    done_.Notify();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Run() {
    std::vector<uint64_t> last(feeds_.size(), UINT64_MAX);
    std::vector<absl::Time> since(feeds_.size(), absl::Now());
    do {
      if (options_.on_progress) options_.on_progress(schedule_.done_bytes(), total_);
      if (options_.stall_timeout <= absl::ZeroDuration()) continue;
      const absl::Time now = absl::Now();
      for (size_t i = 0; i < feeds_.size(); ++i) {
        Feed& feed = *feeds_[i];
        const uint64_t moved = feed.moved();
        // Only a connection holding pieces can stall; an idle one is waiting for work.
        if (moved != last[i] || feed.finished() || !schedule_.Holds(i)) {
          last[i] = moved;
          since[i] = now;
        } else if (now - since[i] >= options_.stall_timeout) {
          feed.MarkStalled();
        }
      }
    } while (!done_.WaitForNotificationWithTimeout(kWatchInterval));
  }

  Schedule& schedule_;
  std::vector<std::unique_ptr<Feed>>& feeds_;
  const uint64_t total_;
  const ReadOptions& options_;
  absl::Notification done_;
  std::thread thread_;
};

// What ended one connection's part.
struct Outcome {
  bool failed = false;
  Status status;
};

class Read {
 public:
  Read(absl::Span<const ReadConnection> connections, Schedule& schedule,
       std::vector<std::unique_ptr<Feed>>& feeds, const ReadOptions& options)
      : connections_(connections),
        schedule_(schedule),
        feeds_(feeds),
        options_(options),
        outcomes_(connections.size()),
        live_(connections.size()) {}

  void Run() {
    std::vector<std::thread> threads;
    threads.reserve(connections_.size() - 1);
    for (size_t i = 1; i < connections_.size(); ++i) {
      threads.emplace_back([this, i] { RunConnection(i); });
    }
    RunConnection(0);
    for (std::thread& t : threads) t.join();
  }

  const std::vector<Outcome>& outcomes() const { return outcomes_; }

 private:
  void RunConnection(size_t i) {
    Feed& feed = *feeds_[i];
    Outcome& outcome = outcomes_[i];
    for (;;) {
      const uint64_t taken_before = feed.taken();
      Status status = connections_[i].connection->Execute(feed);
      const size_t lost = schedule_.Reclaim(i);
      if (schedule_.Stopping()) break;
      if (feed.dropped()) {
        outcome = {true, absl::AbortedError("dropped by the reader")};
        break;
      }
      if (feed.stalled()) {
        outcome = {true, absl::DeadlineExceededError(
                             absl::StrCat("the transfer stalled: no bytes arrived for ",
                                          absl::FormatDuration(options_.stall_timeout),
                                          " (the source is hung, stopped or its link is down)"))};
        break;
      }
      if (!status.ok() || lost > 0) {
        if (status.ok()) {
          status = absl::InternalError(
              "the transport stopped with pieces unfinished and no error (a ferry bug)");
        }
        outcome = {true, std::move(status)};
        break;
      }
      // Everything this connection took landed. Others may still fail and return pieces:
      // stay available until the read is complete (or paused).
      if (schedule_.paused()) break;
      if (feed.taken() == taken_before && !schedule_.AllDone()) {
        // Nothing here it serves yet (a peer still filling its memory): ask again later.
        schedule_.AwaitDone(kWatchInterval);
        continue;
      }
      bool more = false;
      while (!schedule_.AllDone() && !schedule_.Stopping() && !schedule_.paused()) {
        if (schedule_.AwaitWork(kWatchInterval)) {
          more = true;
          break;
        }
      }
      if (!more) break;
    }
    feed.MarkFinished();
    if (outcome.failed) schedule_.MarkGone(i);
    if (outcome.failed && live_.fetch_sub(1) == 1) schedule_.StopAll();
  }

  absl::Span<const ReadConnection> connections_;
  Schedule& schedule_;
  std::vector<std::unique_ptr<Feed>>& feeds_;
  const ReadOptions& options_;
  std::vector<Outcome> outcomes_;  // one per connection, each written by its runner only
  std::atomic<size_t> live_;
};

std::string Describe(absl::Span<const ReadConnection> connections) {
  if (connections.size() == 1) return connections[0].description;
  std::string text = absl::StrCat(connections.size(), " peers (");
  for (size_t i = 0; i < connections.size(); ++i) {
    absl::StrAppend(&text, i > 0 ? ", " : "", connections[i].description);
  }
  return absl::StrCat(text, ")");
}

}  // namespace

StatusOr<std::vector<Chunk>> CutIntoPieces(const std::vector<ReadOp>& ops, uint64_t chunk_bytes,
                                           std::vector<uint32_t>* regions) {
  std::vector<Chunk> pieces;
  regions->clear();
  for (const ReadOp& op : ops) {
    if (op.length == 0) continue;
    regions->push_back(op.remote_region);
    for (uint64_t done = 0; done < op.length; done += chunk_bytes) {
      if (pieces.size() >= UINT32_MAX) {
        return absl::InvalidArgumentError(
            absl::StrCat("a read of more than ", UINT32_MAX, " pieces of ", chunk_bytes,
                         " bytes; use a larger chunk size or split the read"));
      }
      Chunk c;
      c.index = static_cast<uint32_t>(pieces.size());
      c.remote_region = op.remote_region;
      c.remote_offset = op.remote_offset + done;
      c.local = static_cast<char*>(op.local) + done;
      c.length = std::min(chunk_bytes, op.length - done);
      pieces.push_back(c);
    }
  }
  std::sort(regions->begin(), regions->end());
  regions->erase(std::unique(regions->begin(), regions->end()), regions->end());
  return pieces;
}

Status RunRead(absl::Span<const ReadConnection> connections, uint64_t chunk_bytes,
               const ReadOptions& options, std::vector<PeerOutcome>* outcomes) {
  if (outcomes != nullptr) outcomes->assign(connections.size(), PeerOutcome{});
  if (connections.empty()) return absl::InvalidArgumentError("a read needs at least one peer");
  if (chunk_bytes == 0) return absl::InvalidArgumentError("chunk_bytes must be positive");
  const absl::Time start = options.start == absl::InfinitePast() ? absl::Now() : options.start;
  const absl::Time deadline = options.timeout == absl::InfiniteDuration()
                                  ? absl::InfiniteFuture()
                                  : start + std::max(options.timeout, absl::ZeroDuration());

  std::vector<std::vector<Chunk>> pieces(connections.size());
  std::vector<std::vector<uint32_t>> regions(connections.size());
  for (size_t c = 0; c < connections.size(); ++c) {
    FERRY_ASSIGN_OR_RETURN(pieces[c], CutIntoPieces(connections[c].ops, chunk_bytes, &regions[c]));
    if (c == 0) continue;
    bool same = pieces[c].size() == pieces[0].size();
    for (size_t i = 0; same && i < pieces[c].size(); ++i) {
      same = pieces[c][i].local == pieces[0][i].local && pieces[c][i].length == pieces[0][i].length;
    }
    if (!same) {
      return absl::InvalidArgumentError(
          absl::StrCat("the ops for ", connections[c].description, " do not describe the same ",
                       "local bytes as those for ", connections[0].description,
                       " (every peer's ops must have the same count, local pointers and lengths)"));
    }
  }
  uint64_t total = 0;
  for (const Chunk& c : pieces[0]) total += c.length;
  const std::string who = Describe(connections);
  if (pieces[0].empty()) {
    if (options.on_progress) options.on_progress(0, 0);
    return absl::OkStatus();
  }

  std::vector<std::function<bool(const ReadOp&)>> serves;
  std::vector<std::function<bool(const ReadOp&)>> fills;
  std::vector<std::function<bool(const ReadOp&)>> owns;
  for (const ReadConnection& c : connections) {
    serves.push_back(c.serves);
    fills.push_back(c.fills);
    owns.push_back(c.own);
  }
  Schedule schedule(std::move(pieces), std::move(regions), std::move(serves), std::move(fills),
                    std::move(owns), options, deadline);
  std::vector<std::unique_ptr<Feed>> feeds;
  for (size_t i = 0; i < connections.size(); ++i) {
    feeds.push_back(std::make_unique<Feed>(&schedule, i, connections[i].drop));
  }
  Read read(connections, schedule, feeds, options);
  {
    Watcher watcher(schedule, feeds, total, options);
    read.Run();
  }
  if (outcomes != nullptr) {
    for (size_t i = 0; i < connections.size(); ++i) {
      (*outcomes)[i].bytes = schedule.delivered(i);
      if (read.outcomes()[i].failed) (*outcomes)[i].status = read.outcomes()[i].status;
    }
  }
  if (schedule.AllDone()) {
    if (options.on_progress) options.on_progress(total, total);
    return absl::OkStatus();
  }

  const std::string range = schedule.FirstUnfinished();
  if (schedule.paused() && !schedule.cancelled()) {
    return absl::AbortedError(absl::StrCat("read from ", who, " paused (", schedule.done_bytes(),
                                           " of ", total,
                                           " bytes read); first unfinished range: ", range));
  }
  if (schedule.cancelled()) {
    return absl::CancelledError(
        absl::StrCat("read from ", who, " cancelled; first unfinished range: ", range));
  }
  std::vector<std::pair<size_t, Status>> failures;
  bool all_stalled = true;
  for (size_t i = 0; i < read.outcomes().size(); ++i) {
    if (!read.outcomes()[i].failed) continue;
    failures.emplace_back(i, read.outcomes()[i].status);
    all_stalled = all_stalled && feeds[i]->stalled();
  }
  if (failures.size() < connections.size() && schedule.past_deadline()) {
    return absl::DeadlineExceededError(
        absl::StrCat("read from ", who, " passed its deadline (",
                     absl::FormatDuration(std::max(options.timeout, absl::ZeroDuration())),
                     "); first unfinished range: ", range));
  }
  if (failures.empty()) {
    return absl::InternalError(
        absl::StrCat("read from ", who, " stopped unfinished; first unfinished range: ", range));
  }
  const std::string bytes_read =
      absl::StrCat(" (", schedule.done_bytes(), " of ", total, " bytes read)");
  if (all_stalled) {
    std::string text = absl::StrCat("the transfer stalled: no bytes arrived for ",
                                    absl::FormatDuration(options.stall_timeout), " from ", who,
                                    bytes_read, "; first unfinished range: ", range);
    return absl::DeadlineExceededError(text);
  }
  absl::StatusCode code = failures[0].second.code();
  std::string text;
  for (const auto& [i, status] : failures) {
    if (status.code() != code) code = absl::StatusCode::kUnavailable;
    if (failures.size() > 1) {
      absl::StrAppend(&text, text.empty() ? "" : "; ", connections[i].description, ": ");
    }
    absl::StrAppend(&text, status.message());
  }
  if (failures.size() > 1) text = absl::StrCat("every peer failed", bytes_read, ": ", text);
  return Status(code, absl::StrCat(text, "; first unfinished range: ", range));
}

}  // namespace ferry::internal
