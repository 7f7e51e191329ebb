// The read core through fault-injecting connections built on the real PeerConnection
// interface: each copies from a source buffer, and can fail or hang after some pieces.
#include "transfer/read_core.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transfer/transfer_test_util.h"

namespace ferry::internal {
namespace {

using ::ferry::testing::FillPattern;
using ::ferry::testing::FirstMismatch;
using ::testing::HasSubstr;

constexpr uint64_t kPiece = 64 << 10;

class MemoryConnection final : public PeerConnection {
 public:
  enum class Fault { kNone, kFail, kHang };

  MemoryConnection(const char* source, Fault fault = Fault::kNone, size_t pieces_before = 0)
      : source_(source), fault_(fault), pieces_before_(pieces_before) {}

  // Takes no piece before `gate` is notified.
  void WaitFor(absl::Notification* gate) { gate_ = gate; }
  // Notified when the fault strikes (the connection holds the piece it took).
  absl::Notification faulted;

  Status Execute(ChunkFeed& feed) override {
    if (gate_ != nullptr) gate_->WaitForNotification();
    Chunk c;
    while (feed.Next(&c)) {
      if (fault_ != Fault::kNone && served_.load() >= pieces_before_) {
        if (!faulted.HasBeenNotified()) faulted.Notify();
        if (fault_ == Fault::kFail) {
          return absl::UnavailableError("memory peer failed: injected fault");
        }
        while (!feed.stopping()) absl::SleepFor(absl::Milliseconds(5));  // a hung source
        return absl::OkStatus();
      }
      std::memcpy(c.local, source_ + c.remote_offset, c.length);
      feed.Moved(c.length);
      served_.fetch_add(1);
      feed.Done(c);
    }
    return absl::OkStatus();
  }
  void Close() override {}

  size_t served() const { return served_.load(); }

 private:
  const char* const source_;
  absl::Notification* gate_ = nullptr;
  const Fault fault_;
  const size_t pieces_before_;
  std::atomic<size_t> served_{0};
};

// RunRead with the same ops for every connection.
Status ReadAll(absl::Span<const ReadConnection> connections, std::vector<ReadOp> ops,
               uint64_t chunk_bytes, const ReadOptions& options,
               std::vector<PeerOutcome>* outcomes = nullptr) {
  std::vector<ReadConnection> with_ops(connections.begin(), connections.end());
  for (ReadConnection& c : with_ops) c.ops = ops;
  return RunRead(with_ops, chunk_bytes, options, outcomes);
}

struct Fixture {
  explicit Fixture(uint64_t bytes) : source(bytes), dst(bytes) {
    FillPattern(source.data(), bytes);
    std::memset(dst.data(), 0, bytes);
  }
  std::vector<ReadOp> Whole() const { return {ReadOp{0, 0, dst.data(), dst.size()}}; }
  ferry::testing::Buffer source;
  ferry::testing::Buffer dst;
};

TEST(ReadCoreTest, EveryPieceLandsOnceAndProgressEndsAtTheTotal) {
  Fixture f(1 << 20);
  MemoryConnection a(f.source.data());
  std::atomic<uint64_t> landed{0};
  std::atomic<int> pieces{0};
  uint64_t last_done = 0;
  uint64_t last_total = 0;
  absl::Mutex mu;
  ReadOptions options;
  options.on_piece = [&](const ReadOp& piece, size_t) {
    landed += piece.length;
    ++pieces;
  };
  options.on_progress = [&](uint64_t done, uint64_t total) {
    absl::MutexLock lock(&mu);
    last_done = done;
    last_total = total;
  };
  const ReadConnection c{&a, "peer a"};
  ASSERT_TRUE(ReadAll({&c, 1}, f.Whole(), kPiece, options).ok());
  EXPECT_EQ(landed.load(), f.dst.size());
  EXPECT_EQ(pieces.load(), 16);
  EXPECT_EQ(last_done, f.dst.size());
  EXPECT_EQ(last_total, f.dst.size());
  EXPECT_EQ(FirstMismatch(f.dst.data(), f.dst.size(), 0), -1);
}

// before_piece sees every piece once, before any of its bytes land, on the thread that then
// copies it (here: the caller's, the first connection's runner). The pull uses it to fault a
// destination in just ahead of the copy.
TEST(ReadCoreTest, BeforePieceRunsOncePerPieceBeforeItsBytesLand) {
  Fixture f(1 << 20);
  MemoryConnection a(f.source.data());
  absl::Mutex mu;
  std::vector<std::pair<char*, uint64_t>> seen;
  bool untouched = true;
  const std::thread::id caller = std::this_thread::get_id();
  bool on_caller = true;
  ReadOptions options;
  options.before_piece = [&](void* local, uint64_t length) {
    absl::MutexLock lock(&mu);
    seen.emplace_back(static_cast<char*>(local), length);
    for (uint64_t i = 0; i < length; ++i) untouched &= static_cast<char*>(local)[i] == 0;
    on_caller &= std::this_thread::get_id() == caller;
    std::memset(local, 0x5a, length);  // overwritten by the copy that follows
  };
  const ReadConnection c{&a, "peer a"};
  ASSERT_TRUE(ReadAll({&c, 1}, f.Whole(), kPiece, options).ok());
  EXPECT_TRUE(untouched);
  EXPECT_TRUE(on_caller);
  ASSERT_EQ(seen.size(), 16u);
  std::sort(seen.begin(), seen.end());
  for (size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].first, f.dst.data() + i * kPiece);
    EXPECT_EQ(seen[i].second, kPiece);
  }
  EXPECT_EQ(FirstMismatch(f.dst.data(), f.dst.size(), 0), -1);
}

