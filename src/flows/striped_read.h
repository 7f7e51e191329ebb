// One pull's bytes read from several sources at once, verified as they land, and continued
// from where it stopped when sources fail: the swarm's read. Every pull of weights runs here,
// with one source or several (PullOptions::stripe).
//
// The local side is fixed first (which tensors land where, and what each must hash to); each
// source then says where it holds each tensor, since sources of one model may lay it out
// differently. A round reads every byte not yet landed from the live sources at once, handing
// out pieces dynamically (ReadFromPeers): a faster source takes more, and a source that fails
// or stalls loses only its unfinished pieces. A tensor that fails verification is read again;
// its source is dropped at once when all of the tensor's bytes came from it, and otherwise the
// tensor is re-read from one source at a time and the bytes compared, piece by piece, to find
// which source served the wrong ones. Bytes that landed from a source that later failed are
// kept: the next round (with the sources still live, and any the caller adds) reads only what
// is missing.
//
// Thread-compatible: one thread calls the methods; the read's own threads are internal.
#ifndef FERRY_FLOWS_STRIPED_READ_H_
#define FERRY_FLOWS_STRIPED_READ_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ferry/status.h"
#include "ferry/transfer.h"
#include "flows/landing_verifier.h"

namespace ferry::weights {

// Where a source holds one tensor.
struct RemoteSpot {
  uint32_t region = 0;
  uint64_t offset = 0;
};

struct StripedReadOptions {
  int verify_threads = 2;
  // The algorithm of the tensors' expected checksums (every source's: they must agree), and
  // (optional) how to compute it where the tensors land (device memory); null: on the host.
  ChecksumAlgorithm algorithm = ChecksumAlgorithm::kXxh3_64;
  ChecksumFunction checksum;
  // How to copy landed bytes to host memory (`n` bytes at `local` into `host`), for comparing a
  // failed copy of a tensor with its verified one; null: the tensors land in host memory.
  std::function<Status(void* host, const void* local, uint64_t n)> to_host;
  // Called with a tensor's index once it is verified (from a checksum thread, or the Run
  // thread): a target serving while it pulls serves it from then on.
  std::function<void(size_t)> on_verified;
  // Called with a tensor's index when some of its bytes landed (for every piece, from the
  // thread that received it): a target serving while it pulls says it is filling it.
  std::function<void(size_t)> on_landing;
};

// What one source did over the whole pull.
struct SourceShare {
  std::string name;    // the caller's text for it ("worker ab12 at 10.0.0.5:6555")
  uint64_t bytes = 0;  // bytes of verified tensors it delivered
  Status status;       // why it stopped taking part; OK while live or after a full pull
  bool live = true;
};

class StripedRead {
 public:
  // `tensors` are where the pull lands, in the order of every source's spots.
  StripedRead(std::vector<LandingVerifier::Tensor> tensors, StripedReadOptions options);
  ~StripedRead();
  StripedRead(const StripedRead&) = delete;
  StripedRead& operator=(const StripedRead&) = delete;

  // Adds a source: `peer` (borrowed until this object is destroyed) holds tensor i at
  // spots[i]. `holds` (optional) says whether it serves tensor i now: a source still pulling,
  // whose answer grows while the read runs; null: every tensor. `fills` (optional): whether it
  // is filling tensor i now (will hold it soon). REQUIRES: spots.size() == the number of
  // tensors. Returns its index.
  size_t AddSource(Peer* peer, std::string name, std::vector<RemoteSpot> spots,
                   std::function<bool(size_t)> holds = nullptr,
                   std::function<bool(size_t)> fills = nullptr);

  // Reads what is missing from the live sources, round after round. OK once every tensor is
  // verified. Otherwise it returns when a source stopped taking part (so that the caller may
  // add others; the error of that round), when no live source is left (an error naming each
  // source), when the read was cancelled or ran out of time (Cancelled, DeadlineExceeded), or
  // when `read.pause` was set (Aborted: the caller adds sources and calls Run again).
  // Call again to continue: bytes that landed are never read twice unless they failed
  // verification.
  //
  // `read` gives the timeout (with start), stall timeout, cancel flag, chunk size and progress
  // callback (which sees bytes landed over the whole pull, across rounds); its on_piece is
  // ignored. With `read.chunk_bytes` set, `read.first_piece` counts pieces of the whole pull
  // (its tensors one after another): each round starts at the first missing piece from there,
  // so a reader keeps to its part of the model across rounds. `on_piece` (optional) is called after
  // each piece was recorded, from the thread that received it.
  Status Run(const ReadOptions& read, std::function<void(const ReadOp&)> on_piece = nullptr);

