#include "flows/striped_read.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "weights/tensor_checksum.h"

namespace ferry::weights {

namespace {

uintptr_t Address(const void* p) { return reinterpret_cast<uintptr_t>(p); }

// Ops of every source for one round, merged where every source's next op continues its last.
// `at` is where the next ops start in the pull (its tensors' bytes one after another); `starts`
// gets it for each op that is not merged.
void Append(std::vector<std::vector<ReadOp>>& ops, const std::vector<ReadOp>& next, uint64_t at,
            std::vector<uint64_t>& starts) {
  bool merge = !ops[0].empty();
  for (size_t s = 0; merge && s < ops.size(); ++s) {
    const ReadOp& last = ops[s].back();
    merge = last.remote_region == next[s].remote_region &&
            last.remote_offset + last.length == next[s].remote_offset &&
            static_cast<char*>(last.local) + last.length == next[s].local;
  }
  for (size_t s = 0; s < ops.size(); ++s) {
    if (merge) {
      ops[s].back().length += next[s].length;
    } else {
      ops[s].push_back(next[s]);
    }
  }
  if (!merge) starts.push_back(at);
}

// The index, among the pieces of `ops` (cut at `chunk` bytes, as the read core cuts them), of
// the first piece at or after position `anchor` of the pull; `starts` are the ops' positions.
uint64_t PiecesBefore(const std::vector<ReadOp>& ops, const std::vector<uint64_t>& starts,
                      uint64_t chunk, uint64_t anchor) {
  uint64_t pieces = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    const uint64_t count = (ops[i].length + chunk - 1) / chunk;
    if (starts[i] + ops[i].length <= anchor) {
      pieces += count;
      continue;
    }
    if (starts[i] < anchor) pieces += std::min(count, (anchor - starts[i] + chunk - 1) / chunk);
    break;
  }
  return pieces;
}
}  // namespace

StripedRead::StripedRead(std::vector<LandingVerifier::Tensor> tensors, StripedReadOptions options)
    : tensors_(std::move(tensors)),
      options_(std::move(options)),
      verifier_(
          tensors_, std::max(1, options_.verify_threads), [this](size_t i) { OnMismatch(i); },
          options_.on_verified, options_.algorithm, options_.checksum) {
  std::map<std::pair<const void*, uint64_t>, uint64_t> seen;  // tied tensors count once
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const uintptr_t b = Address(tensors_[i].data);
    if (tensors_[i].size > 0) by_address_.emplace_back(b, b + tensors_[i].size, i);
    auto [it, fresh] =
        seen.emplace(std::make_pair(tensors_[i].data, tensors_[i].size), pull_bytes_);
    position_.push_back(it->second);
    first_of_tie_.push_back(fresh);
    if (fresh) pull_bytes_ += tensors_[i].size;
  }
  std::sort(by_address_.begin(), by_address_.end());
}

bool StripedRead::InPart(size_t i) const {
  if (part_count_ == 0 || pull_bytes_ == 0) return false;
  // The span of the tensor's first byte: floor(position * count / bytes), without overflow.
  const auto span =
      static_cast<size_t>(static_cast<unsigned __int128>(position_[i]) * part_count_ / pull_bytes_);
  return span == part_rank_;
}

bool StripedRead::ForEachTensor(const void* local, uint64_t length,
                                const std::function<bool(size_t)>& f) const {
  const uintptr_t b = Address(local);
  const uintptr_t e = b + length;
  // Tensors do not partly overlap (tied ones share a range): those starting before `e` and
  // ending after `b`.
  auto it = std::upper_bound(by_address_.begin(), by_address_.end(),
                             std::make_tuple(b, UINTPTR_MAX, SIZE_MAX));
  if (it != by_address_.begin()) --it;
  for (; it != by_address_.end() && std::get<0>(*it) < e; ++it) {
    if (std::get<1>(*it) > b && !f(std::get<2>(*it))) return false;
  }
  return true;
}

bool StripedRead::Covers(const std::function<bool(size_t)>& holds, const void* local,
                         uint64_t length) const {
  return ForEachTensor(local, length, holds);
}

bool StripedRead::Touches(const std::function<bool(size_t)>& fills, const void* local,
                          uint64_t length) const {
  return !ForEachTensor(local, length, [&fills](size_t i) { return !fills(i); });
}

StripedRead::~StripedRead() { verifier_.Abandon(); }

