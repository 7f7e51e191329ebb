// ucx_probe: shared-memory pull throughput of the UCX transport between two local processes,
// beside single-thread memcpy measured in the same run.
//
// Workloads (one JSON line per pass):
//   memcpy        1 buffer -> 1 buffer, both pre-faulted, single thread (the baseline)
//   ucx_alloc     source region UCX-allocated (Allocate), source progress thread off and on
//   ucx_caller    source region is the source's own mmap (served in software), progress on
// Every UCX pass reads --bytes into one pre-faulted destination in --chunk pieces with
// --inflight in flight; pass 1 includes the target's first touch of the source's pages.
//
// Usage: ucx_probe [--bytes N] [--passes N] [--chunk N] [--inflight N] [--ucx NAME=VALUE]...
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "transfer/read_core.h"
#include "transfer/transport.h"
#include "transfer/ucx/ucx_transport.h"

namespace {

using ferry::internal::Allocation;
using ferry::internal::UcxTuning;

constexpr char kChildEnv[] = "FERRY_UCX_PROBE_CHILD";

void* MapPrefaulted(uint64_t n) {
  return ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1,
                0);
}

ferry::TransferEngineOptions Options(uint64_t chunk, int inflight) {
  ferry::TransferEngineOptions o;
  o.ucx_net_devices = "lo";
  o.ucx_without_rdma = true;
  o.chunk_bytes = chunk;
  o.max_inflight = inflight;
  return o;
}

// Source: "<alloc|caller>,<bytes>,<progress>,<fd>"; writes the blob, then waits for EOF on stdin.
[[noreturn]] void Child(const char* spec, const UcxTuning& base) {
  std::vector<std::string> f = absl::StrSplit(spec, ',');
  uint64_t bytes = 0;
  int progress = 0, fd = -1;
  if (f.size() != 4 || !absl::SimpleAtoi(f[1], &bytes) || !absl::SimpleAtoi(f[2], &progress) ||
      !absl::SimpleAtoi(f[3], &fd)) {
    std::_Exit(2);
  }
  UcxTuning tuning = base;
  tuning.progress_thread = progress != 0;
  auto t = ferry::internal::CreateUcxTransport(Options(8 << 20, 16), tuning);
  if (!t.ok()) std::_Exit(3);
  Allocation a;
  void* data = nullptr;
  if (f[0] == "alloc") {
    auto got = (*t)->Allocate(bytes, /*prefault=*/true);
    if (!got.ok()) std::_Exit(4);
    a = *got;
    data = a.data;
  } else {
    data = MapPrefaulted(bytes);
  }
  std::memset(data, 0x5A, bytes);
  if (!(*t)->AddRegion(0, data, bytes, ferry::MemoryKind::kHost, a.handle ? &a : nullptr).ok()) {
    std::_Exit(5);
  }
  ferry::v1::TransferBlob blob;
  auto* r = blob.add_regions();
  r->set_id(0);
  r->set_size(bytes);
  r->set_base_address(reinterpret_cast<uint64_t>(data));
  (*t)->Describe(&blob);
  const std::string wire = blob.SerializeAsString();
  const uint64_t len = wire.size();
  if (::write(fd, &len, 8) != 8 ||
      ::write(fd, wire.data(), wire.size()) != static_cast<ssize_t>(wire.size())) {
    std::_Exit(6);
  }
  char c;
  while (::read(0, &c, 1) > 0) {
  }
  std::_Exit(0);
}

double Gbps(uint64_t bytes, absl::Duration d) { return bytes / absl::ToDoubleSeconds(d) / 1e9; }

}  // namespace

