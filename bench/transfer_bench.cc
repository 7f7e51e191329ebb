// transfer_bench: throughput of ferry's transfer engine against the baselines it must approach,
// all measured in the same run on the same buffers.
//
// Workloads (--transport picks tcp, ucx, shm or all):
//   memcpy       one thread copying --bytes between two pre-faulted buffers (the memory bound)
//   raw_socket   --streams TCP connections on loopback, a sender thread per stream sending its
//                share from a pre-faulted buffer and a receiver thread per stream recv()ing it
//                into a pre-faulted buffer (the kernel-TCP bound)
//   tcp          ferry's TCP transport, --streams streams: reads --bytes, split into --ops ops,
//                from a source engine in a child process (forked before any thread starts)
//                into a pre-faulted destination region; baseline: raw_socket of the same repeat
//   ucx          the same over the UCX transport; skipped with a reason when UCX is unavailable
//   shm          the same over the native shared-memory transport, once per --shm-threads value,
//                with a fresh connection per repeat (so every repeat maps the source's region
//                anew and pays its page faults, as a new replica does); baseline: memcpy
//
// --regions N has the source serve --bytes as N regions (a PyTorch model is one region per
// storage), read as one op each (--ops is then N): what opening many regions costs a read.
//
// Output: one JSON object per line and run on stdout:
//   {"workload":..., "transport":..., "bytes":..., "regions":..., "ops":..., "streams":...,
//    "seconds":..., "gbps":..., "baseline":"raw_socket"|"memcpy", "baseline_gbps":...,
//    "ratio":...}
// (gbps = 1e9 bytes per second). Every read is checked against the source's pattern once.
//
//   transfer_bench [--bytes 1073741824] [--streams 4] [--chunk 8388608] [--ops 10]
//                  [--transport tcp|ucx|shm|all] [--repeat 3] [--socket-buffer 0]
//                  [--max-inflight 16] [--shm-threads 1,2,4] [--regions 1] [--smoke]
// ("streams" is the copy thread count for shm.)

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "baselines.h"
#include "ferry/transfer.h"

namespace {

using ::ferry::bench::Buffer;
using ::ferry::bench::Now;
using ::ferry::bench::RawSockets;

struct Flags {
  uint64_t bytes = 1ull << 30;
  int streams = 4;
  uint64_t chunk = 8ull << 20;
  int ops = 10;
  std::string transport = "all";
  int repeat = 3;
  int socket_buffer = 0;
  int max_inflight = 16;
  std::vector<int> shm_threads = {1, 2, 4};
  int regions = 1;
  bool smoke = false;
};

uint8_t Pattern(uint64_t i) { return static_cast<uint8_t>((i * 131) ^ (i >> 8) ^ 0x5a); }

void PrintLine(const char* workload, const char* transport, const Flags& f, int ops, int streams,
               double seconds, const char* baseline, double baseline_gbps) {
  const double gbps = static_cast<double>(f.bytes) / seconds / 1e9;
  std::printf(
      "{\"workload\":\"%s\",\"transport\":\"%s\",\"bytes\":%llu,\"regions\":%d,\"ops\":%d,"
      "\"streams\":%d,"
      "\"chunk\":%llu,\"seconds\":%.6f,\"gbps\":%.3f,\"baseline\":\"%s\",\"baseline_gbps\":%.3f,"
      "\"ratio\":%.3f}\n",
      workload, transport, static_cast<unsigned long long>(f.bytes), f.regions, ops, streams,
      static_cast<unsigned long long>(f.chunk), seconds, gbps, baseline, baseline_gbps,
      gbps / baseline_gbps);
  std::fflush(stdout);
}

void PrintSkip(const char* workload, const std::string& reason) {
  std::string escaped;
  for (char c : reason) {
    if (c == '"' || c == '\\') escaped += '\\';
    escaped += (c == '\n' ? ' ' : c);
  }
  std::printf("{\"workload\":\"%s\",\"skipped\":\"%s\"}\n", workload, escaped.c_str());
  std::fflush(stdout);
}

// ---- the source engine, in a child process ----

struct Child {
  pid_t pid = -1;
  int control_fd = -1;  // closing it ends the child
  std::string blob;
  std::vector<uint32_t> region_ids;  // --regions of them, in address order of the bytes
};

// Region i of --regions: [RegionStart(i), RegionStart(i + 1)) of the bytes.
uint64_t RegionStart(const Flags& f, int i) {
  return i == f.regions ? f.bytes : f.bytes / f.regions * i;
}

bool ReadFull(int fd, void* buf, size_t len) {
  char* p = static_cast<char*>(buf);
  while (len > 0) {
    ssize_t n = ::read(fd, p, len);
    if (n <= 0) return false;
    p += n;
    len -= n;
  }
  return true;
}

Child StartSource(const Flags& f, bool with_ucx, bool with_shm) {
  int blob_pipe[2], control_pipe[2];
  if (::pipe(blob_pipe) != 0 || ::pipe(control_pipe) != 0) std::exit(1);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(blob_pipe[0]);
    ::close(control_pipe[1]);
    ferry::TransferEngineOptions o;
    o.name = "transfer_bench source";
    o.enable_ucx = o.ucx_without_rdma = with_ucx;
    o.enable_shm = with_shm;  // its allocator then backs the region (memfd) for every transport
    o.ucx_net_devices = "lo";
    o.tcp_listen = "127.0.0.1:0";
    o.tcp_socket_buffer = f.socket_buffer;
    auto engine = ferry::TransferEngine::Create(o);
    if (!engine.ok()) {
      std::fprintf(stderr, "source engine: %s\n", std::string(engine.status().message()).c_str());
      ::_exit(2);
    }
    std::vector<std::unique_ptr<ferry::Region>> regions;
    std::vector<uint32_t> ids;
    for (int r = 0; r < f.regions; ++r) {
      const uint64_t start = RegionStart(f, r);
      auto region = (*engine)->AllocateRegion(RegionStart(f, r + 1) - start);
      if (!region.ok()) ::_exit(3);
      char* p = static_cast<char*>((*region)->data());
      for (uint64_t i = 0; i < (*region)->size(); ++i) p[i] = static_cast<char>(Pattern(start + i));
      ids.push_back((*region)->id());
      regions.push_back(*std::move(region));
    }
    std::string blob = (*engine)->ExportBlob();
    uint32_t len = blob.size();
    const ssize_t id_bytes = ids.size() * sizeof(uint32_t);
    if (::write(blob_pipe[1], &len, 4) != 4 || ::write(blob_pipe[1], blob.data(), len) != len ||
        ::write(blob_pipe[1], ids.data(), id_bytes) != id_bytes) {
      ::_exit(4);
    }
    char c;
    while (::read(control_pipe[0], &c, 1) > 0) {
    }
    ::_exit(0);
  }
  ::close(blob_pipe[1]);
  ::close(control_pipe[0]);
  Child child;
  child.pid = pid;
  child.control_fd = control_pipe[1];
  uint32_t len = 0;
  if (!ReadFull(blob_pipe[0], &len, 4)) {
    std::fprintf(stderr, "the source child failed to start\n");
    std::exit(1);
  }
  child.blob.resize(len);
  child.region_ids.resize(f.regions);
  if (!ReadFull(blob_pipe[0], child.blob.data(), len) ||
      !ReadFull(blob_pipe[0], child.region_ids.data(), f.regions * sizeof(uint32_t))) {
    std::fprintf(stderr, "the source child failed to describe its regions\n");
    std::exit(1);
  }
  ::close(blob_pipe[0]);
  return child;
}

