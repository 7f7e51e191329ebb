// staging_bench: pipelined staging (src/transfer/staging/) against the same link without it, in
// the same run, on the host fake device (cuda/testing/host_device.h: copies run on their own
// thread at a set rate), so the overlap of the wire and the copies is measured without a GPU.
//
// Workloads:
//   link        --bytes over an in-process link of --link-rate bytes/s (FakeWire, --streams
//               threads sharing it) into host memory: the baseline
//   copy        --bytes copied host-to-device alone, in --slot-bytes copies at --copy-rate
//   staged      the link's read landing in (fake) device memory through StagedConnection with
//               --slots slots of --slot-bytes: about max(link, copy) when they overlap, not
//               link + copy ("serial_seconds")
//   tcp_host    ferry's TCP transport on loopback, host region into host memory (baseline)
//   tcp_staged  the same connection count, a device region served through StagedSource into a
//               device destination through StagedConnection (copies unthrottled)
//
// Output: one JSON object per line and run:
//   {"workload":..., "bytes":..., "seconds":..., "gbps":..., "baseline":..., "baseline_gbps":...,
//    "ratio":..., ...} (gbps = 1e9 bytes/s). Every staged read is checked once.
//
//   staging_bench [--bytes 268435456] [--link-rate 1e9] [--copy-rate 1e9] [--slots 4]
//                 [--slot-bytes 4194304] [--chunk 4194304] [--streams 4] [--repeat 3] [--smoke]

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "baselines.h"
#include "cuda/testing/host_device.h"
#include "transfer/read_core.h"
#include "transfer/staging/staged_connection.h"
#include "transfer/staging/staging_test_util.h"
#include "transfer/tcp/tcp_peer.h"
#include "transfer/tcp/tcp_server.h"

namespace {

using ::ferry::bench::Buffer;
using ::ferry::bench::Now;
using ::ferry::internal::PeerConnection;
using ::ferry::internal::cuda::testing::HostDevice;
using ::ferry::internal::cuda::testing::HostDeviceOptions;
namespace staging = ::ferry::internal::staging;
namespace tcp = ::ferry::internal::tcp;

struct Flags {
  uint64_t bytes = 256ull << 20;
  double link_rate = 1e9;
  double copy_rate = 1e9;
  int slots = 4;
  uint64_t slot_bytes = 4ull << 20;
  uint64_t chunk = 4ull << 20;
  int streams = 4;
  int repeat = 3;
  bool smoke = false;
};

void Fill(char* p, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) p[i] = static_cast<char>((i * 131) ^ (i >> 12));
}

// Seconds for one read of `bytes` from region `region` at offset 0 into `dst`; exits on failure.
double Read(PeerConnection& conn, uint32_t region, char* dst, uint64_t bytes, uint64_t chunk) {
  const ferry::internal::ReadConnection c{
      &conn, "bench source", {ferry::ReadOp{region, 0, dst, bytes}}};
  const double t0 = Now();
  ferry::Status s = ferry::internal::RunRead({&c, 1}, chunk, ferry::ReadOptions{});
  const double t = Now() - t0;
  if (!s.ok()) {
    std::fprintf(stderr, "staging_bench: read failed: %s\n", std::string(s.message()).c_str());
    std::exit(1);
  }
  return t;
}

void Check(const char* got, const char* want, uint64_t n, const char* what) {
  if (std::memcmp(got, want, n) != 0) {
    std::fprintf(stderr, "staging_bench: %s delivered wrong bytes\n", what);
    std::exit(1);
  }
}

void Print(const char* workload, const Flags& f, double seconds, const char* baseline,
           double baseline_seconds, const std::string& extra) {
  const double gbps = f.bytes / seconds / 1e9;
  const double base = baseline_seconds > 0 ? f.bytes / baseline_seconds / 1e9 : 0;
  std::printf(
      "{\"workload\":\"%s\",\"bytes\":%llu,\"slots\":%d,\"slot_bytes\":%llu,\"streams\":%d,"
      "\"seconds\":%.4f,\"gbps\":%.3f,\"baseline\":\"%s\",\"baseline_gbps\":%.3f,\"ratio\":%.3f%s}"
      "\n",
      workload, static_cast<unsigned long long>(f.bytes), f.slots,
      static_cast<unsigned long long>(f.slot_bytes), f.streams, seconds, gbps, baseline, base,
      base > 0 ? gbps / base : 0.0, extra.c_str());
  std::fflush(stdout);
}

