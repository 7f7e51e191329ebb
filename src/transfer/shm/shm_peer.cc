#include "transfer/shm/shm_peer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace ferry::internal::shm {

namespace {}  // namespace

StatusOr<std::unique_ptr<ShmPeerConnection>> ShmPeerConnection::Create(
    const std::string& socket_name, const std::string& secret, ShmPeerOptions options,
    std::string description) {
  FERRY_ASSIGN_OR_RETURN(Fd control, Greet(socket_name, secret, "shm", description));
  return std::unique_ptr<ShmPeerConnection>(
      new ShmPeerConnection(std::move(control), options, std::move(description)));
}

ShmPeerConnection::ShmPeerConnection(Fd control, ShmPeerOptions options, std::string description)
    : options_(options), description_(std::move(description)), control_(std::move(control)) {}

ShmPeerConnection::~ShmPeerConnection() { Close(); }

void ShmPeerConnection::Close() {
  closing_.store(true);  // a running copy stops at its next chunk
  absl::MutexLock lock(&mu_);
  Unmap();
  control_.Reset();
}

void ShmPeerConnection::Unmap() {
  for (auto& [id, m] : mappings_) ::munmap(const_cast<char*>(m.data), m.size);
  mappings_.clear();
}

Status ShmPeerConnection::DrainNotices() {
  auto removed = ReadRemovalNotices(control_.get());
  if (!removed.ok()) {
    broken_.store(true);
    return removed.status();
  }
  for (uint32_t region : *removed) {
    removed_.insert(region);
    auto it = mappings_.find(region);
    if (it != mappings_.end()) {
      ::munmap(const_cast<char*>(it->second.data), it->second.size);
      mappings_.erase(it);
    }
  }
  return absl::OkStatus();
}

Status ShmPeerConnection::MapAll(const std::vector<uint32_t>& regions) {
  auto answer = [&](uint32_t region, const Reply& reply, Fd fd, bool* broken) -> Status {
    mu_.AssertHeld();  // called within this function (the analysis does not see it)
    if (reply.code != 0) {
      Status s = FromReply(reply);
      return Status(s.code(), absl::StrCat("failed: ", s.message()));
    }
    if (!fd.valid() || reply.size == 0) {
      *broken = true;
      return absl::DataLossError(absl::StrCat("failed: protocol error: the reply for region ",
                                              region, " carries no descriptor"));
    }
    if (removed_.count(region) != 0) return RegionRemovedError(region);
    // Never trust the size the source announces: a descriptor smaller than that, or one the
    // source could still shrink, would fault (SIGBUS) in our copy threads instead of failing
    // this read. The engine's own regions are memfds sealed against shrinking.
    struct stat st {};
    const int seals = ::fcntl(fd.get(), F_GET_SEALS);
    if (::fstat(fd.get(), &st) != 0 || seals < 0 || (seals & F_SEAL_SHRINK) == 0 ||
        st.st_size < 0 || static_cast<uint64_t>(st.st_size) < reply.size) {
      *broken = true;
      const std::string why = seals < 0 ? std::string("not a sealed memfd")
                              : (seals & F_SEAL_SHRINK) == 0
                                  ? std::string("not sealed against shrinking")
                                  : absl::StrCat(st.st_size, " bytes");
      return absl::DataLossError(absl::StrCat(
          "failed: the source's descriptor for region ", region, " does not back the ", reply.size,
          " bytes it announced (", why, "); not reading from this source: read from another one"));
    }
    // MAP_POPULATE: the kernel maps every page in one call instead of one fault per page in
    // the copy threads (page faults are expensive in VMs; measured in docs/benchmarks.md).
    void* p = ::mmap(nullptr, reply.size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(absl::StrCat("failed: mapping region ", region, " (",
                                                       reply.size, " bytes): ", ErrnoText(errno)));
    }
    mappings_.emplace(region, Mapping{static_cast<const char*>(p), reply.size});
    return absl::OkStatus();  // the mapping keeps the memory; the descriptor closes here
  };
  bool broken = false;
  Status opened = OpenRegions(
      control_.get(), regions,
      [&](uint32_t region) {
        mu_.AssertHeld();
        return mappings_.count(region) != 0;
      },
      kOpenMemfd, kOpenReply, absl::InfiniteFuture(), &removed_, answer, &broken);
  if (broken) broken_.store(true);
  return opened;
}

Status ShmPeerConnection::Execute(ChunkFeed& feed) {
  FERRY_RETURN_IF_ERROR(CheckConnectionUsable(closing_.load(), false, description_));
  absl::MutexLock lock(&mu_);
  FERRY_RETURN_IF_ERROR(
      CheckConnectionUsable(closing_.load() || !control_.valid(), broken_.load(), description_));
  auto fail = [&](const Status& s) {
    return Status(s.code(), absl::StrCat("shm read from ", description_, " ", s.message()));
  };
  if (feed.regions().empty()) return absl::OkStatus();
  if (Status drained = DrainNotices(); !drained.ok()) return fail(drained);
  // Every region the read touches is mapped before any copy starts.
  if (Status all = MapAll(feed.regions()); !all.ok()) return fail(all);
  std::map<uint32_t, Mapping> mapped;
  for (uint32_t region : feed.regions()) mapped.emplace(region, mappings_.at(region));

  // Threads take pieces until none is left or the read stops; the first bad piece stops all.
  absl::Mutex error_mu;
  Status error;
  std::atomic<bool> failed{false};
  auto work = [&] {
    Chunk c;
    while (!failed.load(std::memory_order_relaxed) && !closing_.load() && feed.Next(&c)) {
      const Mapping& m = mapped.at(c.remote_region);
      if (c.remote_offset > m.size || c.length > m.size - c.remote_offset) {
        absl::MutexLock lock(&error_mu);
        if (error.ok()) {
          error = absl::InvalidArgumentError(absl::StrCat(
              "failed: ", RangeText(c), " is outside the source's region of ", m.size, " bytes"));
        }
        failed.store(true);
        return;
      }
      std::memcpy(c.local, m.data + c.remote_offset, c.length);
      feed.Done(c);
    }
  };
  const size_t thread_count = static_cast<size_t>(options_.copy_threads);
  std::vector<std::thread> threads;
  threads.reserve(thread_count - 1);
  for (size_t t = 1; t < thread_count; ++t) threads.emplace_back(work);
  work();
  for (std::thread& t : threads) t.join();
  if (failed.load()) {
    absl::MutexLock lock(&error_mu);
    return fail(error);
  }
  if (closing_.load())
    return fail(absl::FailedPreconditionError("stopped: the connection was closed"));
  return absl::OkStatus();
}

}  // namespace ferry::internal::shm