TEST(ReadCoreTest, AFailedPeerLosesOnlyItsUnfinishedPiecesToTheOthers) {
  Fixture f(4 << 20);
  MemoryConnection good(f.source.data());
  MemoryConnection bad(f.source.data(), MemoryConnection::Fault::kFail, /*pieces_before=*/3);
  good.WaitFor(&bad.faulted);  // the bad peer takes and fails before the good one starts
  std::atomic<int> pieces{0};
  ReadOptions options;
  options.on_piece = [&](const ReadOp&, size_t) { ++pieces; };
  const ReadConnection both[] = {{&bad, "bad peer"}, {&good, "good peer"}};
  const Status s = ReadAll(both, f.Whole(), kPiece, options);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(pieces.load(), 64);  // each piece reported once
  EXPECT_EQ(bad.served(), 3u);
  EXPECT_EQ(good.served(), 61u);
  EXPECT_EQ(FirstMismatch(f.dst.data(), f.dst.size(), 0), -1);
}

TEST(ReadCoreTest, AStalledPeerIsAbandonedAndTheOtherFinishes) {
  Fixture f(2 << 20);
  MemoryConnection good(f.source.data());
  MemoryConnection hung(f.source.data(), MemoryConnection::Fault::kHang, /*pieces_before=*/1);
  good.WaitFor(&hung.faulted);
  ReadOptions options;
  options.stall_timeout = absl::Milliseconds(300);
  const ReadConnection both[] = {{&hung, "hung peer"}, {&good, "good peer"}};
  const Status s = ReadAll(both, f.Whole(), kPiece, options);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(hung.served() + good.served(), 32u);
  EXPECT_EQ(FirstMismatch(f.dst.data(), f.dst.size(), 0), -1);
}

// The stall message says how far the transfer got (it once counted a stalled batch as read).
TEST(ReadCoreTest, AStallOfTheOnlyPeerSaysHowManyBytesLanded) {
  Fixture f(1 << 20);
  MemoryConnection hung(f.source.data(), MemoryConnection::Fault::kHang, /*pieces_before=*/2);
  ReadOptions options;
  options.stall_timeout = absl::Milliseconds(300);
  options.timeout = absl::Seconds(60);
  const ReadConnection c{&hung, "hung peer"};
  const Status s = ReadAll({&c, 1}, f.Whole(), kPiece, options);
  ASSERT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_THAT(s.message(), HasSubstr("the transfer stalled"));
  EXPECT_THAT(s.message(), HasSubstr("(131072 of 1048576 bytes read)"));
  EXPECT_THAT(s.message(), HasSubstr("first unfinished range: region 0 [131072, 196608)"));
}

TEST(ReadCoreTest, WhenEveryPeerFailsTheErrorListsEachWithTheSharedCode) {
  Fixture f(1 << 20);
  MemoryConnection a(f.source.data(), MemoryConnection::Fault::kFail, 1);
  MemoryConnection b(f.source.data(), MemoryConnection::Fault::kFail, 2);
  const ReadConnection both[] = {{&a, "peer a"}, {&b, "peer b"}};
  const Status s = ReadAll(both, f.Whole(), kPiece, ReadOptions{});
  ASSERT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("every peer failed"));
  EXPECT_THAT(s.message(), HasSubstr("peer a: memory peer failed"));
  EXPECT_THAT(s.message(), HasSubstr("peer b: memory peer failed"));
  EXPECT_THAT(s.message(), HasSubstr("first unfinished range: region 0 ["));
}

