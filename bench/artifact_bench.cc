// artifact_bench: compile-cache artifacts on a cache-like tree (sealing, snapshotting, the whole
// peer-to-peer pull and install), against baselines measured in the same run on the same
// machine and filesystem.
//
// The tree: about --size bytes under --dir, laid out like a Triton cache: half in many small
// files (<52-char hash>/<kernel>.{json,cubin,ptx,ttir,ttgir,llir} and __grp__<kernel>.json,
// 1-64 KiB each; about 24,000 files for 1 GiB), half in a few large ones (64-200 MiB each,
// 4 for 1 GiB). Pseudo-random contents. Written once, then sync(2)ed, so the page cache holds it
// (warm) and no writeback is pending when the clocks start.
//
// Workloads (each timed --repeat times; the median is reported, with every run):
//   crc32c     artifacts::Crc32c (what sealing and pulling call), Crc32cHardware (SSE4.2) and
//              Crc32cPortable over --crc-bytes in pre-faulted memory, one thread: GB/s per core.
//              Baseline: one memcpy of the same bytes between pre-faulted buffers.
//   read_tree  (baseline) walk the tree and read every file once (open, read into an 8 MiB
//              buffer, close), one thread, page cache warm.
//   seal       artifacts::SealDirectory(tree): walk, read, CRC32C per chunk and file. Ratio to
//              read_tree.
//   snapshot   artifacts::SnapshotDirectory(tree) into fresh anonymous memory (what `ferry
//              artifact publish` does before serving). Ratio to read_tree.
//   cp         (baseline) `cp -a TREE DEST` (the real command, fresh DEST beside the tree), then
//              syncfs(2) of DEST's filesystem (what `sync -f DEST` does): cp alone and cp + sync.
//   install    the install alone, from the snapshot in memory (no transfer, no CRC): the
//              node lock, StagedInstall::Create, CreateFiles, Write of every file, Commit
//              (makes the stage durable, then the rename). Each phase timed. What-ifs
//              (--install-variants, on by default): every staged file fsynced before Commit, one
//              after another (serial_fsync_first) or from 16 threads (parallel_fsync_first).
//   pull       a real ferry-server and a `ferry artifact publish TREE --kind triton --signing-key
//              K` child; this process runs artifacts::PullArtifact (trusting K, force, a fresh
//              --into and state dir each run) per --transport. Reported: total, the puller's
//              transfer (read + verify + stage) and install (commit) times, the rest (lock,
//              discovery, manifest, connect, creating the staged files) as setup. Ratios to
//              cp + sync (both durable) and to cp alone. Last, once per repeat over the first
//              transport, the same pull into a directory that already holds the tree (a cache
//              being replaced: Commit exchanges the trees, then removes the old one).
//
// Before every timed cp, install and pull the bench calls sync(2) (untimed), so no run pays for
// another's writeback; after it, the copy's pages are dropped from the page cache (untimed), so
// memory does not fill up with copies (the tree itself stays cached). Every copy is kept (on a
// distinct path) until the bench exits: deleting tens of thousands of files makes the next
// creations on ext4 without a journal CPU-bound for a minute or more (the allocator skips recently
// deleted inodes, `recently_deleted()` in fs/ext4/ialloc.c), so a run that deleted the previous
// run's copy would pay for it. Leave a minute between bench runs for the same reason. --size 1GiB
// with --repeat 3 needs about 20 GiB of free space. cp, install and pull alternate within each
// repeat so they see the same machine.
//
// Output: one JSON object per line on stdout (workloads above, plus "tree" and "machine" with the
// load average before and after); a summary table on stderr.
//
//   artifact_bench [--size 1GiB] [--repeat 3] [--transport shm,tcp] [--dir /tmp]
//                  [--crc-bytes 256MiB] [--seed 1] [--smoke]
// --smoke: 8 MiB tree, one repeat, 16 MiB CRC buffer, and every pulled and installed tree is
// compared byte for byte with the original (exit 1 on any difference).
#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "artifacts/crc32c.h"
#include "artifacts/install.h"
#include "artifacts/install_lock.h"
#include "artifacts/kinds.h"
#include "artifacts/manifest.h"
#include "artifacts/signing.h"
#include "baselines.h"
#include "bench_cli.h"
#include "common/byte_size.h"
#include "common/child_process.h"
#include "common/server_process.h"
#include "ferry/metadata_client.h"
#include "ferry/transfer.h"
#include "flows/artifact_puller.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
namespace art = ::ferry::artifacts;
using ::ferry::bench::Buffer;
using ::ferry::bench::Check;
using ::ferry::bench::Die;
using ::ferry::bench::Median;
using ::ferry::bench::Must;
using ::ferry::bench::Now;
using ::ferry::bench::Print;

constexpr char kModel[] = "bench/artifact";
constexpr char kKind[] = "triton";

struct Flags {
  std::string size = "1GiB";
  std::string crc_bytes = "256MiB";
  int repeat = 3;
  std::vector<std::string> transports = {"shm", "tcp"};
  std::string dir;
  uint64_t seed = 1;
  bool install_variants = true;
  bool smoke = false;
};

[[noreturn]] void DieErrno(const std::string& what) {
  Die(what, absl::InternalError(std::strerror(errno)));
}