void StopSource(Child& child) {
  ::close(child.control_fd);
  ::waitpid(child.pid, nullptr, 0);
}

std::vector<ferry::ReadOp> SplitOps(const Flags& f, const Child& child, char* dst) {
  std::vector<ferry::ReadOp> ops;
  if (f.regions > 1) {
    for (int r = 0; r < f.regions; ++r) {
      const uint64_t start = RegionStart(f, r);
      ops.push_back({child.region_ids[r], 0, dst + start, RegionStart(f, r + 1) - start});
    }
    return ops;
  }
  const uint64_t piece = f.bytes / f.ops;
  for (int i = 0; i < f.ops; ++i) {
    const uint64_t off = piece * i;
    const uint64_t len = i + 1 == f.ops ? f.bytes - off : piece;
    ops.push_back({child.region_ids[0], off, dst + off, len});
  }
  return ops;
}

bool Verify(const char* dst, uint64_t bytes) {
  for (uint64_t i = 0; i < bytes; ++i) {
    if (static_cast<uint8_t>(dst[i]) != Pattern(i)) {
      std::fprintf(stderr, "mismatch at byte %llu\n", static_cast<unsigned long long>(i));
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{"ferry transfer engine throughput against memcpy and raw sockets"};
  app.add_option("--bytes", f.bytes, "bytes per run");
  app.add_option("--streams", f.streams, "TCP streams (raw and ferry)");
  app.add_option("--chunk", f.chunk, "ferry chunk_bytes");
  app.add_option("--ops", f.ops, "ops the total is split into");
  app.add_option("--transport", f.transport, "tcp, ucx, shm or all")
      ->check(CLI::IsMember({"tcp", "ucx", "shm", "all"}));
  app.add_option("--repeat", f.repeat, "runs per workload");
  app.add_option("--socket-buffer", f.socket_buffer, "SO_SNDBUF/SO_RCVBUF; 0: autotuning");
  app.add_option("--max-inflight", f.max_inflight, "ferry max_inflight");
  app.add_option("--shm-threads", f.shm_threads, "shm copy thread counts to run")
      ->delimiter(',')
      ->check(CLI::Range(1, 16));
  app.add_option("--regions", f.regions,
                 "regions the source serves the bytes as, each read as one op (--ops is then "
                 "their count)")
      ->check(CLI::Range(1, 100000));
  app.add_flag("--smoke", f.smoke, "tiny sizes: checks the bench still runs");
  CLI11_PARSE(app, argc, argv);
  if (f.smoke) {
    f.bytes = 8 << 20;
    f.chunk = 1 << 20;
    f.repeat = 1;
    f.ops = 300;
    f.streams = 2;
  }
  if (f.regions > 1) f.ops = f.regions;
  if (f.ops < 1 || f.streams < 1 || f.repeat < 1 || f.bytes < static_cast<uint64_t>(f.ops)) {
    std::fprintf(stderr, "--ops, --streams, --repeat must be >= 1 and --bytes >= --ops\n");
    return 1;
  }
  const bool want_tcp = f.transport == "tcp" || f.transport == "all";
  const bool want_ucx = f.transport == "ucx" || f.transport == "all";
  const bool want_shm = f.transport == "shm" || f.transport == "all";

  // Fork the source before this process starts any thread.
  Child child = StartSource(f, want_ucx, want_shm);

  Buffer src(f.bytes);
  for (uint64_t i = 0; i < f.bytes; i += 4096) src.data()[i] = 1;
  Buffer dst_raw(f.bytes);

  int failures = 0;
  double memcpy_gbps = 0;
  for (int r = 0; r < f.repeat; ++r) {
    const double s = ferry::bench::MemcpySeconds(src, dst_raw, f.bytes);
    memcpy_gbps = std::max(memcpy_gbps, f.bytes / s / 1e9);
    PrintLine("memcpy", "none", f, 1, 1, s, "memcpy", f.bytes / s / 1e9);
  }

  RawSockets raw(f.streams, f.socket_buffer);
  auto run_engine = [&](ferry::TransportKind kind, const char* name, int shm_threads) {
    ferry::TransferEngineOptions o;
    o.name = "transfer_bench target";
    o.enable_ucx = o.ucx_without_rdma = kind == ferry::TransportKind::kUcx;
    o.enable_tcp = kind == ferry::TransportKind::kTcp;
    o.enable_shm = kind == ferry::TransportKind::kShm;
    o.shm_copy_threads = shm_threads;
    o.ucx_net_devices = "lo";
    o.tcp_listen = "127.0.0.1:0";
    o.tcp_streams = f.streams;
    o.tcp_socket_buffer = f.socket_buffer;
    o.chunk_bytes = f.chunk;
    o.max_inflight = f.max_inflight;
    auto engine = ferry::TransferEngine::Create(o);
    if (!engine.ok()) return PrintSkip(name, std::string(engine.status().message()));
    auto dst = (*engine)->AllocateRegion(f.bytes);
    if (!dst.ok()) return PrintSkip(name, std::string(dst.status().message()));
    auto peer = (*engine)->Connect(child.blob, kind);
    if (!peer.ok()) return PrintSkip(name, std::string(peer.status().message()));
    char* out = static_cast<char*>((*dst)->data());
    const bool shm = kind == ferry::TransportKind::kShm;
    for (int r = 0; r < f.repeat; ++r) {
      const double raw_s = shm ? 0 : raw.Seconds(src, dst_raw, f.bytes);
      if (shm && r > 0) {
        // A new connection maps the region anew: every repeat is a first pass.
        (*peer).reset();
        peer = (*engine)->Connect(child.blob, kind);
        if (!peer.ok()) return PrintSkip(name, std::string(peer.status().message()));
      }
      const double t0 = Now();
      ferry::Status s = (*peer)->Read(SplitOps(f, child, out), absl::Seconds(600));
      const double seconds = Now() - t0;
      if (!s.ok()) {
        std::fprintf(stderr, "%s read failed: %s\n", name, std::string(s.message()).c_str());
        ++failures;
        return;
      }
      if (r == 0 && !Verify(out, f.bytes)) {
        ++failures;
        return;
      }
      if (kind == ferry::TransportKind::kTcp) {
        PrintLine(name, name, f, f.ops, f.streams, seconds, "raw_socket", f.bytes / raw_s / 1e9);
      } else {
        PrintLine(name, name, f, f.ops, shm ? shm_threads : 1, seconds, "memcpy", memcpy_gbps);
      }
    }
  };
  if (want_tcp) run_engine(ferry::TransportKind::kTcp, "tcp", 1);
  if (want_ucx) run_engine(ferry::TransportKind::kUcx, "ucx", 1);
  if (want_shm) {
    for (int threads : f.shm_threads) run_engine(ferry::TransportKind::kShm, "shm", threads);
  }
  StopSource(child);
  return failures == 0 ? 0 : 1;
}
