// InstallLock: an flock per install target in the node's state directory, and JSON markers.
#include "artifacts/install_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "artifacts/install.h"
#include "common/hashing.h"
#include "common/logging.h"
#include "nlohmann/json.hpp"

namespace ferry::artifacts {
namespace {

using ::ferry::internal::ErrnoText;
using ::ferry::internal::Fd;

constexpr absl::Duration kPollInterval = absl::Milliseconds(50);
constexpr size_t kMaxMarkerBytes = 64 << 10;
constexpr char kDoneSuffix[] = ".done";
constexpr char kFailedSuffix[] = ".failed";

Status IoError(std::string_view what, const std::string& path, int err) {
  std::string msg = absl::StrCat(std::string(what), " '", path, "': ", ErrnoText(err));
  if (err == EACCES || err == EPERM) {
    return absl::PermissionDeniedError(
        absl::StrCat(msg, "; check the permissions of the artifact state directory"));
  }
  return absl::InternalError(msg);
}

// Creates `dir` (0700; missing parents 0755) and makes sure only we can use it: a directory,
// not a symlink, owned by our effective uid. Group and other permissions are removed (older
// ferry versions created it 0755, which let any local user open a lock file and hold a shared
// flock on it). A directory someone else owns is refused: its owner could plant markers.
Status PrepareStateDir(const std::string& dir) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    const std::string prefix = dir.substr(0, pos);
    if (::mkdir(prefix.c_str(), pos == dir.size() ? 0700 : 0755) != 0 && errno != EEXIST) {
      return IoError("cannot create the artifact state directory", prefix, errno);
    }
  }
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) {
    return IoError("cannot inspect the artifact state directory", dir, errno);
  }
  const auto refuse = [&](const std::string& why) {
    return absl::PermissionDeniedError(absl::StrCat(
        "artifact state directory '", dir, "' ", why,
        "; remove it, or set FERRY_ARTIFACT_STATE_DIR to a directory only this user (uid ",
        ::geteuid(), ") owns"));
  };
  if (!S_ISDIR(st.st_mode)) return refuse("is not a directory (a symlink?)");
  if (st.st_uid != ::geteuid()) {
    return refuse(absl::StrCat("is owned by uid ", st.st_uid, ", not by this user"));
  }
  if ((st.st_mode & 077) != 0 && ::chmod(dir.c_str(), 0700) != 0) {
    return IoError("cannot restrict the artifact state directory to its owner", dir, errno);
  }
  return absl::OkStatus();
}

// Why the file behind `fd` cannot be trusted as ours ("" when it can): it must be a regular file
// owned by our effective uid that nobody else can write.
std::string UntrustedFile(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return absl::StrCat("cannot fstat it: ", ErrnoText(errno));
  if (!S_ISREG(st.st_mode)) return "it is not a regular file";
  if (st.st_uid != ::geteuid()) return absl::StrCat("it is owned by uid ", st.st_uid);
  if ((st.st_mode & 022) != 0) return "others can write it";
  return "";
}

// The pid written in the lock file by its holder, or 0 if none can be read yet.
int ReadHolderPid(int fd) {
  char buf[32] = {};
  ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
  if (n <= 0) return 0;
  char* end = nullptr;
  long pid = std::strtol(buf, &end, 10);
  return (end != buf && pid > 0 && pid < (1L << 30)) ? static_cast<int>(pid) : 0;
}

std::string FormatMarkerTime(absl::Time t) {
  return absl::FormatTime(absl::RFC3339_full, t, absl::UTCTimeZone());
}

// Reads a string field of a marker; false if missing or not a string.
bool GetString(const nlohmann::json& j, const char* field, std::string& out) {
  auto it = j.find(field);
  if (it == j.end() || !it->is_string()) return false;
  out = it->get<std::string>();
  return true;
}

bool GetTime(const nlohmann::json& j, const char* field, absl::Time& out) {
  std::string text, err;
  return GetString(j, field, text) && absl::ParseTime(absl::RFC3339_full, text, &out, &err);
}

}  // namespace

InstallLock::InstallLock(std::string state_dir, std::string target, std::string hash16,
                         std::string lock_path, Fd fd)
    : state_dir_(std::move(state_dir)),
      target_(std::move(target)),
      hash16_(std::move(hash16)),
      lock_path_(std::move(lock_path)),
      fd_(std::move(fd)) {}