double Best(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

std::string SelfDir() { return fs::read_symlink("/proc/self/exe").parent_path().string(); }

std::vector<double> LoadAverage() {
  double l[3] = {0, 0, 0};
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf %lf %lf", &l[0], &l[1], &l[2]) != 3) l[0] = l[1] = l[2] = -1;
    std::fclose(f);
  }
  return {l[0], l[1], l[2]};
}

// CPU time since boot from /proc/stat: all of it and the busy part (not idle or iowait), and
// this process's and its waited-for children's (cp, ferry, ferry-server), in seconds.
struct CpuTimes {
  double total = 0, busy = 0, own = 0;
};

CpuTimes ReadCpuTimes() {
  CpuTimes t;
  if (FILE* f = std::fopen("/proc/stat", "r")) {
    unsigned long long v[10] = {};
    if (std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                    &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]) >= 8) {
      double total = 0;
      for (int i = 0; i < 8; ++i) total += v[i];  // guest time is already in user
      const double hz = static_cast<double>(::sysconf(_SC_CLK_TCK));
      t.total = total / hz;
      t.busy = (total - v[3] - v[4]) / hz;
    }
    std::fclose(f);
  }
  for (int who : {RUSAGE_SELF, RUSAGE_CHILDREN}) {
    rusage u{};
    ::getrusage(who, &u);
    t.own +=
        u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
  }
  return t;
}

std::string FsType(const std::string& path) {
  struct statfs st;
  if (::statfs(path.c_str(), &st) != 0) return "unknown";
  switch (st.f_type) {
    case 0xEF53:
      return "ext4";
    case 0x01021994:
      return "tmpfs";
    case 0x58465342:
      return "xfs";
    case 0x9123683E:
      return "btrfs";
    case 0x794c7630:
      return "overlayfs";
    default:
      return absl::StrFormat("0x%x", static_cast<unsigned long>(st.f_type));
  }
}

// Flushes every filesystem's dirty pages so that the next timed step starts without writeback
// pending. Untimed.
void Settle() { ::sync(); }

// syncfs(2) of the filesystem holding `path` (= `sync -f path`); returns the seconds it took.
double SyncFs(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) DieErrno("open " + path);
  const double t0 = Now();
  if (::syncfs(fd) != 0) DieErrno("syncfs " + path);
  const double t = Now() - t0;
  ::close(fd);
  return t;
}

// Runs argv (searched in PATH) with the bench's environment and waits; exits on failure.
double RunCommand(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const double t0 = Now();
  pid_t pid;
  if (int rc = ::posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), environ); rc != 0) {
    Die(absl::StrCat("spawning ", argv[0]), absl::InternalError(std::strerror(rc)));
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) DieErrno("waitpid");
  }
  const double t = Now() - t0;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    Die(argv[0], absl::InternalError(ferry::internal::DescribeWaitStatus(status)));
  }
  return t;
}

// splitmix64: fast, deterministic for a seed.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [lo, hi].
  uint64_t Uniform(uint64_t lo, uint64_t hi) { return lo + Next() % (hi - lo + 1); }

 private:
  uint64_t s_;
};

void FillRandom(char* data, uint64_t bytes, uint64_t seed) {
  Rng rng(seed);
  uint64_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    const uint64_t v = rng.Next();
    std::memcpy(data + i, &v, 8);
  }
  for (; i < bytes; ++i) data[i] = static_cast<char>(rng.Next());
}

struct TreeInfo {
  std::string root;
  uint64_t bytes = 0;
  uint64_t files = 0;
  uint64_t small_files = 0;
  uint64_t small_bytes = 0;
  uint64_t large_files = 0;
  uint64_t large_bytes = 0;
  uint64_t dirs = 0;
};

// Writes files from a pool of random bytes at pseudo-random offsets, so files differ.
class TreeWriter {
 public:
  static constexpr uint64_t kPool = uint64_t{64} << 20;
  static constexpr uint64_t kPiece = uint64_t{8} << 20;  // largest single write

  explicit TreeWriter(uint64_t seed) : rng_(seed), pool_(kPool + kPiece) {
    FillRandom(pool_.data(), pool_.size(), seed ^ 0x5eed);
  }

  void Write(const std::string& path, uint64_t size) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) DieErrno("creating " + path);
    for (uint64_t done = 0; done < size;) {
      const uint64_t n = std::min(kPiece, size - done);
      const char* src = pool_.data() + rng_.Uniform(0, kPool - 1);
      for (uint64_t w = 0; w < n;) {
        const ssize_t r = ::write(fd, src + w, n - w);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) DieErrno("writing " + path);
        w += static_cast<uint64_t>(r);
      }
      done += n;
    }
    if (::close(fd) != 0) DieErrno("closing " + path);
  }

  Rng& rng() { return rng_; }

 private:
  Rng rng_;
  Buffer pool_;
};

std::string HashName(Rng& rng) {
  static constexpr char kBase32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  std::string s(52, 'A');
  for (char& c : s) c = kBase32[rng.Next() % 32];
  return s;
}