size_t StripedRead::AddSource(Peer* peer, std::string name, std::vector<RemoteSpot> spots,
                              std::function<bool(size_t)> holds,
                              std::function<bool(size_t)> fills) {
  sources_.push_back(Source{peer, std::move(spots), std::make_unique<std::atomic<bool>>(false),
                            std::move(holds), std::move(fills)});
  SourceShare share;
  share.name = std::move(name);
  shares_.push_back(std::move(share));
  return sources_.size() - 1;
}

bool StripedRead::complete() { return verifier_.verified_count() == tensors_.size(); }

size_t StripedRead::live_sources() const {
  return static_cast<size_t>(
      std::count_if(shares_.begin(), shares_.end(), [](const SourceShare& s) { return s.live; }));
}

uint64_t StripedRead::verified_bytes() {
  uint64_t bytes = 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (verifier_.Verified(i)) bytes += tensors_[i].size;
  }
  return bytes;
}

Status StripedRead::Run(const ReadOptions& options, std::function<void(const ReadOp&)> on_piece) {
  read_ = options;
  read_.on_piece = nullptr;
  on_piece_ = std::move(on_piece);
  const ReadOptions& read = read_;
  const absl::Time start = read.start == absl::InfinitePast() ? absl::Now() : read.start;
  for (;;) {
    if (complete()) return absl::OkStatus();
    if (live_sources() == 0) {
      std::string text;
      absl::StatusCode code = absl::StatusCode::kOk;
      for (const SourceShare& s : shares_) {
        if (code == absl::StatusCode::kOk) code = s.status.code();
        if (s.status.code() != code) code = absl::StatusCode::kUnavailable;
        absl::StrAppend(&text, text.empty() ? "" : "; ", s.name, ": ", s.status.message());
      }
      if (code == absl::StatusCode::kOk) code = absl::StatusCode::kUnavailable;
      return Status(code, absl::StrCat(verified_bytes(), " bytes verified, and no source is left ",
                                       "to read the rest from (", text, ")"));
    }
    uint64_t before;
    {
      absl::MutexLock lock(&mu_);
      before = 0;
      for (const Landed& l : landed_) before += l.end - l.begin;
    }
    const size_t live_before = live_sources();
    const size_t verified_before = verifier_.verified_count();
    Status status = Round();
    if (complete()) return absl::OkStatus();
    const bool cancelled = read.cancel != nullptr && read.cancel->load();
    const bool late =
        read.timeout != absl::InfiniteDuration() && absl::Now() >= start + read.timeout;
    if (cancelled || late) return status;
    if (read.pause != nullptr && read.pause->load()) {
      return status.ok() ? absl::AbortedError("the read was paused") : status;
    }
    if (live_sources() < live_before) {
      // The caller may add sources before the next round.
      return status.ok() ? absl::UnavailableError("a source stopped taking part") : status;
    }
    uint64_t after = 0;
    {
      absl::MutexLock lock(&mu_);
      for (const Landed& l : landed_) after += l.end - l.begin;
    }
    if (after != before || verifier_.verified_count() != verified_before) continue;
    // Nothing moved, nothing was verified and nobody failed: another round would do the same.
    return status.ok()
               ? absl::InternalError("a round of the striped read made no progress (a ferry bug)")
               : status;
  }
}

std::vector<std::pair<uint64_t, uint64_t>> StripedRead::Missing(size_t i) {
  const LandingVerifier::Tensor& t = tensors_[i];
  const uintptr_t b = Address(t.data);
  const uintptr_t e = b + t.size;
  std::vector<std::pair<uint64_t, uint64_t>> gaps;
  // landed_ is sorted by begin and its ranges are disjoint.
  auto it = std::lower_bound(landed_.begin(), landed_.end(), b,
                             [](const Landed& l, uintptr_t at) { return l.end <= at; });
  uintptr_t at = b;
  for (; it != landed_.end() && it->begin < e; ++it) {
    if (it->begin > at) gaps.emplace_back(at - b, it->begin - b);
    at = std::max(at, std::min(it->end, e));
  }
  if (at < e) gaps.emplace_back(at - b, e - b);
  return gaps;
}