// Cancelled from the piece callback: deterministic, no timing involved.
TEST(ReadCoreTest, CancelStopsTheReadAndNamesTheFirstUnfinishedRange) {
  Fixture f(1 << 20);
  MemoryConnection a(f.source.data());
  std::atomic<bool> cancel{false};
  std::atomic<int> pieces{0};
  ReadOptions options;
  options.cancel = &cancel;
  options.on_piece = [&](const ReadOp&, size_t) {
    if (++pieces == 4) cancel = true;
  };
  const ReadConnection c{&a, "peer a"};
  const Status s = ReadAll({&c, 1}, f.Whole(), kPiece, options);
  ASSERT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_EQ(pieces.load(), 4);
  EXPECT_THAT(s.message(), HasSubstr("read from peer a cancelled"));
  EXPECT_THAT(s.message(), HasSubstr("first unfinished range: region 0 [262144, 327680)"));
}

TEST(ReadCoreTest, APassedDeadlineFailsBeforeAnyPiece) {
  Fixture f(1 << 20);
  MemoryConnection a(f.source.data());
  ReadOptions options;
  options.start = absl::Now() - absl::Seconds(2);
  options.timeout = absl::Seconds(1);
  const ReadConnection c{&a, "peer a"};
  const Status s = ReadAll({&c, 1}, f.Whole(), kPiece, options);
  ASSERT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_THAT(s.message(), HasSubstr("passed its deadline (1s)"));
  EXPECT_THAT(s.message(), HasSubstr("first unfinished range: region 0 [0, 65536)"));
  EXPECT_EQ(a.served(), 0u);
}

TEST(ReadCoreTest, EmptyReadsSucceedWithoutTouchingThePeer) {
  MemoryConnection a(nullptr, MemoryConnection::Fault::kFail, 0);
  const ReadConnection c{&a, "peer a"};
  char byte = 0;
  EXPECT_TRUE(ReadAll({&c, 1}, {}, kPiece, ReadOptions{}).ok());
  EXPECT_TRUE(ReadAll({&c, 1}, {ReadOp{0, 0, &byte, 0}}, kPiece, ReadOptions{}).ok());
}

// Two peers holding the same bytes at different remote offsets (sources of one model laid out
// differently): each reads at its own coordinates, and the outcomes count what each delivered.
TEST(ReadCoreTest, PeersWithDifferentLayoutsFillTheSameLocalBytes) {
  Fixture f(2 << 20);
  constexpr uint64_t kShift = 12345;
  ferry::testing::Buffer shifted(f.source.size() + kShift);
  std::memcpy(shifted.data() + kShift, f.source.data(), f.source.size());
  MemoryConnection a(f.source.data());
  MemoryConnection b(shifted.data());
  std::vector<ReadConnection> both = {{&a, "peer a", f.Whole()}, {&b, "peer b", f.Whole()}};
  both[1].ops[0].remote_offset = kShift;
  std::atomic<uint64_t> by_peer[2] = {0, 0};
  ReadOptions options;
  options.on_piece = [&](const ReadOp& piece, size_t peer) { by_peer[peer] += piece.length; };
  std::vector<PeerOutcome> outcomes;
  const Status s = RunRead(both, kPiece, options, &outcomes);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(FirstMismatch(f.dst.data(), f.dst.size(), 0), -1);
  ASSERT_EQ(outcomes.size(), 2u);
  EXPECT_EQ(outcomes[0].bytes, by_peer[0].load());
  EXPECT_EQ(outcomes[1].bytes, by_peer[1].load());
  EXPECT_EQ(outcomes[0].bytes + outcomes[1].bytes, f.dst.size());
  EXPECT_EQ(a.served() + b.served(), 32u);
}

TEST(ReadCoreTest, OpsThatDescribeDifferentLocalBytesAreRefused) {
  Fixture f(1 << 20);
  MemoryConnection a(f.source.data());
  MemoryConnection b(f.source.data());
  std::vector<ReadConnection> both = {{&a, "peer a", f.Whole()}, {&b, "peer b", f.Whole()}};
  both[1].ops[0].length -= 1;
  const Status s = RunRead(both, kPiece, ReadOptions{});
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("the ops for peer b do not describe the same local bytes"));
  EXPECT_EQ(a.served() + b.served(), 0u);
}