TreeInfo GenerateTree(const std::string& root, uint64_t size, uint64_t seed) {
  static const char* kKernels[] = {"triton_poi_fused_add_mul_0",
                                   "triton_red_fused_mean_pow_1",
                                   "triton_per_fused_softmax_2",
                                   "_fwd_kernel",
                                   "fused_moe_kernel",
                                   "matmul_kernel_persistent",
                                   "_attn_fwd_inner",
                                   "rms_norm_kernel"};
  // Extension and size range (KiB) of the files of one compiled kernel.
  struct Kind {
    const char* prefix;
    const char* suffix;
    uint64_t min_kib, max_kib;
  };
  static const Kind kFiles[] = {{"", ".json", 1, 4},       {"", ".cubin", 16, 64},
                                {"", ".ptx", 8, 64},       {"", ".ttir", 4, 32},
                                {"", ".ttgir", 4, 32},     {"", ".llir", 8, 64},
                                {"__grp__", ".json", 1, 2}};
  fs::create_directories(root);
  TreeWriter w(seed);
  Rng& rng = w.rng();
  TreeInfo t;
  t.root = root;
  const uint64_t small_target = size / 2;
  while (t.small_bytes < small_target) {
    const std::string dir = absl::StrCat(root, "/", HashName(rng));
    if (::mkdir(dir.c_str(), 0755) != 0) DieErrno("mkdir " + dir);
    ++t.dirs;
    const std::string kernel =
        absl::StrCat(kKernels[rng.Next() % std::size(kKernels)], "_", t.dirs);
    for (const Kind& k : kFiles) {
      const std::string name = absl::StrCat(k.prefix, kernel, k.suffix);
      uint64_t bytes = rng.Uniform(k.min_kib << 10, k.max_kib << 10);
      bytes = std::min(bytes, std::max<uint64_t>(1024, small_target - t.small_bytes));
      w.Write(dir + "/" + name, bytes);
      t.small_bytes += bytes;
      ++t.small_files;
      if (t.small_bytes >= small_target) break;
    }
  }
  // The large files: 64-200 MiB each (about 128 MiB on average), scaled to the rest of --size.
  const uint64_t large_target = size > t.small_bytes ? size - t.small_bytes : 1;
  const uint64_t count =
      std::clamp<uint64_t>((large_target + (64ull << 20)) / (128ull << 20), 1, 8);
  std::vector<uint64_t> sizes;
  uint64_t sum = 0;
  for (uint64_t i = 0; i < count; ++i) {
    sizes.push_back(rng.Uniform(64ull << 20, 200ull << 20));
    sum += sizes.back();
  }
  uint64_t left = large_target;
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t bytes =
        i + 1 == count ? left
                       : static_cast<uint64_t>(static_cast<double>(sizes[i]) / sum * large_target);
    const std::string dir = absl::StrCat(root, "/", HashName(rng));
    if (::mkdir(dir.c_str(), 0755) != 0) DieErrno("mkdir " + dir);
    ++t.dirs;
    w.Write(absl::StrCat(dir, "/", kKernels[i % std::size(kKernels)], "_aot.so"), bytes);
    t.large_bytes += bytes;
    ++t.large_files;
    left -= bytes;
  }
  t.files = t.small_files + t.large_files;
  t.bytes = t.small_bytes + t.large_bytes;
  return t;
}

// Every regular file under `root`, relative, sorted.
std::vector<std::string> ListFiles(const std::string& root) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (e.is_regular_file()) out.push_back(fs::relative(e.path(), root).string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string ReadFile(const std::string& path) {
  std::string data;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) DieErrno("open " + path);
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) DieErrno("read " + path);
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return data;
}

// Checks that `copy` holds exactly the files of `tree` (names, count, total size) and, when
// `contents`, the same bytes. Exits 1 naming the first difference.
void CheckSameTree(const TreeInfo& tree, const std::string& copy, bool contents) {
  const std::vector<std::string> files = ListFiles(copy);
  uint64_t bytes = 0;
  for (const std::string& f : files) bytes += fs::file_size(copy + "/" + f);
  if (files.size() != tree.files || bytes != tree.bytes) {
    Die("checking " + copy,
        absl::DataLossError(absl::StrCat("holds ", files.size(), " files of ", bytes,
                                         " bytes; the tree has ", tree.files, " of ", tree.bytes)));
  }
  if (!contents) return;
  const std::vector<std::string> originals = ListFiles(tree.root);
  if (originals != files) Die("checking " + copy, absl::DataLossError("file names differ"));
  for (const std::string& f : files) {
    if (ReadFile(tree.root + "/" + f) != ReadFile(copy + "/" + f)) {
      Die("checking " + copy, absl::DataLossError(f + " differs from the original"));
    }
  }
}