int main(int argc, char** argv) {
  uint64_t bytes = 1ull << 30, chunk = 8 << 20;
  int passes = 2, inflight = 16;
  UcxTuning tuning;
  std::string self_args;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    bool ok = true;
    if (k == "--bytes")
      ok = absl::SimpleAtoi(v, &bytes);
    else if (k == "--passes")
      ok = absl::SimpleAtoi(v, &passes);
    else if (k == "--chunk")
      ok = absl::SimpleAtoi(v, &chunk);
    else if (k == "--inflight")
      ok = absl::SimpleAtoi(v, &inflight);
    else if (k == "--ucx") {
      std::pair<std::string, std::string> kv = absl::StrSplit(v, absl::MaxSplits('=', 1));
      tuning.extra_config.push_back(kv);
    } else
      ok = false;
    if (!ok) {
      std::fprintf(stderr, "ucx_probe: bad flag %s %s\n", k.c_str(), v.c_str());
      return 2;
    }
  }
  if (const char* spec = std::getenv(kChildEnv)) Child(spec, tuning);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  auto* dst = static_cast<uint8_t*>(MapPrefaulted(bytes));
  {
    auto* src = static_cast<uint8_t*>(MapPrefaulted(bytes));
    std::memset(src, 0x33, bytes);
    for (int p = 1; p <= passes; ++p) {
      const absl::Time t0 = absl::Now();
      std::memcpy(dst, src, bytes);
      std::printf("{\"workload\":\"memcpy\",\"pass\":%d,\"bytes\":%lu,\"gbps\":%.2f}\n", p,
                  (unsigned long)bytes, Gbps(bytes, absl::Now() - t0));
    }
    ::munmap(src, bytes);
  }

  struct Run {
    const char* mode;
    int progress;
  };
  for (const Run& run : {Run{"alloc", 0}, Run{"alloc", 1}, Run{"caller", 1}}) {
    int blob_pipe[2], hold[2];
    if (::pipe(blob_pipe) != 0 || ::pipe(hold) != 0) return 1;
    const std::string env =
        absl::StrCat(kChildEnv, "=", run.mode, ",", bytes, ",", run.progress, ",", blob_pipe[1]);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::dup2(hold[0], 0);
      ::close(hold[1]);
      ::close(blob_pipe[0]);
      char* envp[] = {const_cast<char*>(env.c_str()), nullptr};
      ::execve("/proc/self/exe", argv, envp);
      std::_Exit(127);
    }
    ::close(blob_pipe[1]);
    ::close(hold[0]);
    uint64_t len = 0;
    std::string wire;
    if (::read(blob_pipe[0], &len, 8) != 8) return 1;
    wire.resize(len);
    for (size_t got = 0; got < len;) {
      const ssize_t n = ::read(blob_pipe[0], wire.data() + got, len - got);
      if (n <= 0) return 1;
      got += n;
    }
    ferry::v1::TransferBlob blob;
    blob.ParseFromString(wire);
    {
      auto t = ferry::internal::CreateUcxTransport(Options(chunk, inflight), tuning);
      if (!t.ok()) {
        std::fprintf(stderr, "%s\n", std::string(t.status().message()).c_str());
        return 1;
      }
      const absl::Time c0 = absl::Now();
      auto peer = (*t)->Connect(blob, "probe source");
      std::printf("{\"workload\":\"ucx_connect\",\"mode\":\"%s\",\"ms\":%.1f}\n", run.mode,
                  absl::ToDoubleMilliseconds(absl::Now() - c0));
      if (!peer.ok()) {
        std::fprintf(stderr, "%s\n", std::string(peer.status().message()).c_str());
        return 1;
      }
      for (int p = 1; p <= passes; ++p) {
        const ferry::internal::ReadConnection connection{
            peer->get(), "ucx probe source", {ferry::ReadOp{0, 0, dst, bytes}}};
        const absl::Time t0 = absl::Now();
        const ferry::Status s =
            ferry::internal::RunRead({&connection, 1}, chunk, ferry::ReadOptions{});
        const absl::Duration d = absl::Now() - t0;
        std::printf(
            "{\"workload\":\"ucx_%s\",\"source_progress\":%d,\"pass\":%d,\"bytes\":%lu,"
            "\"chunk\":%lu,\"inflight\":%d,\"ok\":%s,\"gbps\":%.2f,\"check\":%s}\n",
            run.mode, run.progress, p, (unsigned long)bytes, (unsigned long)chunk, inflight,
            s.ok() ? "true" : "false", Gbps(bytes, d),
            dst[0] == 0x5A && dst[bytes - 1] == 0x5A ? "true" : "false");
        std::memset(dst, 0, 4096);
      }
      (*peer)->Close();
    }
    ::close(hold[1]);
    ::close(blob_pipe[0]);
    ::waitpid(pid, nullptr, 0);
  }
  return 0;
}