// A peer dropped by the reader (as the pull drops one whose bytes failed verification) stops;
// its unfinished pieces go to the other, and its outcome says it was dropped.
TEST(ReadCoreTest, ADroppedPeerStopsAndTheOtherFinishes) {
  Fixture f(4 << 20);
  MemoryConnection dropped(f.source.data());
  MemoryConnection good(f.source.data());
  absl::Notification gate;
  good.WaitFor(&gate);
  std::atomic<bool> drop{false};
  ReadOptions options;
  options.on_piece = [&](const ReadOp&, size_t peer) {
    if (peer == 0 && dropped.served() == 2) {
      drop = true;
      if (!gate.HasBeenNotified()) gate.Notify();
    }
  };
  std::vector<ReadConnection> both = {{&dropped, "dropped peer", f.Whole(), &drop},
                                      {&good, "good peer", f.Whole()}};
  std::vector<PeerOutcome> outcomes;
  const Status s = RunRead(both, kPiece, options, &outcomes);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(FirstMismatch(f.dst.data(), f.dst.size(), 0), -1);
  EXPECT_EQ(outcomes[0].status.code(), absl::StatusCode::kAborted) << outcomes[0].status;
  EXPECT_EQ(outcomes[0].bytes, 2 * kPiece);
  EXPECT_TRUE(outcomes[1].status.ok());
  EXPECT_EQ(outcomes[1].bytes, f.dst.size() - 2 * kPiece);
}

// Takes as many pieces as the read core hands out at once (a batch), notes their indices, then
// copies them all; optionally waits for `release` before copying its first batch.
class BatchConnection final : public PeerConnection {
 public:
  explicit BatchConnection(const char* source) : source_(source) {}

  void HoldFirstBatchUntil(absl::Notification* release) { release_ = release; }
  absl::Notification took_first_batch;

  Status Execute(ChunkFeed& feed) override {
    for (;;) {
      std::vector<Chunk> batch;
      Chunk c;
      while (feed.Next(&c)) batch.push_back(c);
      if (batch.empty()) return absl::OkStatus();
      {
        absl::MutexLock lock(&mu_);
        batches_.push_back(batch.size());
        for (const Chunk& b : batch) order_.push_back(b.index);
      }
      if (!took_first_batch.HasBeenNotified()) {
        took_first_batch.Notify();
        if (release_ != nullptr) release_->WaitForNotification();
      }
      for (const Chunk& b : batch) {
        std::memcpy(b.local, source_ + b.remote_offset, b.length);
        feed.Moved(b.length);
        feed.Done(b);
      }
    }
  }
  void Close() override {}

  std::vector<size_t> batches() {
    absl::MutexLock lock(&mu_);
    return batches_;
  }
  std::vector<uint32_t> order() {
    absl::MutexLock lock(&mu_);
    return order_;
  }

 private:
  const char* const source_;
  absl::Notification* release_ = nullptr;
  absl::Mutex mu_;
  std::vector<size_t> batches_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> order_ ABSL_GUARDED_BY(mu_);
};

// A predicate over pieces [first, last] of the read (pieces of kPiece bytes from `base`).
std::function<bool(const ReadOp&)> Pieces(const char* base, uint64_t first, uint64_t last) {
  return [=](const ReadOp& piece) {
    const uint64_t index = (static_cast<const char*>(piece.local) - base) / kPiece;
    return index >= first && index <= last;
  };
}

TEST(ReadCoreTest, WithALookaheadAPeerHoldsTwoPiecesPlusThoseItFinishedLately) {
  Fixture f(16 * kPiece);
  BatchConnection peer(f.source.data());
  ReadOptions options;
  options.lookahead = absl::Hours(1);  // every piece finished counts
  const ReadConnection c{&peer, "peer"};
  ASSERT_TRUE(ReadAll({&c, 1}, f.Whole(), kPiece, options).ok());
  EXPECT_EQ(peer.batches(), (std::vector<size_t>{2, 4, 8, 2}));
  EXPECT_EQ(FirstMismatch(f.dst.data(), f.dst.size(), 0), -1);

  // Without one, a lone peer takes everything at once.
  BatchConnection eager(f.source.data());
  const ReadConnection e{&eager, "eager peer"};
  ASSERT_TRUE(ReadAll({&e, 1}, f.Whole(), kPiece, ReadOptions{}).ok());
  EXPECT_EQ(eager.batches(), (std::vector<size_t>{16}));
}