  // This reader's part of the model when `count` readers pulling it at once split it (a swarm):
  // the tensors whose first byte lies in the rank-th of `count` equal spans of the pull. Every
  // further round reads its part first from complete sources and leaves the others' parts to
  // them (PeerRead::own). count 0 (the default): no part.
  void SetPart(size_t rank, size_t count) {
    part_rank_ = rank;
    part_count_ = count;
  }

  bool complete();
  size_t live_sources() const;
  const std::vector<SourceShare>& sources() const { return shares_; }
  // Bytes landed and verified so far.
  uint64_t verified_bytes();
  // The tensors' checksums (valid once complete).
  std::vector<uint64_t> checksums() { return verifier_.checksums(); }
  // Checksumming still running after the last round's bytes had landed.
  absl::Duration verify_tail() const { return verify_tail_; }

 private:
  struct Source {
    Peer* peer;
    std::vector<RemoteSpot> spots;
    std::unique_ptr<std::atomic<bool>> drop;
    std::function<bool(size_t)> holds;  // null: every tensor
    std::function<bool(size_t)> fills;  // null: none
  };
  // Whether `holds` covers every tensor that local bytes [local, local + length) belong to.
  bool Covers(const std::function<bool(size_t)>& holds, const void* local, uint64_t length) const;
  // Whether `fills` is true for any of them.
  bool Touches(const std::function<bool(size_t)>& fills, const void* local, uint64_t length) const;
  // Calls `f` with the index of each tensor those bytes belong to while it returns true; false
  // when it returned false.
  bool ForEachTensor(const void* local, uint64_t length,
                     const std::function<bool(size_t)>& f) const;
  // Bytes [begin, end) of local memory that landed in this pull from `source`.
  struct Landed {
    uintptr_t begin;
    uintptr_t end;
    size_t source;
  };
  // A tensor whose failed bytes came from several sources: which ones, and its bytes then.
  struct Suspect {
    size_t tensor;
    std::vector<Landed> pieces;
    std::string bad_bytes;
  };

  Status Round();
  // Ranges of tensor `i` (offsets within it) that have not landed.
  std::vector<std::pair<uint64_t, uint64_t>> Missing(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The verifier found tensor `i` corrupt (a checksum thread).
  void OnMismatch(size_t i);
  // Forgets the landed bytes of tensor `i`; returns the pieces that overlapped it, clipped.
  std::vector<Landed> Forget(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Blame(size_t source, const std::string& why);
  // `size` bytes landed at `local`, in host memory (options_.to_host for device memory).
  StatusOr<std::string> HostCopy(const void* local, uint64_t size) const;
  // Re-reads each suspect tensor from one source at a time; blames sources that served bytes
  // that differ from the verified copy.
  void Resolve();
  void CountShares();

  // Whether tensor `i` is in this reader's part (SetPart).
  bool InPart(size_t i) const;

  const std::vector<LandingVerifier::Tensor> tensors_;
  std::vector<uint64_t> position_;  // of each tensor in the pull (tied ones: the first's)
  std::vector<bool> first_of_tie_;  // not tied to an earlier tensor: read and counted
  uint64_t pull_bytes_ = 0;         // the tensors' bytes, tied ones once
  size_t part_rank_ = 0;
  size_t part_count_ = 0;
  // (start address, end address, tensor index), by start address.
  std::vector<std::tuple<uintptr_t, uintptr_t, size_t>> by_address_;
  const StripedReadOptions options_;
  ReadOptions read_;                             // of the current Run
  std::function<void(const ReadOp&)> on_piece_;  // of the current Run
  LandingVerifier verifier_;
  std::vector<Source> sources_;
  std::vector<SourceShare> shares_;
  absl::Duration verify_tail_;

  absl::Mutex mu_;
  std::vector<Landed> landed_ ABSL_GUARDED_BY(mu_);  // sorted by begin after each round
  std::vector<Suspect> suspects_ ABSL_GUARDED_BY(mu_);
  std::map<size_t, std::string> blamed_ ABSL_GUARDED_BY(mu_);  // source -> why
};

}  // namespace ferry::weights

#endif  // FERRY_FLOWS_STRIPED_READ_H_
