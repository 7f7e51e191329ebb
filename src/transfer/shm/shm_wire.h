// The shm transport's control protocol and socket plumbing. A target and a source on one host
// talk over an abstract-namespace unix SOCK_SEQPACKET socket (one message per packet, both ends
// built from the same sources, so native struct layout is the wire format):
//
//   target -> source  Hello{magic, version, secret}
//   source -> target  Reply{kHelloReply, code}                      (then closes unless OK)
//   target -> source  OpenRequest{region}
//   source -> target  Reply{kOpenReply, code, region, size} + a read-only fd (SCM_RIGHTS) if OK
//   source -> target  Reply{kRegionRemoved, region}                 (unsolicited, any time)
//
// Once a target holds a region's fd it maps it and copies on its own: no message per read.
//
// The same server also hands out exported regions (the CUDA IPC transport: device memory, one
// record per allocation behind the region, opaque to this layer):
//
//   target -> source  OpenRequest{region, kOpenExport}
//   source -> target  Reply{kExportReply, code, region, size, records} if OK followed by
//                     the records' bytes (SendBytes) and their descriptors (SendFds)
//   target -> source  OpenRequest{region, kClosedExport}  after a kRegionRemoved notice, once
//                     the target unmapped the region: the source may free it

#ifndef FERRY_TRANSFER_SHM_SHM_WIRE_H_
#define FERRY_TRANSFER_SHM_SHM_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "common/fd.h"
#include "ferry/status.h"