TEST(ReadCoreTest, ACompleteSourceTakesItsOwnPartFirstThenWhatOthersReachLast) {
  Fixture f(16 * kPiece);
  BatchConnection source(f.source.data());
  BatchConnection partial(f.source.data());  // holds nothing yet
  std::vector<ReadConnection> both = {{&source, "source", f.Whole()},
                                      {&partial, "partial peer", f.Whole()}};
  both[0].own = Pieces(f.dst.data(), 8, 15);
  both[1].serves = [](const ReadOp&) { return false; };
  std::vector<PeerOutcome> outcomes;
  ASSERT_TRUE(RunRead(both, kPiece, ReadOptions{}, &outcomes).ok());
  EXPECT_EQ(source.order(), (std::vector<uint32_t>{8, 9, 10, 11, 12, 13, 14, 15,  // its own part
                                                   7, 6, 5, 4, 3, 2, 1, 0}));     // from the end
  EXPECT_EQ(outcomes[1].bytes, 0u);
  EXPECT_EQ(FirstMismatch(f.dst.data(), f.dst.size(), 0), -1);
}

TEST(ReadCoreTest, ACompleteSourceGivesWhatAPartialPeerHoldsOneAtATimeWhileItDelivers) {
  Fixture f(16 * kPiece);
  BatchConnection source(f.source.data());
  BatchConnection partial(f.source.data());
  absl::Notification release;
  partial.HoldFirstBatchUntil(&release);
  ReadOptions options;
  options.on_piece = [&](const ReadOp&, size_t peer) {
    if (peer == 0 && source.order().size() == 12 && !release.HasBeenNotified()) release.Notify();
  };
  std::vector<ReadConnection> both = {{&source, "source", f.Whole()},
                                      {&partial, "partial peer", f.Whole()}};
  both[1].serves = Pieces(f.dst.data(), 8, 15);
  // The source starts once the partial peer took its first pieces.
  absl::Notification source_may_start;
  std::vector<PeerOutcome> outcomes;
  std::thread starter([&] {
    partial.took_first_batch.WaitForNotification();
    source_may_start.Notify();
  });
  struct GatedSource final : public PeerConnection {
    GatedSource(BatchConnection* inner, absl::Notification* gate) : inner(inner), gate(gate) {}
    Status Execute(ChunkFeed& feed) override {
      gate->WaitForNotification();
      return inner->Execute(feed);
    }
    void Close() override {}
    BatchConnection* inner;
    absl::Notification* gate;
  } gated(&source, &source_may_start);
  both[0].connection = &gated;
  const Status s = RunRead(both, kPiece, options, &outcomes);
  starter.join();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(partial.order(), (std::vector<uint32_t>{8, 9, 10, 11}));
  // Its own run, four at a time, then the held pieces left pending, one at a time.
  EXPECT_EQ(source.batches(), (std::vector<size_t>{4, 4, 1, 1, 1, 1}));
  EXPECT_EQ(source.order(), (std::vector<uint32_t>{0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15}));
  EXPECT_EQ(outcomes[0].bytes, 12 * kPiece);
  EXPECT_EQ(outcomes[1].bytes, 4 * kPiece);
  EXPECT_EQ(FirstMismatch(f.dst.data(), f.dst.size(), 0), -1);
}

TEST(ReadCoreTest, ACompleteSourceLeavesPiecesAnotherPeerIsFillingUntilNothingElseIsLeft) {
  Fixture f(8 * kPiece);
  BatchConnection source(f.source.data());
  BatchConnection partial(f.source.data());
  std::vector<ReadConnection> both = {{&source, "source", f.Whole()},
                                      {&partial, "partial peer", f.Whole()}};
  both[1].serves = [](const ReadOp&) { return false; };
  both[1].fills = Pieces(f.dst.data(), 0, 3);
  ASSERT_TRUE(RunRead(both, kPiece, ReadOptions{}).ok());
  EXPECT_EQ(source.order(), (std::vector<uint32_t>{4, 5, 6, 7, 0, 1, 2, 3}));
  EXPECT_EQ(FirstMismatch(f.dst.data(), f.dst.size(), 0), -1);
}

TEST(ReadCoreTest, CoalesceMergesOnlyRangesThatContinueOnBothSides) {
  char buf[64];
  const std::vector<ReadOp> merged =
      CoalesceReadOps({ReadOp{0, 0, buf, 8}, ReadOp{0, 8, buf + 8, 8}, ReadOp{0, 20, buf + 16, 4},
                       ReadOp{1, 24, buf + 20, 4}, ReadOp{1, 28, buf + 24, 0}});
  ASSERT_EQ(merged.size(), 3u);
  EXPECT_EQ(merged[0].length, 16u);
  EXPECT_EQ(merged[1].remote_offset, 20u);
  EXPECT_EQ(merged[2].remote_region, 1u);
}

}  // namespace
}  // namespace ferry::internal