// Syncs, then drops `copy`'s pages from the page cache (they are clean after the sync) without
// deleting it: the copies the bench keeps would otherwise fill memory run after run, and later
// runs would pay for reclaiming them.
void Evict(const std::string& copy) {
  Settle();
  for (const auto& e : fs::recursive_directory_iterator(copy)) {
    if (!e.is_regular_file()) continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) DieErrno("open " + e.path().string());
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

// --- crc32c ---

void RunCrc(const Flags& f, uint64_t bytes, std::vector<std::string>* table) {
  Buffer src(bytes), dst(bytes);
  FillRandom(src.data(), bytes, f.seed);
  std::vector<double> memcpy_s;
  ferry::bench::MemcpySeconds(src, dst, bytes);  // warm-up, untimed
  for (int r = 0; r < f.repeat; ++r)
    memcpy_s.push_back(ferry::bench::MemcpySeconds(src, dst, bytes));
  const double memcpy_gbps = bytes / Median(memcpy_s) / 1e9;
  Print({{"workload", "crc32c"},
         {"impl", "memcpy"},
         {"bytes", bytes},
         {"gbps", memcpy_gbps},
         {"seconds_runs", memcpy_s}});
  table->push_back(absl::StrFormat("%-34s %10.3f s %8.2f GB/s   (baseline)", "memcpy (1 thread)",
                                   Median(memcpy_s), memcpy_gbps));
  struct Impl {
    const char* name;
    uint32_t (*fn)(const void*, size_t, uint32_t);
  };
  std::vector<Impl> impls = {{"crc32c", &art::Crc32c}, {"portable", &art::Crc32cPortable}};
  if (art::Crc32cHardwareAvailable())
    impls.insert(impls.begin() + 1, {"hardware", &art::Crc32cHardware});
  const uint32_t expected = art::Crc32cPortable(src.data(), bytes, 0);
  for (const Impl& impl : impls) {
    std::vector<double> runs;
    (void)impl.fn(src.data(), bytes, 0);  // warm-up, untimed
    for (int r = 0; r < f.repeat; ++r) {
      const double t0 = Now();
      const uint32_t crc = impl.fn(src.data(), bytes, 0);
      runs.push_back(Now() - t0);
      if (crc != expected) {
        Die(std::string("crc32c ") + impl.name, absl::DataLossError("differs from the portable"));
      }
    }
    const double gbps = bytes / Median(runs) / 1e9;
    Print({{"workload", "crc32c"},
           {"impl", impl.name},
           {"hardware_available", art::Crc32cHardwareAvailable()},
           {"bytes", bytes},
           {"seconds", Median(runs)},
           {"seconds_runs", runs},
           {"gbps", gbps},
           {"best_gbps", bytes / Best(runs) / 1e9},
           {"baseline", "memcpy"},
           {"baseline_gbps", memcpy_gbps},
           {"ratio", gbps / memcpy_gbps}});
    table->push_back(absl::StrFormat("%-34s %10.3f s %8.2f GB/s   %.2fx memcpy",
                                     absl::StrCat("CRC32C ", impl.name, " (1 thread)"),
                                     Median(runs), gbps, gbps / memcpy_gbps));
  }
}

// --- reading, sealing, snapshotting ---

// The baseline: walk `root` and read every regular file once into `buffer`.
double ReadTreeSeconds(const std::string& root, Buffer& buffer, uint64_t* bytes_read) {
  const double t0 = Now();
  uint64_t total = 0;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (!e.is_regular_file()) continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) DieErrno("open " + e.path().string());
    for (;;) {
      const ssize_t n = ::read(fd, buffer.data(), buffer.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) DieErrno("read " + e.path().string());
      if (n == 0) break;
      total += static_cast<uint64_t>(n);
    }
    ::close(fd);
  }
  *bytes_read = total;
  return Now() - t0;
}

// Anonymous memory for a snapshot (not pre-faulted: the copy faults it in, as in publish).
class Arena {
 public:
  Arena() = default;
  ~Arena() { Release(); }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ferry::StatusOr<char*> Allocate(uint64_t bytes) {
    Release();
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return absl::ResourceExhaustedError("mmap of the snapshot");
    data_ = static_cast<char*>(p);
    size_ = bytes;
    return data_;
  }
  void Release() {
    if (data_ != nullptr) ::munmap(data_, size_);
    data_ = nullptr;
  }
  const char* data() const { return data_; }

 private:
  char* data_ = nullptr;
  uint64_t size_ = 0;
};

art::SealOptions SealOpts() {
  art::SealOptions o;
  o.mx_source_type = Must(art::ParseArtifactKind(kKind), "--kind").type;
  return o;
}

// Runs read_tree, seal and snapshot; leaves the last snapshot in `arena` / `snapshot`.
double RunSeal(const Flags& f, const TreeInfo& tree, Arena* arena, art::Snapshot* snapshot,
               std::vector<std::string>* table) {
  Buffer buffer(8 << 20);
  std::vector<double> read_s, seal_s, snap_s;
  uint64_t read_bytes = 0;
  size_t chunks = 0;
  for (int r = 0; r < f.repeat; ++r) {
    read_s.push_back(ReadTreeSeconds(tree.root, buffer, &read_bytes));
    double t0 = Now();
    art::Manifest m = Must(art::SealDirectory(tree.root, SealOpts()), "SealDirectory");
    seal_s.push_back(Now() - t0);
    chunks = m.chunks.size();
    if (m.files.size() != tree.files) {
      Die("SealDirectory",
          absl::DataLossError(absl::StrCat("sealed ", m.files.size(), " files of ", tree.files)));
    }
    arena->Release();
    t0 = Now();
    *snapshot =
        Must(art::SnapshotDirectory(tree.root, SealOpts(),
                                    [arena](uint64_t bytes) { return arena->Allocate(bytes); }),
             "SnapshotDirectory");
    snap_s.push_back(Now() - t0);
  }
  if (read_bytes != tree.bytes) {
    Die("read_tree", absl::DataLossError(absl::StrCat("read ", read_bytes, " of ", tree.bytes)));
  }
  const double read_gbps = tree.bytes / Median(read_s) / 1e9;
  Print({{"workload", "read_tree"},
         {"files", tree.files},
         {"bytes", tree.bytes},
         {"seconds", Median(read_s)},
         {"seconds_runs", read_s},
         {"gbps", read_gbps}});
  table->push_back(absl::StrFormat("%-34s %10.3f s %8.2f GB/s   (baseline)",
                                   "read every file (1 thread)", Median(read_s), read_gbps));
  for (const auto& [name, runs] : std::vector<std::pair<std::string, std::vector<double>*>>{
           {"seal", &seal_s}, {"snapshot", &snap_s}}) {
    const double gbps = tree.bytes / Median(*runs) / 1e9;
    Print({{"workload", name},
           {"files", tree.files},
           {"chunks", chunks},
           {"bytes", tree.bytes},
           {"seconds", Median(*runs)},
           {"seconds_runs", *runs},
           {"gbps", gbps},
           {"baseline", "read_tree"},
           {"baseline_gbps", read_gbps},
           {"ratio", gbps / read_gbps}});
    table->push_back(
        absl::StrFormat("%-34s %10.3f s %8.2f GB/s   %.2fx read",
                        name == "seal" ? "SealDirectory" : "SnapshotDirectory (fresh memory)",
                        Median(*runs), gbps, gbps / read_gbps));
  }
  return read_gbps;
}