StatusOr<std::unique_ptr<InstallLock>> InstallLock::Acquire(
    const std::string& state_dir, const std::string& target_dir, absl::Duration timeout,
    std::function<void(int holder_pid)> on_wait) {
  if (state_dir.empty()) {
    return absl::InvalidArgumentError(
        "artifact state directory is empty; set FERRY_ARTIFACT_STATE_DIR or TMPDIR");
  }
  FERRY_ASSIGN_OR_RETURN(std::string target, CanonicalInstallTarget(target_dir));
  FERRY_RETURN_IF_ERROR(PrepareStateDir(state_dir));
  std::string hash16 = internal::Sha256Hex(target).substr(0, 16);
  std::string lock_path = absl::StrCat(state_dir, "/", hash16, ".lock");
  Fd fd(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd.valid()) return IoError("cannot open install lock file", lock_path, errno);
  if (std::string why = UntrustedFile(fd.get()); !why.empty()) {
    return absl::PermissionDeniedError(absl::StrCat("install lock file '", lock_path,
                                                    "' cannot be trusted: ", why,
                                                    "; remove it (no pull is using it then)"));
  }
  // Lock files older ferry versions created 0644: anyone could open one and hold a shared flock.
  if (::fchmod(fd.get(), 0600) != 0) {
    return IoError("cannot restrict install lock file to its owner", lock_path, errno);
  }

  const absl::Time deadline =
      timeout == absl::InfiniteDuration() ? absl::InfiniteFuture() : absl::Now() + timeout;
  bool told = false;
  int polls = 0;
  for (;;) {
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) == 0) break;
    if (errno == EINTR) continue;
    if (errno != EWOULDBLOCK) return IoError("cannot flock install lock file", lock_path, errno);
    const int holder = ReadHolderPid(fd.get());
    // The holder writes its pid just after locking: give it a poll to do so before reporting.
    if (!told && on_wait && (holder != 0 || polls >= 2)) {
      told = true;
      on_wait(holder);
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("timed out after ", absl::FormatDuration(timeout),
                       " waiting for install lock ", lock_path, " on ", target, ", held by pid ",
                       holder, "; wait for that pull to finish, or raise the lock timeout"));
    }
    absl::SleepFor(std::min(kPollInterval, deadline - absl::Now()));
    ++polls;
  }
  const std::string pid = absl::StrCat(::getpid(), "\n");
  if (::ftruncate(fd.get(), 0) != 0 ||
      ::pwrite(fd.get(), pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    // Only a diagnostic for waiters; the lock itself is held.
    spdlog::warn("cannot record our pid in install lock file {}: {}", lock_path, ErrnoText(errno));
  }
  return std::unique_ptr<InstallLock>(new InstallLock(
      state_dir, std::move(target), std::move(hash16), std::move(lock_path), std::move(fd)));
}

Status InstallLock::ValidateMarkerKey(std::string_view key) {
  bool ok = !key.empty() && key.size() <= 64;
  for (char c : key) {
    ok = ok && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                c == '_' || c == '-');
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "artifact marker key '", absl::CHexEscape(absl::string_view(key.data(), key.size())),
        "' must be 1 to 64 characters of [0-9a-zA-Z_-]; pass the source's "
        "mx_source_id"));
  }
  return absl::OkStatus();
}

StatusOr<std::string> InstallLock::MarkerPath(std::string_view key, std::string_view suffix) const {
  FERRY_RETURN_IF_ERROR(ValidateMarkerKey(key));
  return absl::StrCat(state_dir_, "/", hash16_, ".", std::string(key), std::string(suffix));
}

