// The target side of the native TCP transport: `streams` authenticated connections to one
// source, over which a read's pieces are spread and pipelined.
//
// Thread-safety: Execute is called by one thread at a time (the engine serializes reads); Close
// may be called from any thread, also during an Execute (which then fails).
#ifndef FERRY_TRANSFER_TCP_TCP_PEER_H_
#define FERRY_TRANSFER_TCP_TCP_PEER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "transfer/tcp/tcp_socket.h"
#include "transfer/transport.h"

namespace ferry::internal::tcp {

struct TcpPeerOptions {
  int streams = 4;
  int socket_buffer = 0;
  int max_inflight = 16;
  absl::Duration connect_timeout = absl::Seconds(10);
};

class TcpPeerConnection : public PeerConnection {
 public:
  // Dials `address` options.streams times and authenticates each connection with `secret`.
  // Unavailable naming the address when unreachable; PermissionDenied when the source refuses
  // the secret.
  static StatusOr<std::unique_ptr<TcpPeerConnection>> Create(const HostPort& address,
                                                             const std::string& secret,
                                                             const TcpPeerOptions& options,
                                                             std::string description);
  ~TcpPeerConnection() override = default;

  Status Execute(ChunkFeed& feed) override;
  void Close() override;

 private:
  TcpPeerConnection(std::vector<Fd> streams, const TcpPeerOptions& options, std::string description)
      : streams_(std::move(streams)), options_(options), description_(std::move(description)) {}

  const std::vector<Fd> streams_;
  const TcpPeerOptions options_;
  const std::string description_;
  std::atomic<bool> closed_{false};
  std::atomic<bool> broken_{false};
};

}  // namespace ferry::internal::tcp

#endif  // FERRY_TRANSFER_TCP_TCP_PEER_H_