Status StripedRead::Round() {
  std::vector<size_t> live;
  for (size_t s = 0; s < sources_.size(); ++s) {
    if (shares_[s].live) live.push_back(s);
  }
  std::vector<std::vector<ReadOp>> ops(live.size());
  std::vector<uint64_t> starts;  // of ops[k][j] in the pull, for every k
  const uint64_t total = pull_bytes_;
  uint64_t landed_so_far = 0;
  {
    absl::MutexLock lock(&mu_);
    std::sort(landed_.begin(), landed_.end(),
              [](const Landed& a, const Landed& b) { return a.begin < b.begin; });
    std::vector<ReadOp> next(live.size());
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const LandingVerifier::Tensor& t = tensors_[i];
      if (t.size == 0 || !first_of_tie_[i]) continue;  // tied tensors are read once
      const uint64_t position = position_[i];
      uint64_t missing = 0;
      if (!verifier_.Verified(i)) {
        for (const auto& [a, b] : Missing(i)) {
          for (size_t k = 0; k < live.size(); ++k) {
            const RemoteSpot& spot = sources_[live[k]].spots[i];
            next[k] = ReadOp{spot.region, spot.offset + a,
                             static_cast<char*>(const_cast<void*>(t.data)) + a, b - a};
          }
          Append(ops, next, position + a, starts);
          missing += b - a;
        }
      }
      landed_so_far += t.size - missing;
    }
  }
  if (ops.empty() || ops[0].empty()) {
    verifier_.WaitIdle();
    Resolve();
    return absl::OkStatus();
  }

  const std::function<bool(size_t)> in_part = [this](size_t i) { return InPart(i); };
  std::vector<PeerRead> reads;
  for (size_t k = 0; k < live.size(); ++k) {
    const Source& source = sources_[live[k]];
    PeerRead peer_read{source.peer, std::move(ops[k]), source.drop.get()};
    if (source.holds) {
      peer_read.serves = [this, &source](const ReadOp& piece) {
        return Covers(source.holds, piece.local, piece.length);
      };
    }
    if (source.fills) {
      peer_read.fills = [this, &source](const ReadOp& piece) {
        return Touches(source.fills, piece.local, piece.length);
      };
    }
    if (!source.holds && part_count_ > 0) {
      peer_read.own = [this, &in_part](const ReadOp& piece) {
        return Touches(in_part, piece.local, piece.length);
      };
    }
    reads.push_back(std::move(peer_read));
  }
  ReadOptions read = read_;
  if (read.chunk_bytes > 0 && total > 0) {
    // The reader's starting piece is one of the whole pull's: start this round at the first
    // missing piece from there, so that a reader keeps to its part across rounds.
    const uint64_t whole = (total + read.chunk_bytes - 1) / read.chunk_bytes;
    const uint64_t anchor = (read_.first_piece % whole) * read.chunk_bytes;
    read.first_piece = PiecesBefore(reads[0].ops, starts, read.chunk_bytes, anchor);
  }
  read.on_piece = [this, &live](const ReadOp& piece, size_t k) {
    {
      absl::MutexLock lock(&mu_);
      landed_.push_back(Landed{Address(piece.local), Address(piece.local) + piece.length, live[k]});
    }
    if (options_.on_landing) {
      ForEachTensor(piece.local, piece.length, [this](size_t i) {
        options_.on_landing(i);
        return true;
      });
    }
    verifier_.Landed(piece.local, piece.length);
    if (on_piece_) on_piece_(piece);
  };
  if (read_.on_progress) {
    read.on_progress = [this, landed_so_far, total](uint64_t done, uint64_t) {
      read_.on_progress(landed_so_far + done, total);
    };
  }
  std::vector<PeerOutcome> outcomes;
  Status status = ReadFromPeers(reads, read, &outcomes);
  const absl::Time read_end = absl::Now();
  verifier_.WaitIdle();
  verify_tail_ = absl::Now() - read_end;
  Resolve();
  {
    absl::MutexLock lock(&mu_);
    for (size_t k = 0; k < live.size(); ++k) {
      const size_t s = live[k];
      auto blamed = blamed_.find(s);
      if (blamed != blamed_.end()) {
        shares_[s].live = false;
        shares_[s].status = absl::DataLossError(blamed->second);
      } else if (k < outcomes.size() && !outcomes[k].status.ok()) {
        shares_[s].live = false;
        shares_[s].status = outcomes[k].status;
      }
    }
    // Sources blamed outside this round's read (by Resolve) stop too.
    for (const auto& [s, why] : blamed_) {
      shares_[s].live = false;
      shares_[s].status = absl::DataLossError(why);
    }
  }
  CountShares();
  return status;
}

std::vector<StripedRead::Landed> StripedRead::Forget(size_t i) {
  const uintptr_t b = Address(tensors_[i].data);
  const uintptr_t e = b + tensors_[i].size;
  std::vector<Landed> overlapped;
  std::vector<Landed> kept;
  kept.reserve(landed_.size() + 2);
  for (const Landed& l : landed_) {
    if (l.end <= b || l.begin >= e) {
      kept.push_back(l);
      continue;
    }
    overlapped.push_back(Landed{std::max(l.begin, b), std::min(l.end, e), l.source});
    if (l.begin < b) kept.push_back(Landed{l.begin, b, l.source});
    if (l.end > e) kept.push_back(Landed{e, l.end, l.source});
  }
  landed_ = std::move(kept);
  return overlapped;
}