// --- cp, install, pull ---

struct CpRun {
  double cp = 0;
  double sync = 0;
};

CpRun RunCp(const TreeInfo& tree, const std::string& dest, bool check) {
  Settle();
  CpRun run;
  run.cp = RunCommand({"cp", "-a", tree.root, dest});
  run.sync = SyncFs(dest);
  CheckSameTree(tree, dest, check);
  Evict(dest);
  return run;
}

// What runs between the last Write and Commit in the install workload: nothing (what
// PullArtifact does), or a what-if that makes the staged files durable first with fsync, one
// file after another (what Commit did before it used syncfs) or from 16 threads at once, so
// Commit's own flush finds them clean.
enum class Presync { kNone, kSerialFsync, kParallelFsync };

const char* PresyncName(Presync p) {
  switch (p) {
    case Presync::kNone:
      return "as_is";
    case Presync::kSerialFsync:
      return "serial_fsync_first";
    case Presync::kParallelFsync:
      return "parallel_fsync_first";
  }
  return "?";
}

constexpr int kPresyncThreads = 16;

// fsync of every file `rel_paths` names under `dir`, from `threads` threads (concurrent fsyncs
// can share journal commits).
void FsyncFiles(const std::string& dir, const std::vector<std::string>& rel_paths, int threads) {
  std::atomic<size_t> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (size_t i = next++; i < rel_paths.size(); i = next++) {
        const std::string path = dir + "/" + rel_paths[i];
        const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
        if (fd < 0 || ::fsync(fd) != 0) DieErrno("fsync " + path);
        ::close(fd);
      }
    });
  }
  for (std::thread& t : pool) t.join();
}

struct InstallRun {
  double lock = 0, create = 0, create_files = 0, write = 0, presync = 0, commit = 0, total = 0;
};

// The install alone: what PullArtifact does after the bytes arrive, from the snapshot in memory.
InstallRun RunInstall(const TreeInfo& tree, const art::Snapshot& snapshot, const char* memory,
                      const std::string& out, Presync presync, bool check) {
  const std::string into = out + "/cache";
  const std::string state = out + "/state";
  Settle();
  InstallRun run;
  const double t0 = Now();
  auto lock = Must(art::InstallLock::Acquire(state, into, absl::Minutes(1)), "InstallLock");
  const double t1 = Now();
  auto paths = Must(art::PlanInstallPaths(snapshot.manifest, snapshot.root), "PlanInstallPaths");
  std::vector<uint64_t> sizes;
  for (const art::ManifestFile& mf : snapshot.manifest.files) sizes.push_back(mf.size);
  auto stage = Must(art::StagedInstall::Create(into), "StagedInstall::Create");
  const double t2 = Now();
  Check(stage->CreateFiles(paths, sizes), "CreateFiles");
  const double t3 = Now();
  for (const art::ManifestFile& mf : snapshot.manifest.files) {
    Check(stage->Write(mf.file_index, 0, memory + snapshot.file_offsets[mf.file_index], mf.size),
          "Write");
  }
  const double t4 = Now();
  if (presync == Presync::kSerialFsync) FsyncFiles(stage->staging_dir(), paths, 1);
  if (presync == Presync::kParallelFsync) {
    FsyncFiles(stage->staging_dir(), paths, kPresyncThreads);
  }
  const double t5 = Now();
  Check(stage->Commit(), "Commit");
  const double t6 = Now();
  run.lock = t1 - t0;
  run.create = t2 - t1;
  run.create_files = t3 - t2;
  run.write = t4 - t3;
  run.presync = t5 - t4;
  run.commit = t6 - t5;
  run.total = t6 - t0;
  stage.reset();
  lock.reset();
  CheckSameTree(tree, into, check);
  Evict(into);
  return run;
}

struct PullRun {
  double total = 0, transfer = 0, install = 0, setup = 0;
};

class Puller {
 public:
  Puller(const std::string& server, const std::string& public_key)
      : trusted_(Must(art::TrustedKeys::Load({public_key}), "loading " + public_key)) {
    ferry::MetadataClientOptions o;
    o.server_address = server;
    client_ = Must(ferry::MetadataClient::Create(o), "connecting to the server");
    ferry::SourceIdentity base;
    base.set_model_name(kModel);
    base.set_tensor_parallel_size(1);
    base.set_pipeline_parallel_size(1);
    base.set_expert_parallel_size(1);
    identity_ = art::ArtifactIdentity(base, Must(art::ParseArtifactKind(kKind), "--kind"), {});
  }

