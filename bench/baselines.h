// Same-run baselines shared by the data-plane benchmarks: pre-faulted buffers, single-thread
// memcpy, and a raw loopback TCP socket pair with N streams (the kernel-TCP bound). Header-only;
// failures exit the benchmark with a message (a benchmark that cannot measure has nothing to say).
// Programs that include it link PkgConfig::XXHASH (the checksumming raw socket).
#ifndef FERRY_BENCH_BASELINES_H_
#define FERRY_BENCH_BASELINES_H_

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace ferry::bench {

inline double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Pre-faulted anonymous memory.
class Buffer {
 public:
  explicit Buffer(uint64_t size) : size_(size) {
    data_ = ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (data_ == MAP_FAILED) {
      std::perror("mmap");
      std::exit(1);
    }
  }
  ~Buffer() { ::munmap(data_, size_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  char* data() const { return static_cast<char*>(data_); }
  uint64_t size() const { return size_; }

 private:
  void* data_;
  uint64_t size_;
};

// Seconds for one memcpy of `bytes` from src to dst.
inline double MemcpySeconds(const Buffer& src, Buffer& dst, uint64_t bytes) {
  const double t0 = Now();
  std::memcpy(dst.data(), src.data(), bytes);
  return Now() - t0;
}

// `streams` connected loopback TCP pairs; Seconds() sends `bytes` over them (a sender and a
// receiver thread per stream, straight from and into pre-faulted buffers).
class RawSockets {
 public:
  RawSockets(int streams, int socket_buffer) : streams_(streams), socket_buffer_(socket_buffer) {
    int listener = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (socket_buffer_ > 0) SetBuffers(listener);
    if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(listener, 64) != 0 ||
        ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      std::perror("raw socket listener");
      std::exit(1);
    }
    for (int i = 0; i < streams_; ++i) {
      int c = ::socket(AF_INET, SOCK_STREAM, 0);
      if (socket_buffer_ > 0) SetBuffers(c);
      if (::connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        std::perror("raw socket connect");
        std::exit(1);
      }
      int s = ::accept(listener, nullptr, nullptr);
      int one = 1;
      ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      senders_.push_back(s);
      receivers_.push_back(c);
    }
    ::close(listener);
  }
  ~RawSockets() {
    for (int fd : senders_) ::close(fd);
    for (int fd : receivers_) ::close(fd);
  }
  RawSockets(const RawSockets&) = delete;
  RawSockets& operator=(const RawSockets&) = delete;

  // Moves `bytes` from src to dst over the streams, each stream an equal share, sent and
  // received in pieces of `piece` bytes (0: each share in one send() and one recv()). With
  // `checksum`, each receiver also takes XXH3-64 of every piece as it lands (what a verified
  // pull adds to the wire's CPU work: the ceiling for a pull that checks every byte).
  double Seconds(const Buffer& src, Buffer& dst, uint64_t bytes, uint64_t piece = 0,
                 bool checksum = false) {
    std::vector<std::thread> threads;
    const uint64_t share = bytes / streams_;
    const double t0 = Now();
    for (int i = 0; i < streams_; ++i) {
      const uint64_t off = share * i;
      const uint64_t len = i + 1 == streams_ ? bytes - off : share;
      const uint64_t step = piece == 0 ? len : piece;
      threads.emplace_back([&, i, off, len, step] {
        for (uint64_t done = 0; done < len;) {
          const uint64_t want = std::min(step, len - done);
          ssize_t n = ::send(senders_[i], src.data() + off + done, want, MSG_NOSIGNAL);
          if (n <= 0) std::exit(1);
          done += n;
        }
      });
      threads.emplace_back([&, i, off, len, step] {
        uint64_t sum = 0;
        for (uint64_t done = 0; done < len;) {
          const uint64_t want = std::min(step, len - done);
          ssize_t n = ::recv(receivers_[i], dst.data() + off + done, want, MSG_WAITALL);
          if (n <= 0) std::exit(1);
          if (checksum) sum ^= XXH3_64bits(dst.data() + off + done, static_cast<size_t>(n));
          done += n;
        }
        checksums_.fetch_xor(sum, std::memory_order_relaxed);  // kept, so never optimized out
      });
    }
    for (auto& t : threads) t.join();
    return Now() - t0;
  }

 private:
  void SetBuffers(int fd) {
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &socket_buffer_, sizeof(socket_buffer_));
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &socket_buffer_, sizeof(socket_buffer_));
  }
  const int streams_;
  const int socket_buffer_;
  std::atomic<uint64_t> checksums_{0};
  std::vector<int> senders_;
  std::vector<int> receivers_;
};

}  // namespace ferry::bench

#endif  // FERRY_BENCH_BASELINES_H_