void RunFake(const Flags& f, Buffer& source, Buffer& dst) {
  for (int r = 0; r < f.repeat; ++r) {
    // link: no staging.
    staging::testing::FakeWire wire(source.data(), f.streams, 4);
    wire.bytes_per_second = static_cast<uint64_t>(f.link_rate);
    const double link = Read(wire, 0, dst.data(), f.bytes, f.chunk);
    Check(dst.data(), source.data(), f.bytes, "link");
    Print("link", f, link, "link", link, "");

    // copy alone.
    HostDeviceOptions options;
    options.bytes_per_second = static_cast<uint64_t>(f.copy_rate);
    HostDevice device(options);
    double copy = 0;
    {
      auto stream = device.CreateStream();
      const double t0 = Now();
      for (uint64_t off = 0; off < f.bytes; off += f.slot_bytes) {
        const uint64_t n = std::min(f.slot_bytes, f.bytes - off);
        (void)(*stream)->ToDevice(HostDevice::Address(dst.data() + off), source.data() + off, n);
      }
      auto marker = (*stream)->Record();
      (void)(*stream)->WaitUntil(*marker, absl::InfiniteFuture());
      copy = Now() - t0;
    }
    Print("copy", f, copy, "link", link, "");

    // staged.
    std::memset(dst.data(), 0, f.bytes);
    auto inner = std::make_unique<staging::testing::FakeWire>(source.data(), f.streams, 4);
    inner->bytes_per_second = static_cast<uint64_t>(f.link_rate);
    staging::StagingOptions so;
    so.slots = f.slots;
    so.slot_bytes = f.slot_bytes;
    auto conn = staging::StagedConnection::Create(std::move(inner), &device, so, "bench source");
    if (!conn.ok()) {
      std::fprintf(stderr, "staging_bench: %s\n", std::string(conn.status().message()).c_str());
      std::exit(1);
    }
    const double staged = Read(**conn, 0, dst.data(), f.bytes, f.chunk);
    Check(dst.data(), source.data(), f.bytes, "staged");
    const staging::StagingStats st = (*conn)->stats();
    char extra[256];
    std::snprintf(extra, sizeof(extra),
                  ",\"link_rate\":%.0f,\"copy_rate\":%.0f,\"serial_seconds\":%.4f,"
                  "\"landed_while_copying\":%llu,\"pieces\":%llu",
                  f.link_rate, f.copy_rate, link + copy,
                  static_cast<unsigned long long>(st.landed_while_copying),
                  static_cast<unsigned long long>(st.pieces_staged));
    Print("staged", f, staged, "link", link, extra);
  }
}

void RunTcp(const Flags& f, Buffer& source, Buffer& dst) {
  HostDevice source_device;
  HostDevice target_device;
  const std::string secret(tcp::kSecretBytes, 'b');
  tcp::TcpServerLimits limits;
  limits.staging_slots = f.slots;
  limits.staging_slot_bytes = f.slot_bytes;
  auto server = tcp::TcpServer::Create(tcp::HostPort{"127.0.0.1", 0}, 0, secret, limits);
  if (!server.ok() || !(*server)->AddRegion(0, source.data(), f.bytes).ok() ||
      !(*server)->AddRegion(1, source.data(), f.bytes, &source_device).ok()) {
    std::fprintf(stderr, "staging_bench: cannot start the TCP server\n");
    std::exit(1);
  }
  tcp::TcpPeerOptions po;
  po.streams = f.streams;
  auto dial = [&] {
    auto peer = tcp::TcpPeerConnection::Create(tcp::HostPort{"127.0.0.1", (*server)->port()},
                                               secret, po, "bench source");
    if (!peer.ok()) {
      std::fprintf(stderr, "staging_bench: %s\n", std::string(peer.status().message()).c_str());
      std::exit(1);
    }
    return std::move(*peer);
  };
  for (int r = 0; r < f.repeat; ++r) {
    auto host = dial();
    const double base = Read(*host, 0, dst.data(), f.bytes, f.chunk);
    Check(dst.data(), source.data(), f.bytes, "tcp_host");
    Print("tcp_host", f, base, "tcp_host", base, "");
    std::memset(dst.data(), 0, f.bytes);
    staging::StagingOptions so;
    so.slots = f.slots;
    so.slot_bytes = f.slot_bytes;
    auto conn = staging::StagedConnection::Create(dial(), &target_device, so, "bench source");
    if (!conn.ok()) std::exit(1);
    const double staged = Read(**conn, 1, dst.data(), f.bytes, f.chunk);
    Check(dst.data(), source.data(), f.bytes, "tcp_staged");
    Print("tcp_staged", f, staged, "tcp_host", base, "");
  }
  (*server)->Stop();
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{"pipelined staging against the same link without it (host fake device)"};
  app.add_option("--bytes", f.bytes, "bytes per read");
  app.add_option("--link-rate", f.link_rate, "the in-process link's bytes per second");
  app.add_option("--copy-rate", f.copy_rate, "the fake device's copy bytes per second");
  app.add_option("--slots", f.slots, "staging slots");
  app.add_option("--slot-bytes", f.slot_bytes, "bytes per staging slot");
  app.add_option("--chunk", f.chunk, "the read's chunk_bytes");
  app.add_option("--streams", f.streams, "link threads / TCP streams");
  app.add_option("--repeat", f.repeat, "runs per workload");
  app.add_flag("--smoke", f.smoke, "tiny sizes: checks the bench still runs");
  CLI11_PARSE(app, argc, argv);
  if (f.smoke) {
    f.bytes = 16ull << 20;
    f.repeat = 1;
  }
  Buffer source(f.bytes);
  Buffer dst(f.bytes);
  Fill(source.data(), f.bytes);
  RunFake(f, source, dst);
  RunTcp(f, source, dst);
  return 0;
}
