// The native TCP Transport: a TcpServer for the source side, TcpPeerConnections for targets.
#include <openssl/rand.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "cuda/device_pool.h"
#include "transfer/tcp/tcp_peer.h"
#include "transfer/tcp/tcp_server.h"
#include "transfer/tcp/tcp_wire.h"
#include "transfer/transport.h"

namespace ferry::internal {

namespace {

using tcp::HostPort;

// Thread-safe (TcpServer is; the rest is immutable after Create).
class TcpTransport : public Transport {
 public:
  TcpTransport(const TransferEngineOptions& options, std::shared_ptr<cuda::DevicePool> devices,
               std::unique_ptr<tcp::TcpServer> server, std::string host, std::string secret)
      : options_(options),
        devices_(std::move(devices)),
        server_(std::move(server)),
        host_(std::move(host)),
        secret_(std::move(secret)) {}
  ~TcpTransport() override { Stop(); }

  TransportKind kind() const override { return TransportKind::kTcp; }

  Status AddRegion(uint32_t id, void* data, uint64_t size, MemoryKind kind,
                   const Allocation* allocation) override {
    if (kind == MemoryKind::kCuda) {
      // Device memory is served through pinned host slots (StagedSource): the wire is the same.
      auto device = devices_->ForAddress(reinterpret_cast<uint64_t>(data));
      if (!device.ok()) {
        return Status(
            device.status().code(),
            absl::StrCat("TCP region ", id, " (device memory): ", device.status().message()));
      }
      return server_->AddRegion(id, data, size, *device);
    }
    return server_->AddRegion(id, data, size);
  }
  void RemoveRegion(uint32_t id) override { server_->RemoveRegion(id); }
  double TakeLoad() override { return server_->TakeLoad(); }
  Status LimitRegion(uint32_t id, std::function<bool(uint64_t, uint64_t)> allowed) override {
    return server_->LimitRegion(id, std::move(allowed));
  }

  void Describe(ferry::v1::TransferBlob* blob) const override {
    server_->PublishWrites();
    ferry::v1::TcpInfo* info = blob->mutable_tcp();
    info->set_host(host_);
    info->set_port(server_->port());
    info->set_secret(secret_);
  }

  // TCP reaches any address the blob names (Connect says Unavailable when it cannot) and serves
  // every region: a source stages device memory through host memory before it sends.
  Status Reaches(const ferry::v1::TransferBlob&, bool) const override { return absl::OkStatus(); }
  Status Serves(const ferry::v1::RegionInfo&) const override { return absl::OkStatus(); }

  StatusOr<std::unique_ptr<PeerConnection>> Connect(const ferry::v1::TransferBlob& remote,
                                                    const std::string& description) override {
    if (!remote.has_tcp() || remote.tcp().port() == 0 || remote.tcp().port() > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("blob of ", description, " has no usable TCP section"));
    }
    tcp::TcpPeerOptions peer_options;
    peer_options.streams = options_.tcp_streams;
    peer_options.socket_buffer = options_.tcp_socket_buffer;
    peer_options.max_inflight = options_.max_inflight;
    HostPort address{remote.tcp().host(), static_cast<uint16_t>(remote.tcp().port())};
    FERRY_ASSIGN_OR_RETURN(auto conn, tcp::TcpPeerConnection::Create(address, remote.tcp().secret(),
                                                                     peer_options, description));
    return std::unique_ptr<PeerConnection>(std::move(conn));
  }

  void Stop() override { server_->Stop(); }

 private:
  const TransferEngineOptions options_;
  const std::shared_ptr<cuda::DevicePool> devices_;  // the engine's: GPUs of staged regions
  const std::unique_ptr<tcp::TcpServer> server_;
  const std::string host_;
  const std::string secret_;
};

}  // namespace

StatusOr<std::unique_ptr<Transport>> CreateTcpTransport(const TransferEngineOptions& options,
                                                        std::shared_ptr<cuda::DevicePool> devices) {
  if (devices == nullptr) {
    return absl::InvalidArgumentError("CreateTcpTransport: a DevicePool is required");
  }
  FERRY_ASSIGN_OR_RETURN(
      HostPort listen, tcp::ParseHostPort(options.tcp_listen, "TransferEngineOptions.tcp_listen"));
  std::string secret(tcp::kSecretBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(secret.data()), tcp::kSecretBytes) != 1) {
    return absl::InternalError("RAND_bytes failed to make the TCP transport's secret");
  }
  std::string host = options.advertise_host;
  if (host.empty()) host = listen.host;
  if (tcp::IsWildcardHost(host)) {
    char name[256] = {};
    if (::gethostname(name, sizeof(name) - 1) != 0) {
      return absl::InternalError(absl::StrCat("gethostname failed: ", ErrnoText(errno),
                                              "; set TransferEngineOptions.advertise_host"));
    }
    host = name;
  }
  tcp::TcpServerLimits limits;
  limits.upload_bytes_per_second = options.max_upload_rate;
  FERRY_ASSIGN_OR_RETURN(auto server,
                         tcp::TcpServer::Create(listen, options.tcp_socket_buffer, secret, limits));
  return std::unique_ptr<Transport>(new TcpTransport(options, std::move(devices), std::move(server),
                                                     std::move(host), std::move(secret)));
}

}  // namespace ferry::internal