Status InstallLock::WriteMarker(std::string_view key, std::string_view suffix,
                                const std::string& json) {
  FERRY_ASSIGN_OR_RETURN(std::string path, MarkerPath(key, suffix));
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  {
    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd.valid()) return IoError("cannot create install marker", tmp, errno);
    size_t done = 0;
    while (done < json.size()) {
      ssize_t n = ::write(fd.get(), json.data() + done, json.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        Status s = IoError("cannot write install marker", tmp, errno);
        ::unlink(tmp.c_str());
        return s;
      }
      done += static_cast<size_t>(n);
    }
    if (::fsync(fd.get()) != 0) {
      Status s = IoError("cannot fsync install marker", tmp, errno);
      ::unlink(tmp.c_str());
      return s;
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    Status s = IoError("cannot rename install marker into place at", path, errno);
    ::unlink(tmp.c_str());
    return s;
  }
  Fd dir(::open(state_dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir.valid() || ::fsync(dir.get()) != 0) {
    return IoError("cannot fsync artifact state directory", state_dir_, errno);
  }
  return absl::OkStatus();
}

std::optional<std::string> InstallLock::ReadMarker(std::string_view key,
                                                   std::string_view suffix) const {
  StatusOr<std::string> path = MarkerPath(key, suffix);
  if (!path.ok()) {
    spdlog::warn("ignoring install marker lookup: {}", path.status().message());
    return std::nullopt;
  }
  Fd fd(::open(path->c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno != ENOENT) {
      spdlog::warn("ignoring unreadable install marker {}: {}", *path, ErrnoText(errno));
    }
    return std::nullopt;
  }
  // Only markers this user wrote count: a planted .done would skip an install and report
  // success, a planted .failed would stop every pull for its TTL.
  if (std::string why = UntrustedFile(fd.get()); !why.empty()) {
    spdlog::warn("ignoring install marker {}: {}", *path, why);
    return std::nullopt;
  }
  std::string text(kMaxMarkerBytes + 1, '\0');
  size_t got = 0;
  while (got < text.size()) {
    ssize_t n = ::read(fd.get(), text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      spdlog::warn("ignoring unreadable install marker {}: {}", *path, ErrnoText(errno));
      return std::nullopt;
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  if (got > kMaxMarkerBytes) {
    spdlog::warn("ignoring install marker {}: larger than {} bytes", *path, kMaxMarkerBytes);
    return std::nullopt;
  }
  text.resize(got);
  return text;
}

Status InstallLock::RemoveMarker(std::string_view key, std::string_view suffix) {
  FERRY_ASSIGN_OR_RETURN(std::string path, MarkerPath(key, suffix));
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return IoError("cannot remove install marker", path, errno);
  }
  return absl::OkStatus();
}

std::optional<InstallLock::DoneMarker> InstallLock::ReadDone(std::string_view key) const {
  std::optional<std::string> text = ReadMarker(key, kDoneSuffix);
  if (!text) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  DoneMarker m;
  if (!j.is_object() || !GetString(j, "artifact_id", m.artifact_id) ||
      !GetString(j, "source", m.source) || !GetTime(j, "installed_at", m.installed_at)) {
    spdlog::warn("ignoring corrupt install marker {}/{}.{}{}", state_dir_, hash16_,
                 std::string(key), kDoneSuffix);
    return std::nullopt;
  }
  return m;
}

Status InstallLock::WriteDone(std::string_view key, const DoneMarker& marker) {
  nlohmann::json j = {{"artifact_id", marker.artifact_id},
                      {"source", marker.source},
                      {"installed_at", FormatMarkerTime(marker.installed_at)},
                      {"target", target_}};
  FERRY_RETURN_IF_ERROR(WriteMarker(
      key, kDoneSuffix, j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)));
  return RemoveMarker(key, kFailedSuffix);
}

std::optional<InstallLock::FailedMarker> InstallLock::ReadFailed(std::string_view key) const {
  std::optional<std::string> text = ReadMarker(key, kFailedSuffix);
  if (!text) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  FailedMarker m;
  if (!j.is_object() || !GetString(j, "reason", m.reason) ||
      !GetTime(j, "failed_at", m.failed_at)) {
    spdlog::warn("ignoring corrupt install marker {}/{}.{}{}", state_dir_, hash16_,
                 std::string(key), kFailedSuffix);
    return std::nullopt;
  }
  return m;
}

Status InstallLock::WriteFailed(std::string_view key, const FailedMarker& marker) {
  nlohmann::json j = {{"reason", marker.reason},
                      {"failed_at", FormatMarkerTime(marker.failed_at)},
                      {"target", target_}};
  return WriteMarker(key, kFailedSuffix,
                     j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

Status InstallLock::ClearMarkers(std::string_view key) {
  FERRY_RETURN_IF_ERROR(RemoveMarker(key, kDoneSuffix));
  return RemoveMarker(key, kFailedSuffix);
}

bool FailureMarkerActive(const InstallLock::FailedMarker& marker, absl::Duration ttl,
                         absl::Time now) {
  return marker.failed_at + ttl > now;
}

}  // namespace ferry::artifacts
