// Reading a list of ranges from a peer under watch: in batches, with progress reports about ten
// times a second, an overall deadline, and a stall timeout that abandons a source which stopped
// delivering (hung, SIGSTOPped). Shared by the weight and artifact pullers.
#ifndef FERRY_TRANSFER_MONITORED_READ_H_
#define FERRY_TRANSFER_MONITORED_READ_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/time/time.h"
#include "ferry/status.h"
#include "ferry/transfer.h"

namespace ferry {

struct MonitoredReadOptions {
  // Limit for the whole read, measured from `start`.
  absl::Duration timeout = absl::Seconds(300);
  absl::Time start = absl::Now();
  // A batch during which no byte lands for this long is cancelled. Zero: only `timeout`.
  absl::Duration stall_timeout = absl::Seconds(15);
  // Called from a helper thread about ten times a second, and once with (total, total) at the
  // end of a successful read.
  std::function<void(uint64_t done, uint64_t total)> on_progress;
  // Ops are submitted in batches of about this many bytes (0: one batch), `batch_pause` apart.
  // For tests that must act while a transfer is under way.
  uint64_t batch_bytes = 0;
  absl::Duration batch_pause = absl::ZeroDuration();
};

// Reads `ops` (`total` bytes in all) through `peer`. The peer's error on failure;
// DeadlineExceeded "the transfer stalled: ..." when the stall timeout fired.
Status MonitoredRead(Peer& peer, std::vector<ReadOp> ops, uint64_t total,
                     const MonitoredReadOptions& options);

// Merges ops that continue each other both remotely and locally, so that the op count does not
// grow with the number of small adjacent pieces.
std::vector<ReadOp> CoalesceReadOps(std::vector<ReadOp> ops);

}  // namespace ferry

#endif  // FERRY_TRANSFER_MONITORED_READ_H_