  PullRun Pull(const std::string& transport, const TreeInfo& tree, const std::string& out,
               bool check) {
    ferry::TransferEngine& engine = Engine(transport);
    const std::string into = out + "/cache";
    const std::string state = out + "/state";
    Settle();
    art::ArtifactPullOptions o;
    o.client = client_.get();
    o.engine = &engine;
    o.identity = identity_;
    o.into = into;
    o.transport = Must(ferry::ParseTransportKind(transport), "--transport");
    o.trusted = &trusted_;
    o.state_dir = state;
    o.force = true;
    o.max_sources = 1;
    art::ArtifactPullResult r = Must(art::PullArtifact(o), "PullArtifact over " + transport);
    if (!r.installed || r.files != tree.files || r.bytes != tree.bytes ||
        r.trust != art::TrustDecision::kTrusted) {
      Die("PullArtifact", absl::DataLossError(absl::StrCat(
                              "installed=", r.installed, " files=", r.files, " bytes=", r.bytes,
                              " trust=", std::string(art::TrustDecisionName(r.trust)))));
    }
    PullRun run;
    run.total = absl::ToDoubleSeconds(r.total_time);
    run.transfer = absl::ToDoubleSeconds(r.transfer_time);
    run.install = absl::ToDoubleSeconds(r.install_time);
    run.setup = run.total - run.transfer - run.install;
    CheckSameTree(tree, into, check);
    Evict(into);
    return run;
  }

 private:
  ferry::TransferEngine& Engine(const std::string& transport) {
    std::unique_ptr<ferry::TransferEngine>& e = engines_[transport];
    if (e == nullptr) {
      ferry::TransferEngineOptions o;
      o.name = "artifact_bench target";
      o.enable_shm = transport == "shm";
      o.enable_ucx = o.ucx_without_rdma = transport == "ucx";
      o.enable_tcp = transport == "tcp";
      o.tcp_listen = "127.0.0.1:0";
      o.ucx_net_devices = "lo";
      e = Must(ferry::TransferEngine::Create(o), "creating the " + transport + " engine");
    }
    return *e;
  }

  art::TrustedKeys trusted_;
  std::unique_ptr<ferry::MetadataClient> client_;
  ferry::SourceIdentity identity_;
  std::map<std::string, std::unique_ptr<ferry::TransferEngine>> engines_;
};