namespace ferry::internal::shm {

constexpr size_t kSecretBytes = 32;
constexpr char kMagic[8] = {'F', 'E', 'R', 'R', 'Y', 'S', 'H', 'M'};
constexpr uint32_t kVersion = 1;

struct Hello {
  char magic[8];
  uint32_t version;
  uint32_t reserved;
  char secret[kSecretBytes];
};

enum OpenWhat : uint32_t {
  kOpenMemfd = 0,     // a memfd region (the shm transport's own)
  kOpenExport = 1,    // an exported region (ShmServer::AddExport)
  kClosedExport = 2,  // the target no longer maps this exported region
};

struct OpenRequest {
  uint32_t region;
  uint32_t what;  // OpenWhat
};

enum ReplyType : uint32_t {
  kHelloReply = 1,
  kOpenReply = 2,
  kRegionRemoved = 3,
  kFdBatch = 4,      // one packet of SendFds
  kExportReply = 5,  // Reply.records: how many records follow
};

struct Reply {
  uint32_t type;
  uint32_t code;  // absl::StatusCode
  uint32_t region;
  uint32_t records;   // kExportReply: records that follow
  uint64_t size;      // kOpenReply: the region's bytes
  char message[200];  // NUL-terminated error text when code != 0
};

// Bound on one control round trip (handshake, opening a region).
constexpr absl::Duration kControlTimeout = absl::Seconds(10);

// The status a Reply carries (its code and message). Only the codes a source sends and a read
// may report pass (InvalidArgument, PermissionDenied, NotFound, Internal, Unavailable, DataLoss);
// any other code is DataLoss naming it: a hostile source cannot make a read look cancelled,
// timed out or paused, or carry a code absl does not define.
Status FromReply(const Reply& r);

// Connects to @socket_name and presents `secret` (kSecretBytes). `transport` ("shm") and
// `description` (the peer) name it in errors: InvalidArgument for a secret of the wrong size,
// Unavailable when nobody listens or the handshake fails, the source's code (PermissionDenied
// for a wrong secret) when it refuses.
StatusOr<Fd> Greet(const std::string& socket_name, const std::string& secret,
                   const std::string& transport, const std::string& description);

// A listening SOCK_SEQPACKET socket on the abstract name `name` (no leading NUL).
StatusOr<Fd> ListenAbstract(const std::string& name);
// A connected socket. Unavailable naming "@name" when nobody listens there (ECONNREFUSED,
// ENOENT: the source is gone, or lives in another network namespace or on another host).
StatusOr<Fd> ConnectAbstract(const std::string& name);

// Sends one packet (MSG_DONTWAIT | MSG_NOSIGNAL), with `pass_fd` attached when >= 0. False when
// it could not be sent whole at once (the peer is gone or not reading).
bool SendPacket(int fd, const void* data, size_t len, int pass_fd = -1);

enum class Recv { kOk, kEof, kTimeout, kError };
// Receives one packet of exactly `len` bytes, waiting until `deadline`; a passed descriptor, if
// any, goes to *received (closed when the caller does not ask for one). A packet of another
// size is kError with err = EPROTO.
Recv RecvPacket(int fd, void* data, size_t len, absl::Time deadline, Fd* received, int* err);

// Whether a target's connection over this protocol can run a read: FailedPrecondition naming
// `description` when it was closed (Connect again) or broken by an earlier failure (reconnect).
Status CheckConnectionUsable(bool closed, bool broken, const std::string& description);

// The regions named by the RegionRemoved notices waiting on a target's control socket (without
// blocking). Unavailable when the source closed the socket or it failed; DataLoss for any other
// message (a protocol error). Either error means the connection is broken.
StatusOr<std::vector<uint32_t>> ReadRemovalNotices(int control);

// Asks the source for `region` (OpenRequest{region, what}) and waits until `deadline` for its
// reply of type `reply_type`, adding the regions of RegionRemoved notices that arrive first to
// *removed; a descriptor passed with the reply goes to *received (may be null). The reply's
// own code is the caller's to read. Unavailable when the request cannot be sent or no reply
// comes; DataLoss for another reply (a protocol error). Either error means the connection is
// broken.
StatusOr<Reply> RequestRegion(int control, uint32_t region, uint32_t what, uint32_t reply_type,
                              absl::Time deadline, std::set<uint32_t>* removed, Fd* received);

// Requests a target keeps in flight on one control connection while opening several regions
// (OpenRegions): each costs the source's one thread a turn, not the target a round trip.
constexpr size_t kOpenWindow = 32;

// What a target does with the reply for one region in OpenRegions: checks its code, reads what
// follows it on the socket (an export's records and descriptors) and maps the region. Sets
// *broken, and returns the error, when the socket can no longer be trusted.
using OpenAnswer =
    std::function<Status(uint32_t region, const Reply& reply, Fd received, bool* broken)>;

// NotFound for `region`, which the source removed after the blob was exported.
Status RegionRemovedError(uint32_t region);

// Opens those of `regions` not `mapped` yet, in order, keeping up to kOpenWindow requests
// (OpenRequest{region, what}) in flight: a read over a source's thousand tensors pays about one
// round trip, not a thousand. A region in *removed fails (RegionRemovedError) without a request.
// Each reply (of type `reply_type`, within kControlTimeout of the one before, and before
// `deadline`) goes to `answer`, in order; RegionRemoved notices met on the way go to *removed.
// Returns the first failure once every region was answered, so one region's failure leaves
// the others mapped and the socket in step. A transport failure (as RequestRegion's), or an
// answer that sets *broken, ends it at once with *broken set: the connection is then broken.
Status OpenRegions(int control, const std::vector<uint32_t>& regions,
                   const std::function<bool(uint32_t)>& mapped, uint32_t what, uint32_t reply_type,
                   absl::Time deadline, std::set<uint32_t>* removed, const OpenAnswer& answer,
                   bool* broken);

// Largest packet SendBytes sends (well under a unix socket's default send buffer).
constexpr size_t kMaxBytesPerPacket = 64 << 10;

// Sends `bytes` as consecutive packets of at most kMaxBytesPerPacket, waiting for room until
// `deadline`. Unavailable when the peer is gone or stopped reading.
Status SendBytes(int sock, std::string_view bytes, absl::Time deadline);
// Receives exactly `size` bytes sent by one SendBytes call (at most `limit`: a bound on what a
// peer may make us allocate). DataLoss for packets that do not add up; DeadlineExceeded;
// Unavailable at end of stream.
StatusOr<std::string> RecvBytes(int sock, size_t size, size_t limit, absl::Time deadline);

// The kernel refuses a message carrying more descriptors than this (SCM_MAX_FD).
constexpr size_t kMaxFdsPerPacket = 253;

// The packet SendFds sends per batch, with `count` descriptors attached.
struct FdBatch {
  uint32_t type;   // kFdBatch
  uint32_t index;  // of this batch, from 0
  uint32_t count;  // descriptors attached to this packet (1..kMaxFdsPerPacket)
  uint32_t total;  // descriptors in the whole send
};

// Sends `fds` (any number; none is a no-op) as consecutive packets of at most kMaxFdsPerPacket
// descriptors each, waiting for room in the socket until `deadline`. Unavailable naming the
// batch when a packet could not be sent (the peer is gone, or stopped reading).
Status SendFds(int sock, const std::vector<int>& fds, absl::Time deadline);

// Packets for one SOCK_SEQPACKET socket, sent in order as the socket takes them and never
// waiting for room: a source serving many targets from one thread queues an export's reply,
// records and descriptors here and sends the rest as the target reads (SendBytes and SendFds
// are built on it). Descriptors are borrowed: they must stay open until their packet is sent.
class Outbox {
 public:
  // One packet of `len` bytes.
  void AddPacket(const void* data, size_t len);
  // What SendBytes sends: packets of at most kMaxBytesPerPacket.
  void AddBytes(std::string_view bytes);
  // What SendFds sends: FdBatch packets of at most kMaxFdsPerPacket descriptors (none: nothing).
  void AddFds(const std::vector<int>& fds);
  // Sends queued packets until the socket has no room or none is left (empty() says which).
  // Unavailable naming the packet when a send fails (the peer is gone).
  Status Flush(int sock);
  bool empty() const { return packets_.empty(); }
  // The next packet, for messages ("bytes 0..65535 of 200000").
  const std::string& next() const { return packets_.front().what; }

 private:
  struct Packet {
    std::string bytes;
    std::vector<int> fds;
    std::string what;
  };
  std::deque<Packet> packets_;
};

// Receives the `count` descriptors one SendFds call sent (the count came in an earlier message),
// waiting until `deadline`. Every descriptor received is owned by the result or closed: on
// failure (DeadlineExceeded, Unavailable at end of stream, DataLoss for a packet out of order or
// with the wrong number of descriptors) nothing leaks.
StatusOr<std::vector<Fd>> RecvFds(int sock, size_t count, absl::Time deadline);

}  // namespace ferry::internal::shm

#endif  // FERRY_TRANSFER_SHM_SHM_WIRE_H_
