#include "transfer/ucx/ucx_progress.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "transfer/ucx/ucx_handles.h"

namespace ferry::internal::ucx {

StatusOr<std::unique_ptr<ProgressThread>> ProgressThread::Start(ucp_worker_h worker) {
  int efd = -1;
  const ucs_status_t st = ucp_worker_get_efd(worker, &efd);
  if (st != UCS_OK) return UcsError("ucp_worker_get_efd", st, "UCX progress thread");
  const int epfd = ::epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) {
    return absl::InternalError(
        absl::StrCat("UCX progress thread: epoll_create1: ", std::strerror(errno)));
  }
  const int wakefd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wakefd < 0) {
    const int e = errno;
    ::close(epfd);
    return absl::InternalError(absl::StrCat("UCX progress thread: eventfd: ", std::strerror(e)));
  }
  std::unique_ptr<ProgressThread> t(new ProgressThread(worker, epfd, wakefd));
  for (int fd : {efd, wakefd}) {
    epoll_event ev = {};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
      return absl::InternalError(
          absl::StrCat("UCX progress thread: epoll_ctl: ", std::strerror(errno)));
    }
  }
  {
    absl::MutexLock lock(&t->mu_);
    t->running_ = true;
  }
  t->thread_ = std::thread([p = t.get()] { p->Run(); });
  return t;
}

ProgressThread::~ProgressThread() {
  Stop();
  ::close(wakefd_);
  ::close(epfd_);
}

void ProgressThread::Wake() {
  const uint64_t one = 1;
  (void)!::write(wakefd_, &one, sizeof(one));
}

void ProgressThread::Run() {
  epoll_event events[2];
  while (!stop_.load(std::memory_order_acquire)) {
    while (ucp_worker_progress(worker_) != 0) {
    }
    {
      absl::MutexLock lock(&mu_);
      ++passes_;
    }
    const ucs_status_t st = ucp_worker_arm(worker_);
    if (st == UCS_ERR_BUSY) continue;  // events arrived meanwhile: progress again
    if (st != UCS_OK) {
      spdlog::error("UCX progress thread: ucp_worker_arm: {}; polling instead",
                    ucs_status_string(st));
    }
    const int n = ::epoll_wait(epfd_, events, 2, st == UCS_OK ? -1 : 1);
    for (int i = 0; i < n; ++i) {
      if (events[i].data.fd == wakefd_) {
        uint64_t v;
        (void)!::read(wakefd_, &v, sizeof(v));
      }
    }
  }
  absl::MutexLock lock(&mu_);
  running_ = false;
}

void ProgressThread::Barrier() {
  absl::MutexLock lock(&mu_);
  if (!running_) return;
  // The pass running now (if any) ends with passes_ + 1; the wake-up guarantees one more pass
  // when the thread is asleep in epoll.
  const uint64_t target = passes_ + 1;
  Wake();
  auto done = [this, target]()
                  ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !running_ || passes_ >= target; };
  mu_.Await(absl::Condition(&done));
}

void ProgressThread::Stop() {
  stop_.store(true, std::memory_order_release);
  Wake();
  if (thread_.joinable()) thread_.join();
}

}  // namespace ferry::internal::ucx
