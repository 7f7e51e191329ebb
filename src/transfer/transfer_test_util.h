// Test support for the transfer engine and its transports: pre-faulted buffers, reads through
// the read core, a byte pattern that reveals misplaced or missing bytes, and a source engine
// running in a child process.
#ifndef FERRY_TRANSFER_TRANSFER_TEST_UTIL_H_
#define FERRY_TRANSFER_TRANSFER_TEST_UTIL_H_

#include <dirent.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common/listener_probe.h"
#include "ferry/transfer.h"
#include "gtest/gtest.h"
#include "transfer/read_core.h"
#include "transfer/transport.h"

namespace ferry::testing {

// The TCP ports this process listens on (IPv4 and IPv6): the listeners of this namespace whose
// inode is one of this process's descriptors.
inline std::set<uint16_t> ListeningTcpPorts() {
  std::set<std::string> inodes;
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    while (dirent* e = ::readdir(dir)) {
      char target[64] = {};
      const std::string path = std::string("/proc/self/fd/") + e->d_name;
      const ssize_t n = ::readlink(path.c_str(), target, sizeof(target) - 1);
      const std::string t(target, n > 0 ? static_cast<size_t>(n) : 0);
      if (t.rfind("socket:[", 0) == 0) inodes.insert(t.substr(8, t.size() - 9));
    }
    ::closedir(dir);
  }
  std::set<uint16_t> ports;
  for (const ferry::internal::TcpListener& l : ferry::internal::TcpListeners()) {
    if (inodes.count(l.inode) != 0) ports.insert(l.port);
  }
  return ports;
}

// Pre-faulted anonymous memory, unmapped on destruction (or by Release()).
class Buffer {
 public:
  explicit Buffer(uint64_t size) : size_(size) {
    data_ = ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    EXPECT_NE(data_, MAP_FAILED);
  }
  ~Buffer() { Release(); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void Release() {
    if (data_ != nullptr) ::munmap(data_, size_);
    data_ = nullptr;
  }
  char* data() const { return static_cast<char*>(data_); }
  uint64_t size() const { return size_; }

 private:
  void* data_;
  uint64_t size_;
};

// Runs reads on one PeerConnection through the read core, with a cancel flag, a deadline and a
// count of the bytes that landed.
struct Running {
  std::atomic<bool> cancelled{false};
  std::atomic<uint64_t> bytes_done{0};
  absl::Time deadline = absl::InfiniteFuture();
  uint64_t chunk_bytes = 64 << 10;  // the transport tests' TransferEngineOptions::chunk_bytes
  // Called for every piece that landed (after bytes_done counts it).
  std::function<void(const ReadOp&)> on_piece;

  Status Read(ferry::internal::PeerConnection& connection, std::vector<ReadOp> ops,
              std::string description = "test peer") {
    ReadOptions options;
    options.cancel = &cancelled;
    if (deadline != absl::InfiniteFuture()) {
      options.start = absl::Now();
      options.timeout = std::max(deadline - options.start, absl::ZeroDuration());
    }
    options.on_piece = [this](const ReadOp& piece, size_t) {
      bytes_done.fetch_add(piece.length);
      if (on_piece) on_piece(piece);
    };
    const ferry::internal::ReadConnection c{&connection, std::move(description), std::move(ops)};
    return ferry::internal::RunRead({&c, 1}, chunk_bytes, options);
  }
};

// A ChunkFeed handing out the pieces of `ops` directly, for driving one transport without the
// read core: counts what was taken, moved and done, and can stop once `stop_after_taken`
// pieces were taken (a deterministic "cancelled while pieces are in flight").
class ScriptedFeed final : public ferry::internal::ChunkFeed {
 public:
  ScriptedFeed(const std::vector<ReadOp>& ops, uint64_t chunk_bytes)
      : pieces_(*ferry::internal::CutIntoPieces(ops, chunk_bytes, &regions_)) {}
  bool Next(ferry::internal::Chunk* chunk) override {
    if (stopping()) return false;
    const size_t i = next_.fetch_add(1);
    if (i >= pieces_.size()) return false;
    *chunk = pieces_[i];
    taken.fetch_add(1);
    return true;
  }
  void Moved(uint64_t bytes) override { moved.fetch_add(bytes); }
  void Done(const ferry::internal::Chunk& chunk) override { done.fetch_add(chunk.length); }
  bool stopping() const override {
    return stop.load() || (stop_after_taken > 0 && taken.load() >= stop_after_taken);
  }
  const std::vector<uint32_t>& regions() const override { return regions_; }