std::vector<double> Field(const std::vector<PullRun>& runs, double PullRun::*field) {
  std::vector<double> v;
  for (const PullRun& r : runs) v.push_back(r.*field);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{
      "ferry compile-cache artifact benchmark (see the header of bench/artifact_bench.cc)"};
  app.add_option("--size", f.size, "total size of the generated tree (e.g. 1GiB)")
      ->capture_default_str();
  app.add_option("--repeat", f.repeat, "runs per measurement (the median is reported)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--transport", f.transports, "pull transports: shm, tcp and/or ucx")
      ->delimiter(',');
  app.add_option("--dir", f.dir,
                 "where the tree and every copy go (one filesystem; default: the temp dir)");
  app.add_option("--crc-bytes", f.crc_bytes, "CRC32C buffer size")->capture_default_str();
  app.add_option("--seed", f.seed, "tree contents and layout")->capture_default_str();
  app.add_flag("--install-variants,!--no-install-variants", f.install_variants,
               "also time the install with its files fsynced before Commit, one by one or from "
               "16 threads: what-ifs for the cost of durability");
  app.add_flag("--smoke", f.smoke, "tiny sizes, contents checked: checks the benchmark still runs");
  CLI11_PARSE(app, argc, argv);
  if (f.smoke) {
    f.size = "8MiB";
    f.crc_bytes = "16MiB";
    f.repeat = 1;
  }
  const uint64_t size = Must(ferry::internal::ParseByteSize(f.size, "--size"), "--size");
  const uint64_t crc_bytes =
      Must(ferry::internal::ParseByteSize(f.crc_bytes, "--crc-bytes"), "--crc");
  if (size < (1 << 20)) Die("--size", absl::InvalidArgumentError("must be at least 1 MiB"));

  std::string work = (fs::path(f.dir.empty() ? fs::temp_directory_path().string() : f.dir) /
                      "ferry-artifact-bench-XXXXXX")
                         .string();
  if (::mkdtemp(work.data()) == nullptr) DieErrno("mkdtemp " + work);
  // Removed however the bench exits (Die exits too), so a failed run leaves no tree behind.
  static std::string work_dir = work;
  std::atexit([] {
    std::error_code ec;
    fs::remove_all(work_dir, ec);
  });
  const std::vector<double> load_before = LoadAverage();
  const CpuTimes cpu_before = ReadCpuTimes();
  const double wall_before = Now();
  std::vector<std::string> table;

  // The tree.
  double t0 = Now();
  const TreeInfo tree = GenerateTree(work + "/tree", size, f.seed);
  Settle();
  const double generate_s = Now() - t0;
  Print({{"workload", "tree"},
         {"root", tree.root},
         {"filesystem", FsType(work)},
         {"bytes", tree.bytes},
         {"files", tree.files},
         {"small_files", tree.small_files},
         {"small_bytes", tree.small_bytes},
         {"large_files", tree.large_files},
         {"large_bytes", tree.large_bytes},
         {"dirs", tree.dirs},
         {"generate_seconds", generate_s}});

  RunCrc(f, crc_bytes, &table);
  Arena arena;
  art::Snapshot snapshot;
  RunSeal(f, tree, &arena, &snapshot, &table);

  // The source: ferry-server and `ferry artifact publish`, signed.
  ferry::internal::ServerProcessOptions so;
  so.binary = SelfDir() + "/ferry-server";
  auto server = Must(ferry::internal::ServerProcess::Create(so), "starting ferry-server");
  const art::KeyPairFiles keys = Must(art::WriteKeyPair(work + "/keys"), "writing a key pair");
  const std::string ready = work + "/publish.ready";
  ferry::internal::ChildOptions po;
  po.argv = {SelfDir() + "/ferry",
             "artifact",
             "publish",
             tree.root,
             "--kind",
             kKind,
             "--model",
             kModel,
             "--signing-key",
             keys.private_key_path,
             "--server",
             server->address(),
             "--worker-listen",
             "127.0.0.1:0",
             "--data-listen",
             "127.0.0.1:0",
             "--ucx-net-devices",
             "lo",
             "--ucx-without-rdma",  // serve the ucx runs too (no RDMA device here)
             "--ready-file",
             ready};
  po.log_file = work + "/publish.log";
  t0 = Now();
  auto publisher =
      Must(ferry::internal::ChildProcess::Start(po), "starting ferry artifact publish");
  const nlohmann::json ready_json =
      Must(publisher->WaitForReadyFile(ready, "worker_port", absl::Minutes(10)),
           "ferry artifact publish");
  const double publish_s = Now() - t0;
  if (ready_json.value("files", uint64_t{0}) != tree.files ||
      ready_json.value("bytes", uint64_t{0}) != tree.bytes) {
    Die("ferry artifact publish", absl::DataLossError("serves another tree: " + ready_json.dump()));
  }
  Print({{"workload", "publish"},
         {"files", tree.files},
         {"bytes", tree.bytes},
         {"seconds", publish_s},
         {"note", "process start to ready file: engine, snapshot, seal, sign, register"}});

  Puller puller(server->address(), keys.public_key_path);
  std::vector<CpRun> cps;
  std::vector<Presync> presyncs = {Presync::kNone};
  if (f.install_variants)
    presyncs.insert(presyncs.end(), {Presync::kSerialFsync, Presync::kParallelFsync});
  std::map<Presync, std::vector<InstallRun>> installs;
  std::map<std::string, std::vector<PullRun>> pulls;
  for (int r = 0; r < f.repeat; ++r) {
    cps.push_back(RunCp(tree, absl::StrCat(work, "/cp-", r), f.smoke));
    for (Presync p : presyncs) {
      installs[p].push_back(RunInstall(tree, snapshot, arena.data(),
                                       absl::StrCat(work, "/install-", PresyncName(p), "-", r), p,
                                       f.smoke));
    }
    for (const std::string& t : f.transports) {
      pulls[t].push_back(puller.Pull(t, tree, absl::StrCat(work, "/pull-", t, "-", r), f.smoke));
    }
  }
  // Last, because it deletes: pulls into a directory that already holds the tree (a cache being
  // replaced), so Commit exchanges the trees and then removes the old one.
  const std::string replace_transport = f.transports.front();
  for (int r = 0; r < f.repeat; ++r) {
    pulls["existing"].push_back(puller.Pull(
        replace_transport, tree, absl::StrCat(work, "/pull-", replace_transport, "-", r), f.smoke));
  }
  (void)publisher->Terminate(absl::Seconds(20));
  (void)server->Stop();

  std::vector<double> cp_s, sync_s, cp_sync_s;
  for (const CpRun& c : cps) {
    cp_s.push_back(c.cp);
    sync_s.push_back(c.sync);
    cp_sync_s.push_back(c.cp + c.sync);
  }
  const double cp_gbps = tree.bytes / Median(cp_s) / 1e9;
  const double cp_sync_gbps = tree.bytes / Median(cp_sync_s) / 1e9;
  Print({{"workload", "cp"},
         {"command", "cp -a TREE DEST; sync -f DEST"},
         {"files", tree.files},
         {"bytes", tree.bytes},
         {"seconds", Median(cp_s)},
         {"seconds_runs", cp_s},
         {"gbps", cp_gbps},
         {"sync_seconds", Median(sync_s)},
         {"sync_seconds_runs", sync_s},
         {"cp_sync_seconds", Median(cp_sync_s)},
         {"cp_sync_seconds_runs", cp_sync_s},
         {"cp_sync_gbps", cp_sync_gbps}});
  table.push_back(
      absl::StrFormat("%-34s %10.3f s %8.2f GB/s   (baseline)", "cp -a", Median(cp_s), cp_gbps));
  table.push_back(absl::StrFormat("%-34s %10.3f s %8.2f GB/s   (baseline)", "cp -a + sync -f",
                                  Median(cp_sync_s), cp_sync_gbps));

  for (Presync p : presyncs) {
    std::vector<double> lock, create, files, write, presync, commit, total;
    for (const InstallRun& i : installs[p]) {
      lock.push_back(i.lock);
      create.push_back(i.create);
      files.push_back(i.create_files);
      write.push_back(i.write);
      presync.push_back(i.presync);
      commit.push_back(i.commit);
      total.push_back(i.total);
    }
    const double gbps = tree.bytes / Median(total) / 1e9;
    Print({{"workload", "install"},
           {"variant", PresyncName(p)},
           {"files", tree.files},
           {"bytes", tree.bytes},
           {"seconds", Median(total)},
           {"seconds_runs", total},
           {"gbps", gbps},
           {"lock_seconds", Median(lock)},
           {"plan_and_create_stage_seconds", Median(create)},
           {"create_files_seconds", Median(files)},
           {"create_files_seconds_runs", files},
           {"write_seconds", Median(write)},
           {"write_seconds_runs", write},
           {"presync_seconds", Median(presync)},
           {"presync_seconds_runs", presync},
           {"commit_seconds", Median(commit)},
           {"commit_seconds_runs", commit},
           {"baseline", "cp_sync"},
           {"baseline_gbps", cp_sync_gbps},
           {"ratio", gbps / cp_sync_gbps},
           {"ratio_vs_cp", gbps / cp_gbps}});
    table.push_back(absl::StrFormat(
        "%-34s %10.3f s %8.2f GB/s   %.2fx cp+sync, %.2fx cp (create %.3f, write %.3f, "
        "presync %.3f, commit %.3f s)",
        absl::StrCat("install, ", PresyncName(p)), Median(total), gbps, gbps / cp_sync_gbps,
        gbps / cp_gbps, Median(files), Median(write), Median(presync), Median(commit)));
  }

  std::vector<std::pair<std::string, std::string>> pull_rows;  // (key of `pulls`, transport)
  for (const std::string& t : f.transports) pull_rows.emplace_back(t, t);
  pull_rows.emplace_back("existing", replace_transport);
  for (const auto& [key, t] : pull_rows) {
    const std::vector<PullRun>& runs = pulls[key];
    const bool existing = key == "existing";
    const std::vector<double> total = Field(runs, &PullRun::total);
    const double gbps = tree.bytes / Median(total) / 1e9;
    Print({{"workload", "pull"},
           {"transport", t},
           {"into", existing ? "existing" : "fresh"},
           {"files", tree.files},
           {"bytes", tree.bytes},
           {"seconds", Median(total)},
           {"seconds_runs", total},
           {"gbps", gbps},
           {"best_gbps", tree.bytes / Best(total) / 1e9},
           {"transfer_seconds", Median(Field(runs, &PullRun::transfer))},
           {"transfer_seconds_runs", Field(runs, &PullRun::transfer)},
           {"install_seconds", Median(Field(runs, &PullRun::install))},
           {"install_seconds_runs", Field(runs, &PullRun::install)},
           {"setup_seconds", Median(Field(runs, &PullRun::setup))},
           {"setup_seconds_runs", Field(runs, &PullRun::setup)},
           {"baseline", "cp_sync"},
           {"baseline_gbps", cp_sync_gbps},
           {"ratio", gbps / cp_sync_gbps},
           {"cp_gbps", cp_gbps},
           {"ratio_vs_cp", gbps / cp_gbps}});
    table.push_back(absl::StrFormat(
        "%-34s %10.3f s %8.2f GB/s   %.2fx cp+sync, %.2fx cp (setup %.3f, transfer %.3f, "
        "install %.3f s)",
        absl::StrCat("pull + install, ", t, existing ? ", replacing" : ""), Median(total), gbps,
        gbps / cp_sync_gbps, gbps / cp_gbps, Median(Field(runs, &PullRun::setup)),
        Median(Field(runs, &PullRun::transfer)), Median(Field(runs, &PullRun::install))));
  }

  const std::vector<double> load_after = LoadAverage();
  const CpuTimes cpu_after = ReadCpuTimes();
  const double wall = Now() - wall_before;
  // In % of one core; the machine has cpus x 100 %.
  const double machine_pct = (cpu_after.busy - cpu_before.busy) / wall * 100;
  const double own_pct = (cpu_after.own - cpu_before.own) / wall * 100;
  Print({{"workload", "machine"},
         {"cpus", std::thread::hardware_concurrency()},
         {"loadavg_before", load_before},
         {"loadavg_after", load_after},
         {"seconds", wall},
         {"machine_busy_pct", machine_pct},
         {"bench_cpu_pct", own_pct},
         {"others_cpu_pct", machine_pct - own_pct},
         {"filesystem", FsType(work)},
         {"repeat", f.repeat}});
  std::fprintf(stderr,
               "artifact_bench: tree %s: %llu files (%llu small, %llu large) in %llu dirs, %.1f "
               "MiB, on %s; median of %d\n",
               tree.root.c_str(), static_cast<unsigned long long>(tree.files),
               static_cast<unsigned long long>(tree.small_files),
               static_cast<unsigned long long>(tree.large_files),
               static_cast<unsigned long long>(tree.dirs), tree.bytes / 1048576.0,
               FsType(work).c_str(), f.repeat);
  for (const std::string& line : table) std::fprintf(stderr, "  %s\n", line.c_str());
  std::fprintf(stderr,
               "  load average %.2f before, %.2f after; over the %.0f s measured, the machine was "
               "%.0f %% busy (of %u00 %%), this bench and its children %.0f %%, others %.0f %%\n",
               load_before[0], load_after[0], wall, machine_pct,
               std::thread::hardware_concurrency(), own_pct, machine_pct - own_pct);
  arena.Release();
  return 0;
}
