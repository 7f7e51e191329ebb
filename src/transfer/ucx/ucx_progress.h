// The source-side progress thread: drives the transport's UCX worker so that reads which UCX
// serves in software (memory UCX did not allocate, the TCP transport between hosts) complete,
// and so the worker answers connection and keepalive messages. Event-driven: it sleeps in
// epoll on the worker's event fd (ucp_worker_get_efd + ucp_worker_arm) and costs nothing while
// no peer talks to it.
//
// Thread-safety: thread-safe. The worker is driven only by this thread between Start and Stop.
#ifndef FERRY_TRANSFER_UCX_UCX_PROGRESS_H_
#define FERRY_TRANSFER_UCX_UCX_PROGRESS_H_

#include <ucp/api/ucp.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "ferry/status.h"

namespace ferry::internal::ucx {

class ProgressThread {
 public:
  // Borrows `worker` (created by a context with UCP_FEATURE_WAKEUP), which must outlive this
  // object. Creates the epoll and wake-up fds and starts the thread.
  static StatusOr<std::unique_ptr<ProgressThread>> Start(ucp_worker_h worker);
  ~ProgressThread();  // Stop()
  ProgressThread(const ProgressThread&) = delete;
  ProgressThread& operator=(const ProgressThread&) = delete;

  // Returns once every ucp_worker_progress call that was running when Barrier was called has
  // returned (so a software read UCX was serving from some memory has finished). Returns at once
  // when the thread is stopped.
  void Barrier();

  // Stops and joins the thread. Idempotent.
  void Stop();

 private:
  ProgressThread(ucp_worker_h worker, int epfd, int wakefd)
      : worker_(worker), epfd_(epfd), wakefd_(wakefd) {}
  void Run();
  void Wake();

  ucp_worker_h worker_;
  const int epfd_;
  const int wakefd_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  absl::Mutex mu_;
  uint64_t passes_ ABSL_GUARDED_BY(mu_) = 0;  // completed progress passes
  bool running_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ferry::internal::ucx

#endif  // FERRY_TRANSFER_UCX_UCX_PROGRESS_H_
