// Reaper: moves records READY/INITIALIZING/UNKNOWN -> STALE after heartbeat_timeout without an
// update, and deletes STALE records after gc_timeout (contract 6.2, with the fixes of 14.2 and
// 14.8: records that never became READY expire too, and every write is a compare-and-set on
// the version the scan read, so a heartbeat landing mid-scan always wins).
//
// Thread-safe. Owns one thread between Start() and Stop(); RunOnce() may also be called
// directly (tests).
#ifndef FERRY_SERVER_REAPER_H_
#define FERRY_SERVER_REAPER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ferry/status.h"
#include "server/metrics.h"
#include "store/metadata_store.h"

namespace ferry::server {

struct ReaperOptions {
  absl::Duration scan_interval = absl::Seconds(30);      // > 0
  absl::Duration heartbeat_timeout = absl::Seconds(90);  // > 0
  absl::Duration gc_timeout = absl::Seconds(3600);       // > 0
  std::function<int64_t()> now_ms;                       // server clock, unix ms
};

struct ReaperPass {
  int scanned = 0;
  int marked_stale = 0;
  int deleted = 0;
  int conflicts = 0;  // lost a compare-and-set: the record changed after the scan read it
};

class Reaper {
 public:
  // Borrows `store` and `metrics`, which must outlive the reaper. InvalidArgument names the
  // field when a duration is not positive.
  static StatusOr<std::unique_ptr<Reaper>> Create(store::MetadataStore* store, Metrics* metrics,
                                                  ReaperOptions options);
  ~Reaper();
  Reaper(const Reaper&) = delete;
  Reaper& operator=(const Reaper&) = delete;

  // Starts the scan thread; the first scan runs at once.
  void Start();
  // Stops and joins the thread. Idempotent.
  void Stop();
  // One scan. Fails only if the store cannot list workers.
  StatusOr<ReaperPass> RunOnce();

 private:
  Reaper(store::MetadataStore* store, Metrics* metrics, ReaperOptions options);
  void Loop();

  store::MetadataStore* const store_;
  Metrics* const metrics_;
  const ReaperOptions options_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace ferry::server

#endif  // FERRY_SERVER_REAPER_H_