  size_t stop_after_taken = 0;  // 0: never
  std::atomic<bool> stop{false};
  std::atomic<size_t> taken{0};
  std::atomic<uint64_t> moved{0};
  std::atomic<uint64_t> done{0};

 private:
  std::vector<uint32_t> regions_;  // before pieces_: filled by its initializer
  std::vector<ferry::internal::Chunk> pieces_;
  std::atomic<size_t> next_{0};
};

// The byte a source region holds at `offset`: differs between neighbours and between offsets
// 256 apart, so shifted or swapped ranges do not compare equal.
inline uint8_t PatternByte(uint64_t offset) {
  return static_cast<uint8_t>((offset * 131) ^ (offset >> 8) ^ (offset >> 16) ^ 0x5a);
}

inline void FillPattern(void* data, uint64_t size) {
  uint8_t* p = static_cast<uint8_t*>(data);
  for (uint64_t i = 0; i < size; ++i) p[i] = PatternByte(i);
}

// The first offset in [0, size) where `data` differs from the pattern that starts at
// `remote_offset`; -1 when all match.
inline int64_t FirstMismatch(const void* data, uint64_t size, uint64_t remote_offset) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  for (uint64_t i = 0; i < size; ++i) {
    if (p[i] != PatternByte(remote_offset + i)) return static_cast<int64_t>(i);
  }
  return -1;
}

// A source engine in a forked child: shm and TCP on 127.0.0.1 (no UCX), one region of `bytes`
// (AllocateRegion: memfd-backed) filled with the pattern. The child exits when this object is
// destroyed (or is killed by Kill()).
// REQUIRES: the calling process runs no other threads when Start is called (fork).
class ChildSource {
 public:
  static std::unique_ptr<ChildSource> Start(uint64_t bytes, std::string name = "child source") {
    int blob_pipe[2];
    int control_pipe[2];
    if (::pipe(blob_pipe) != 0 || ::pipe(control_pipe) != 0) return nullptr;
    pid_t pid = ::fork();
    if (pid < 0) return nullptr;
    if (pid == 0) {
      ::close(blob_pipe[0]);
      ::close(control_pipe[1]);
      RunChild(bytes, name, blob_pipe[1], control_pipe[0]);  // never returns
    }
    ::close(blob_pipe[1]);
    ::close(control_pipe[0]);
    std::unique_ptr<ChildSource> child(new ChildSource(pid, control_pipe[1]));
    uint32_t len = 0;
    if (!ReadFull(blob_pipe[0], &len, sizeof(len))) {
      ::close(blob_pipe[0]);
      return nullptr;
    }
    child->blob_.resize(len);
    bool ok = ReadFull(blob_pipe[0], child->blob_.data(), len);
    ::close(blob_pipe[0]);
    if (!ok) return nullptr;
    return child;
  }

  ~ChildSource() {
    ::close(control_fd_);  // the child sees EOF and exits
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }

  const std::string& blob() const { return blob_; }
  pid_t pid() const { return pid_; }
  void Kill() { ::kill(pid_, SIGKILL); }

 private:
  ChildSource(pid_t pid, int control_fd) : pid_(pid), control_fd_(control_fd) {}

  static bool ReadFull(int fd, void* buf, size_t len) {
    char* p = static_cast<char*>(buf);
    while (len > 0) {
      ssize_t n = ::read(fd, p, len);
      if (n <= 0) return false;
      p += n;
      len -= static_cast<size_t>(n);
    }
    return true;
  }

  [[noreturn]] static void RunChild(uint64_t bytes, const std::string& name, int blob_fd,
                                    int control_fd) {
    TransferEngineOptions options;
    options.name = name;
    options.enable_ucx = false;
    options.tcp_listen = "127.0.0.1:0";
    auto engine = TransferEngine::Create(options);
    if (!engine.ok()) ::_exit(2);
    auto region = (*engine)->AllocateRegion(bytes);
    if (!region.ok()) ::_exit(3);
    FillPattern((*region)->data(), bytes);
    std::string blob = (*engine)->ExportBlob();
    uint32_t len = static_cast<uint32_t>(blob.size());
    if (::write(blob_fd, &len, sizeof(len)) != sizeof(len) ||
        ::write(blob_fd, blob.data(), len) != static_cast<ssize_t>(len)) {
      ::_exit(4);
    }
    ::close(blob_fd);
    char c;
    while (::read(control_fd, &c, 1) > 0) {
    }
    ::_exit(0);  // no destructors: the parent only needs the process gone
  }

  const pid_t pid_;
  const int control_fd_;
  std::string blob_;
};

}  // namespace ferry::testing

#endif  // FERRY_TRANSFER_TRANSFER_TEST_UTIL_H_