void StripedRead::OnMismatch(size_t i) {
  const LandingVerifier::Tensor& t = tensors_[i];
  {
    absl::MutexLock lock(&mu_);
    std::vector<Landed> pieces = Forget(i);
    std::set<size_t> from;
    for (const Landed& l : pieces) from.insert(l.source);
    if (from.size() == 1) {
      const size_t s = *from.begin();
      blamed_.emplace(
          s, absl::StrCat("served tensor ", t.name, " with bytes that failed verification (",
                          ChecksumAlgorithmName(options_.algorithm), ")"));
      sources_[s].drop->store(true);
    } else {
      StatusOr<std::string> bad = HostCopy(t.data, t.size);
      // Without a copy the tensor is still read again whole; only naming the liar is lost.
      Suspect suspect{i, std::move(pieces), bad.ok() ? std::move(*bad) : std::string()};
      suspects_.push_back(std::move(suspect));
    }
  }
  verifier_.Rearm(i);
}

StatusOr<std::string> StripedRead::HostCopy(const void* local, uint64_t size) const {
  if (!options_.to_host) return std::string(static_cast<const char*>(local), size);
  std::string out(size, '\0');
  FERRY_RETURN_IF_ERROR(options_.to_host(out.data(), local, size));
  return out;
}

void StripedRead::Blame(size_t source, const std::string& why) {
  absl::MutexLock lock(&mu_);
  blamed_.emplace(source, why);
  sources_[source].drop->store(true);
}

void StripedRead::Resolve() {
  std::vector<Suspect> suspects;
  {
    absl::MutexLock lock(&mu_);
    suspects.swap(suspects_);
  }
  for (Suspect& suspect : suspects) {
    const size_t i = suspect.tensor;
    const LandingVerifier::Tensor& t = tensors_[i];
    char* data = static_cast<char*>(const_cast<void*>(t.data));
    // Read the tensor whole from one source at a time until a copy verifies.
    for (size_t s = 0; s < sources_.size() && !verifier_.Verified(i); ++s) {
      {
        absl::MutexLock lock(&mu_);
        if (!shares_[s].live || blamed_.count(s) > 0) continue;
      }
      ReadOptions read;
      read.timeout = read_.timeout;
      read.start = read_.start;
      read.stall_timeout = read_.stall_timeout;
      read.cancel = read_.cancel;
      const RemoteSpot& spot = sources_[s].spots[i];
      Status status =
          sources_[s].peer->Read({ReadOp{spot.region, spot.offset, data, t.size}}, read);
      if (!status.ok()) continue;  // its failure shows in the next round
      StatusOr<uint64_t> sum =
          options_.checksum ? options_.checksum(data, t.size)
                            : StatusOr<uint64_t>(TensorChecksum(data, t.size, options_.algorithm));
      if (!sum.ok() || *sum != t.expected) {
        Blame(s, absl::StrCat("served tensor ", t.name, " with bytes that failed verification (",
                              ChecksumAlgorithmName(options_.algorithm), ", read alone)"));
        continue;
      }
      {
        absl::MutexLock lock(&mu_);
        landed_.push_back(Landed{Address(data), Address(data) + t.size, s});
      }
      verifier_.MarkVerified(i, *sum);
      if (options_.on_verified) options_.on_verified(i);
    }
    if (!verifier_.Verified(i)) {
      // No live source could serve it now; the next round reads it like any missing bytes.
      continue;
    }
    // The verified copy shows whose pieces were wrong.
    if (suspect.bad_bytes.size() != t.size) continue;
    StatusOr<std::string> good = HostCopy(data, t.size);
    if (!good.ok()) continue;
    for (const Landed& piece : suspect.pieces) {
      const uint64_t at = piece.begin - Address(t.data);
      if (std::memcmp(suspect.bad_bytes.data() + at, good->data() + at, piece.end - piece.begin) !=
          0) {
        Blame(piece.source, absl::StrCat("served bytes of tensor ", t.name,
                                         " that differ from its verified copy"));
      }
    }
  }
}

void StripedRead::CountShares() {
  absl::MutexLock lock(&mu_);
  for (SourceShare& share : shares_) share.bytes = 0;
  for (const Landed& l : landed_) shares_[l.source].bytes += l.end - l.begin;
}

}  // namespace ferry::weights
