// One install per node: processes pulling into the same cache directory coordinate through a
// file lock in a state directory, and leave markers there (done, or failed with a time) so other
// ranks reuse the result or skip a doomed transfer for a while.
//
//   FERRY_ASSIGN_OR_RETURN(auto lock, InstallLock::Acquire(state_dir, dir, absl::Minutes(30)));
//   if (auto done = lock->ReadDone(key); done && done->artifact_id == id) return reuse;
//   if (auto failed = lock->ReadFailed(key);
//       failed && FailureMarkerActive(*failed, ttl, absl::Now())) return failed->reason;
//   ... install; then WriteDone(key, ...) or WriteFailed(key, ...) ...
#ifndef FERRY_ARTIFACTS_INSTALL_LOCK_H_
#define FERRY_ARTIFACTS_INSTALL_LOCK_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/time/time.h"
#include "common/fd.h"
#include "ferry/status.h"

namespace ferry::artifacts {

// Node-wide coordination of installs into one directory. State lives in `state_dir` (created
// 0700 if missing; the CLI passes FERRY_ARTIFACT_STATE_DIR or ${TMPDIR:-/tmp}/ferry-artifacts).
// Only this user may use it: a state directory owned by another uid, or that is not a directory,
// is PermissionDenied; group and other permissions on it and on the lock file are removed;
// markers not owned by this user, or writable by others, are ignored with a warning.
// The lock is an flock on <state_dir>/<hash16>.lock, where hash16 is the first 16 hex digits of
// SHA-256 of the canonical target (CanonicalInstallTarget). The lock file is never deleted
// (deleting a lock file races with a process about to lock it); it holds the last holder's pid.
//
// flock belongs to the open file description: a child forked while the lock is held shares it
// (the descriptor is close-on-exec, so an exec'd program does not). Two InstallLocks for the
// same target exclude each other even within one process.
//
// Thread-compatible.
class InstallLock {
 public:
  // Locks the target `target_dir` (its parent is created if missing). Waits up to `timeout`
  // (polling every ~50 ms; absl::InfiniteDuration() waits forever), then writes our pid into the
  // lock file. `on_wait` (optional) is called once, with the holder's pid (0 if unknown), if we
  // have to wait, so the CLI can say "waiting for another pull (pid N) installing into DIR".
  // Errors: DeadlineExceeded on timeout naming the lock file, the target and the holding pid;
  // InvalidArgument for an empty state_dir or a bad target; PermissionDenied/Internal for I/O
  // errors naming the path.
  static StatusOr<std::unique_ptr<InstallLock>> Acquire(
      const std::string& state_dir, const std::string& target_dir, absl::Duration timeout,
      std::function<void(int holder_pid)> on_wait = nullptr);

  // Unlocks (by closing the descriptor). The kernel also releases it if the process dies.
  ~InstallLock() = default;
  InstallLock(const InstallLock&) = delete;
  InstallLock& operator=(const InstallLock&) = delete;

  const std::string& canonical_target() const { return target_; }
  const std::string& lock_path() const { return lock_path_; }

  // Markers, keyed by `key` (the caller passes the artifact source's mx_source_id) plus the
  // target: files <state_dir>/<hash16>.<key>.done and .failed, JSON, written atomically (temp
  // file, fsync, rename, fsync of the state directory).
  struct DoneMarker {
    std::string artifact_id;
    std::string source;
    absl::Time installed_at;
  };
  struct FailedMarker {
    std::string reason;
    absl::Time failed_at;
  };

  // OK when `key` can name a marker: 1..64 characters of [0-9a-zA-Z_-]; else InvalidArgument.
  static Status ValidateMarkerKey(std::string_view key);

  // nullopt when absent, or (with a warning, never fatal) unreadable, corrupt or for a bad key.
  std::optional<DoneMarker> ReadDone(std::string_view key) const;
  // Also removes the .failed marker.
  Status WriteDone(std::string_view key, const DoneMarker& marker);
  std::optional<FailedMarker> ReadFailed(std::string_view key) const;
  Status WriteFailed(std::string_view key, const FailedMarker& marker);
  // Removes both markers; absent markers are fine.
  Status ClearMarkers(std::string_view key);

 private:
  InstallLock(std::string state_dir, std::string target, std::string hash16, std::string lock_path,
              internal::Fd fd);

  StatusOr<std::string> MarkerPath(std::string_view key, std::string_view suffix) const;
  Status WriteMarker(std::string_view key, std::string_view suffix, const std::string& json);
  std::optional<std::string> ReadMarker(std::string_view key, std::string_view suffix) const;
  Status RemoveMarker(std::string_view key, std::string_view suffix);

  std::string state_dir_;
  std::string target_;  // canonical
  std::string hash16_;
  std::string lock_path_;
  internal::Fd fd_;  // holds the flock
};

// The caller's TTL rule for failure markers: true while `marker.failed_at + ttl > now`.
bool FailureMarkerActive(const InstallLock::FailedMarker& marker, absl::Duration ttl,
                         absl::Time now);

}  // namespace ferry::artifacts

#endif  // FERRY_ARTIFACTS_INSTALL_LOCK_H_
