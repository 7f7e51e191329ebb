// PlanInstallPaths and StagedInstall: map, stage and atomically swap in an artifact tree.
#include "artifacts/install.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/fd.h"
#include "common/logging.h"

namespace ferry::artifacts {
namespace {

using ::ferry::internal::ErrnoText;
using ::ferry::internal::Fd;

// Files whose descriptors CreateFiles keeps open for Write; the rest are reopened per Write, so
// a cache of a million files cannot exhaust the process's descriptors.
constexpr size_t kMaxOpenFiles = 256;
constexpr char kStageInfix[] = ".ferry-stage.";
constexpr char kOldInfix[] = ".ferry-old.";
constexpr size_t kRandomHexLen = 16;
// ".<name>.ferry-stage.<16 hex>" must fit in NAME_MAX.
constexpr size_t kMaxTargetName = NAME_MAX - 1 - (sizeof(kStageInfix) - 1) - kRandomHexLen;

// `s` for an error message: control bytes (a NUL above all) become \xNN.
std::string Printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  static constexpr char kHex[] = "0123456789abcdef";
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

std::vector<std::string_view> SplitPath(std::string_view path) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    parts.push_back(path.substr(start, end - start));
    if (end == path.size()) break;
    start = end + 1;
  }
  return parts;
}

// Rejects anything but "a/b/c" with no empty, "." or ".." component and no NUL.
bool IsCleanRelativePath(std::string_view path) {
  if (path.empty() || path.find('\0') != std::string_view::npos) return false;
  for (std::string_view part : SplitPath(path)) {
    if (part.empty() || part == "." || part == "..") return false;
  }
  return true;
}

std::string RandomHex() {
  unsigned char bytes[kRandomHexLen / 2];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    ssize_t n = ::getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : bytes) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 0xf]);
  }
  return out;
}

bool IsLeftoverName(std::string_view entry, std::string_view prefix) {
  if (entry.size() != prefix.size() + kRandomHexLen || entry.substr(0, prefix.size()) != prefix) {
    return false;
  }
  return std::all_of(entry.begin() + prefix.size(), entry.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

Status IoError(std::string_view what, const std::string& path, int err) {
  std::string msg = absl::StrCat(std::string(what), " '", Printable(path), "': ", ErrnoText(err));
  if (err == EACCES || err == EPERM) {
    return absl::PermissionDeniedError(absl::StrCat(msg, "; check the permissions of the cache"));
  }
  if (err == ENOSPC || err == EDQUOT) {
    return absl::ResourceExhaustedError(absl::StrCat(msg, "; free space in the cache filesystem"));
  }
  return absl::InternalError(msg);
}

struct DirCloser {
  void operator()(DIR* d) const { ::closedir(d); }
};
using DirPtr = std::unique_ptr<DIR, DirCloser>;

// Opens directory `name` of `dirfd` for listing, never following a symlink.
StatusOr<DirPtr> OpenDirAt(int dirfd, const char* name, const std::string& display) {
  Fd fd(::openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return IoError("cannot open directory", display, errno);
  DIR* d = ::fdopendir(fd.get());
  if (d == nullptr) return IoError("cannot list directory", display, errno);
  fd.Release();
  return DirPtr(d);
}

// Lists the names in `d` except "." and "..".
StatusOr<std::vector<std::string>> ListDir(DIR* d, const std::string& display) {
  std::vector<std::string> names;
  for (;;) {
    errno = 0;
    struct dirent* e = ::readdir(d);
    if (e == nullptr) {
      if (errno != 0) return IoError("cannot list directory", display, errno);
      return names;
    }
    std::string_view n(e->d_name);
    if (n != "." && n != "..") names.emplace_back(n);
  }
}

// Removes `name` in `dirfd` and, for a directory, everything under it; never follows a symlink
// (a symlink is unlinked, not its target). Missing is success.
Status RemoveTreeAt(int dirfd, const std::string& name, const std::string& display) {
  struct stat st;
  if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    return errno == ENOENT ? absl::OkStatus() : IoError("cannot stat", display, errno);
  }
  if (S_ISDIR(st.st_mode)) {
    FERRY_ASSIGN_OR_RETURN(DirPtr d, OpenDirAt(dirfd, name.c_str(), display));
    // A read-only directory (some caches chmod theirs) must become writable to empty it.
    if ((st.st_mode & S_IRWXU) != S_IRWXU) ::fchmod(::dirfd(d.get()), st.st_mode | S_IRWXU);
    FERRY_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDir(d.get(), display));
    for (const std::string& n : names) {
      FERRY_RETURN_IF_ERROR(RemoveTreeAt(::dirfd(d.get()), n, display + "/" + n));
    }
    if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
      return IoError("cannot remove directory", display, errno);
    }
    return absl::OkStatus();
  }
  if (::unlinkat(dirfd, name.c_str(), 0) != 0 && errno != ENOENT) {
    return IoError("cannot remove", display, errno);
  }
  return absl::OkStatus();
}

Status FsyncFd(int fd, const std::string& display) {
  if (::fsync(fd) != 0) return IoError("cannot fsync", display, errno);
  return absl::OkStatus();
}

// Creates `dir` and its missing parents with mode 0755 (subject to the umask).
Status MakeDirs(const std::string& dir) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    const std::string prefix = dir.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return IoError("cannot create the install target's parent directory", prefix, errno);
    }
  }
  return absl::OkStatus();
}

// Copies regular file `name` from `from_fd` into a new file in `to_fd` with the same mode, and
// fsyncs it. Used when a hard link is refused (another filesystem, protected_hardlinks).
Status CopyFileAt(int from_fd, int to_fd, const char* name, mode_t mode,
                  const std::string& display) {
  Fd in(::openat(from_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!in.valid()) return IoError("cannot open live cache file to carry it over", display, errno);
  Fd out(::openat(to_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
  if (!out.valid()) return IoError("cannot create staged copy of", display, errno);
  std::vector<char> buf(size_t{1} << 20);
  for (;;) {
    ssize_t n = ::read(in.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return IoError("cannot read live cache file", display, errno);
    if (n == 0) break;
    for (ssize_t done = 0; done < n;) {
      ssize_t w = ::write(out.get(), buf.data() + done, static_cast<size_t>(n - done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return IoError("cannot write staged copy of", display, errno);
      done += w;
    }
  }
  ::fchmod(out.get(), mode);
  return FsyncFd(out.get(), display);
}

}  // namespace

StatusOr<std::vector<std::string>> PlanInstallPaths(const Manifest& manifest,
                                                    std::string_view source_root,
                                                    const InstallLimits& limits) {
  const std::string root(source_root);
  if (root.empty() || root[0] != '/' || (root.size() > 1 && root.back() == '/') ||
      (root.size() > 1 && !IsCleanRelativePath(std::string_view(root).substr(1)))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "artifact source root '", Printable(root),
        "' is not an absolute normalized path (no trailing slash, no empty, '.' or '..' "
        "component); pass the root the source sealed"));
  }
  if (manifest.files.size() > limits.max_files) {
    return absl::InvalidArgumentError(absl::StrCat("artifact has ", manifest.files.size(),
                                                   " files, more than the limit of ",
                                                   limits.max_files, "; refusing to install it"));
  }
  const std::string prefix = root == "/" ? root : root + "/";
  std::vector<std::string> out;
  out.reserve(manifest.files.size());
  std::unordered_map<std::string_view, size_t> index_of;  // relative path -> file index
  uint64_t total = 0;
  for (size_t i = 0; i < manifest.files.size(); ++i) {
    const ManifestFile& f = manifest.files[i];
    auto entry_error = [&](std::string_view rule) {
      return absl::InvalidArgumentError(absl::StrCat("artifact file ", i, " '", Printable(f.path),
                                                     "' ", std::string(rule),
                                                     "; refusing to install it"));
    };
    if (f.path.find('\0') != std::string::npos) return entry_error("contains a NUL byte");
    if (f.path == root) return entry_error("is the source root itself, not a file under it");
    if (f.path.compare(0, prefix.size(), prefix) != 0) {
      return entry_error(absl::StrCat("is outside the source root '", root, "'"));
    }
    std::string rel = f.path.substr(prefix.size());
    if (rel.empty()) return entry_error("is the source root itself, not a file under it");
    if (rel.size() > limits.max_path_bytes) {
      return entry_error(absl::StrCat("has a relative path of ", rel.size(),
                                      " bytes, longer than the limit of ", limits.max_path_bytes));
    }
    std::vector<std::string_view> parts = SplitPath(rel);
    if (parts.size() > limits.max_depth) {
      return entry_error(absl::StrCat(
          "is ", parts.size(), " components deep, deeper than the limit of ", limits.max_depth));
    }
    for (std::string_view part : parts) {
      if (part.empty()) return entry_error("has an empty path component");
      if (part == ".") return entry_error("has a '.' path component");
      if (part == "..") return entry_error("has a '..' path component");
      if (part.size() > limits.max_component_bytes) {
        return entry_error(absl::StrCat("has a path component of ", part.size(),
                                        " bytes, longer than the limit of ",
                                        limits.max_component_bytes));
      }
    }
    if (f.size > limits.max_file_bytes) {
      return entry_error(absl::StrCat("is ", f.size, " bytes, larger than the per-file limit of ",
                                      limits.max_file_bytes));
    }
    if (f.size > limits.max_total_bytes - std::min(total, limits.max_total_bytes)) {
      return entry_error(absl::StrCat("brings the artifact past the total size limit of ",
                                      limits.max_total_bytes, " bytes"));
    }
    total += f.size;
    out.push_back(std::move(rel));
  }
  // Duplicates, then directory-of-a-file conflicts (out's strings no longer move).
  for (size_t i = 0; i < out.size(); ++i) {
    auto [it, inserted] = index_of.emplace(out[i], i);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(
          "artifact file ", i, " '", Printable(manifest.files[i].path), "' maps to the same path '",
          Printable(out[i]), "' as file ", it->second, "; refusing to install it"));
    }
  }
  for (size_t i = 0; i < out.size(); ++i) {
    std::string_view rel = out[i];
    for (size_t slash = rel.find('/'); slash != std::string_view::npos;
         slash = rel.find('/', slash + 1)) {
      auto it = index_of.find(rel.substr(0, slash));
      if (it != index_of.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "artifact file ", it->second, " '", Printable(manifest.files[it->second].path),
            "' is also a directory of file ", i, " '", Printable(manifest.files[i].path),
            "'; refusing to install it"));
      }
    }
  }
  return out;
}

StatusOr<std::string> CanonicalInstallTarget(const std::string& target_dir) {
  std::string path = target_dir;
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const size_t slash = path.rfind('/');
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (name.empty() || name == "." || name == ".." || path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("install target '", Printable(target_dir),
                     "' does not name a directory (empty, '/', '.' or '..'); pass the cache "
                     "directory itself"));
  }
  const std::string parent =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  FERRY_RETURN_IF_ERROR(MakeDirs(parent));
  char resolved[PATH_MAX];
  if (::realpath(parent.c_str(), resolved) == nullptr) {
    return IoError("cannot resolve the install target's parent directory", parent, errno);
  }
  const std::string canonical_parent(resolved);
  return canonical_parent == "/" ? "/" + name : canonical_parent + "/" + name;
}

StagedInstall::StagedInstall(std::string target_dir, std::string parent, std::string name,
                             Fd parent_fd, std::string stage_name, Fd stage_fd)
    : target_dir_(std::move(target_dir)),
      parent_(std::move(parent)),
      name_(std::move(name)),
      parent_fd_(std::move(parent_fd)),
      stage_name_(std::move(stage_name)),
      staging_dir_((parent_ == "/" ? "" : parent_) + "/" + stage_name_),
      stage_fd_(std::move(stage_fd)) {}

StatusOr<std::unique_ptr<StagedInstall>> StagedInstall::Create(const std::string& target_dir) {
  FERRY_ASSIGN_OR_RETURN(std::string canonical, CanonicalInstallTarget(target_dir));
  const size_t slash = canonical.rfind('/');
  std::string parent = slash == 0 ? "/" : canonical.substr(0, slash);
  std::string name = canonical.substr(slash + 1);
  if (name.size() > kMaxTargetName) {
    return absl::InvalidArgumentError(absl::StrCat(
        "install target '", canonical, "' has a last component of ", name.size(),
        " bytes; at most ", kMaxTargetName, " fit beside the staging suffix; use a shorter name"));
  }
  Fd parent_fd(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!parent_fd.valid()) {
    return IoError("cannot open the install target's parent directory", parent, errno);
  }
  struct stat st;
  if (::fstatat(parent_fd.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (S_ISLNK(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "install target '", canonical,
          "' is a symlink; refusing to install through it; pass the directory it points to"));
    }
    if (!S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("install target '", canonical,
                       "' exists and is not a directory; remove it or pick another directory"));
    }
  } else if (errno != ENOENT) {
    return IoError("cannot stat install target", canonical, errno);
  }

  // Leftovers of killed installs into this target. The caller holds the InstallLock, so none
  // of them belongs to a live install.
  {
    FERRY_ASSIGN_OR_RETURN(DirPtr d, OpenDirAt(parent_fd.get(), ".", parent));
    FERRY_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDir(d.get(), parent));
    const std::string stage_prefix = absl::StrCat(".", name, kStageInfix);
    const std::string old_prefix = absl::StrCat(".", name, kOldInfix);
    for (const std::string& n : names) {
      if (!IsLeftoverName(n, stage_prefix) && !IsLeftoverName(n, old_prefix)) continue;
      const std::string display = absl::StrCat(parent == "/" ? "" : parent, "/", n);
      spdlog::info("removing {}, left over by an interrupted install into {}", display, canonical);
      FERRY_RETURN_IF_ERROR(RemoveTreeAt(parent_fd.get(), n, display));
    }
  }

  std::string stage_name = absl::StrCat(".", name, kStageInfix, RandomHex());
  const std::string stage_display = absl::StrCat(parent == "/" ? "" : parent, "/", stage_name);
  if (::mkdirat(parent_fd.get(), stage_name.c_str(), 0755) != 0) {
    return IoError("cannot create staging directory", stage_display, errno);
  }
  Fd stage_fd(::openat(parent_fd.get(), stage_name.c_str(),
                       O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!stage_fd.valid()) {
    Status s = IoError("cannot open staging directory", stage_display, errno);
    ::unlinkat(parent_fd.get(), stage_name.c_str(), AT_REMOVEDIR);
    return s;
  }
  ::fchmod(stage_fd.get(), 0755);
  return std::unique_ptr<StagedInstall>(
      new StagedInstall(std::move(canonical), std::move(parent), std::move(name),
                        std::move(parent_fd), std::move(stage_name), std::move(stage_fd)));
}

StagedInstall::~StagedInstall() {
  if (committed_ || !parent_fd_.valid()) return;
  files_.clear();
  stage_fd_.Reset();
  Status s = RemoveTreeAt(parent_fd_.get(), stage_name_, staging_dir_);
  if (!s.ok()) {
    spdlog::warn("abandoned install into {}: {} (the next install removes it)", target_dir_,
                 s.message());
  }
}

StatusOr<Fd> StagedInstall::OpenStageDir(std::string_view rel_dir, bool create,
                                         std::string_view for_entry) {
  Fd cur(::openat(stage_fd_.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cur.valid()) return IoError("cannot open staging directory", staging_dir_, errno);
  if (rel_dir.empty()) return cur;
  size_t end = 0;
  for (std::string_view part : SplitPath(rel_dir)) {
    end += part.size();
    const std::string comp(part);
    const std::string so_far(rel_dir.substr(0, end));
    ++end;  // the slash
    for (int attempt = 0;; ++attempt) {
      Fd next(::openat(cur.get(), comp.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (next.valid()) {
        cur = std::move(next);
        break;
      }
      const int err = errno;
      if (err == ELOOP || err == ENOTDIR) {
        return absl::FailedPreconditionError(absl::StrCat(
            "staged entry '", Printable(for_entry), "': '", Printable(so_far),
            "' already exists in staging directory '", staging_dir_,
            "' as a symlink or non-directory; refusing to follow it (is another process writing "
            "into the stage?)"));
      }
      if (err != ENOENT || !create || attempt > 0) {
        return IoError("cannot open staged directory", staging_dir_ + "/" + so_far, err);
      }
      if (::mkdirat(cur.get(), comp.c_str(), 0755) == 0) {
        dirs_.push_back(so_far);
      } else if (errno != EEXIST) {
        return IoError("cannot create staged directory", staging_dir_ + "/" + so_far, errno);
      }
    }
    if (create) ::fchmod(cur.get(), 0755);
  }
  return cur;
}

Status StagedInstall::CreateFiles(const std::vector<std::string>& relative_paths,
                                  const std::vector<uint64_t>& sizes) {
  if (committed_ || files_created_) {
    return absl::FailedPreconditionError(absl::StrCat("CreateFiles for install into ", target_dir_,
                                                      " called twice or after Commit"));
  }
  if (relative_paths.size() != sizes.size()) {
    return absl::InvalidArgumentError(absl::StrCat("CreateFiles for install into ", target_dir_,
                                                   ": ", relative_paths.size(), " paths but ",
                                                   sizes.size(), " sizes; pass one size per path"));
  }
  files_created_ = true;
  files_.reserve(relative_paths.size());
  std::string dir_rel = "\n";  // no valid relative dir, so the first file opens its dir
  Fd dir_fd;
  for (size_t i = 0; i < relative_paths.size(); ++i) {
    const std::string& rel = relative_paths[i];
    if (!IsCleanRelativePath(rel)) {
      return absl::InvalidArgumentError(
          absl::StrCat("staged file ", i, " '", Printable(rel),
                       "' is not a clean relative path; plan paths with PlanInstallPaths"));
    }
    const size_t slash = rel.rfind('/');
    const std::string parent = slash == std::string::npos ? "" : rel.substr(0, slash);
    const std::string leaf = slash == std::string::npos ? rel : rel.substr(slash + 1);
    if (parent != dir_rel) {
      FERRY_ASSIGN_OR_RETURN(dir_fd, OpenStageDir(parent, /*create=*/true, rel));
      dir_rel = parent;
    }
    Fd fd(::openat(dir_fd.get(), leaf.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                   0644));
    if (!fd.valid()) {
      const int err = errno;
      if (err == EEXIST || err == ELOOP || err == EISDIR) {
        return absl::FailedPreconditionError(absl::StrCat(
            "staged file ", i, " '", Printable(rel), "' already exists in staging directory '",
            staging_dir_, "' (", ErrnoText(err),
            "); refusing to write through it (is another process writing into the stage?)"));
      }
      return IoError("cannot create staged file", staging_dir_ + "/" + rel, err);
    }
    ::fchmod(fd.get(), 0644);
    if (::ftruncate(fd.get(), static_cast<off_t>(sizes[i])) != 0) {
      return IoError(absl::StrCat("cannot size (", sizes[i], " bytes) staged file"),
                     staging_dir_ + "/" + rel, errno);
    }
    if (i >= kMaxOpenFiles) fd.Reset();
    files_.push_back(StagedFile{rel, sizes[i], std::move(fd)});
  }
  return absl::OkStatus();
}

StatusOr<int> StagedInstall::FileFd(uint32_t index, Fd& scratch) {
  StagedFile& f = files_[index];
  if (f.fd.valid()) return f.fd.get();
  const size_t slash = f.path.rfind('/');
  const std::string parent = slash == std::string::npos ? "" : f.path.substr(0, slash);
  const std::string leaf = slash == std::string::npos ? f.path : f.path.substr(slash + 1);
  FERRY_ASSIGN_OR_RETURN(Fd dir, OpenStageDir(parent, /*create=*/false, f.path));
  scratch = Fd(::openat(dir.get(), leaf.c_str(), O_WRONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!scratch.valid())
    return IoError("cannot reopen staged file", staging_dir_ + "/" + f.path, errno);
  return scratch.get();
}

Status StagedInstall::Write(uint32_t index, uint64_t offset, const void* data, size_t length) {
  if (committed_ || !files_created_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Write for install into ", target_dir_, " called before CreateFiles or after Commit"));
  }
  if (index >= files_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("Write to staged file ", index, " for ",
                                                   target_dir_, ": only ", files_.size(),
                                                   " files were created"));
  }
  const StagedFile& f = files_[index];
  if (offset > f.size || length > f.size - offset) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Write of ", length, " bytes at offset ", offset, " to staged file ", index, " '",
        Printable(f.path), "' goes past its size of ", f.size, " bytes; the chunk table is wrong"));
  }
  Fd scratch;
  FERRY_ASSIGN_OR_RETURN(int fd, FileFd(index, scratch));
  const char* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < length) {
    ssize_t n = ::pwrite(fd, p + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return IoError("cannot write staged file", staging_dir_ + "/" + f.path, errno);
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

Status StagedInstall::MergeLiveTree() {
  // Work list of directories present in both trees: (relative path, live fd, stage fd).
  struct Pair {
    std::string rel;
    Fd live;
    Fd stage;
  };
  std::vector<Pair> work;
  {
    Fd live(
        ::openat(parent_fd_.get(), name_.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!live.valid()) return IoError("cannot open live cache directory", target_dir_, errno);
    FERRY_ASSIGN_OR_RETURN(Fd stage, OpenStageDir("", false, ""));
    work.push_back(Pair{"", std::move(live), std::move(stage)});
  }
  while (!work.empty()) {
    Pair p = std::move(work.back());
    work.pop_back();
    const std::string live_display = p.rel.empty() ? target_dir_ : target_dir_ + "/" + p.rel;
    FERRY_ASSIGN_OR_RETURN(DirPtr d, OpenDirAt(p.live.get(), ".", live_display));
    FERRY_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDir(d.get(), live_display));
    for (const std::string& n : names) {
      const std::string rel = p.rel.empty() ? n : p.rel + "/" + n;
      const std::string display = target_dir_ + "/" + rel;
      struct stat live_st, stage_st;
      if (::fstatat(p.live.get(), n.c_str(), &live_st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) continue;  // removed meanwhile
        return IoError("cannot stat live cache entry", display, errno);
      }
      const bool in_stage =
          ::fstatat(p.stage.get(), n.c_str(), &stage_st, AT_SYMLINK_NOFOLLOW) == 0;
      if (!in_stage && errno != ENOENT) return IoError("cannot stat staged entry", rel, errno);
      if (in_stage) {
        // The artifact has this path: its version wins, except that two directories merge.
        if (!S_ISDIR(live_st.st_mode) || !S_ISDIR(stage_st.st_mode)) continue;
        Fd live(::openat(p.live.get(), n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!live.valid()) return IoError("cannot open live cache directory", display, errno);
        FERRY_ASSIGN_OR_RETURN(Fd stage, OpenStageDir(rel, false, rel));
        work.push_back(Pair{rel, std::move(live), std::move(stage)});
      } else if (S_ISREG(live_st.st_mode)) {
        if (::linkat(p.live.get(), n.c_str(), p.stage.get(), n.c_str(), 0) != 0) {
          // Another filesystem below target_dir, or fs.protected_hardlinks: copy instead.
          FERRY_RETURN_IF_ERROR(
              CopyFileAt(p.live.get(), p.stage.get(), n.c_str(), live_st.st_mode & 07777, display));
        }
      } else if (S_ISDIR(live_st.st_mode)) {
        if (::mkdirat(p.stage.get(), n.c_str(), 0700) != 0) {
          return IoError("cannot recreate live cache directory in the stage", display, errno);
        }
        dirs_.push_back(rel);
        Fd live(::openat(p.live.get(), n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!live.valid()) return IoError("cannot open live cache directory", display, errno);
        FERRY_ASSIGN_OR_RETURN(Fd stage, OpenStageDir(rel, false, rel));
        ::fchmod(stage.get(), live_st.st_mode & 07777);
        work.push_back(Pair{rel, std::move(live), std::move(stage)});
      } else if (S_ISLNK(live_st.st_mode)) {
        std::string target(static_cast<size_t>(live_st.st_size) + 1, '\0');
        ssize_t len = ::readlinkat(p.live.get(), n.c_str(), target.data(), target.size());
        if (len < 0 || static_cast<size_t>(len) >= target.size()) {
          return IoError("cannot read live cache symlink", display, len < 0 ? errno : EOVERFLOW);
        }
        target.resize(static_cast<size_t>(len));
        if (::symlinkat(target.c_str(), p.stage.get(), n.c_str()) != 0) {
          return IoError("cannot recreate live cache symlink in the stage", display, errno);
        }
      }
      // FIFOs, sockets and devices are not cache entries: skipped.
    }
  }
  return absl::OkStatus();
}

// One syncfs of the stage's filesystem makes every staged file and directory durable: far
// cheaper than an fsync per file for a cache of thousands of small files (each fsync waits for
// its own journal commit). It also flushes unrelated dirty data on that filesystem. Where
// syncfs fails (an old kernel reports no writeback errors through it, or an exotic
// filesystem), fall back to fsyncing each file and directory.
Status StagedInstall::SyncStage() {
  if (::syncfs(stage_fd_.get()) == 0) return absl::OkStatus();
  spdlog::warn("syncfs of {} failed ({}); fsyncing each staged file instead", staging_dir_,
               ErrnoText(errno));
  Fd scratch;
  for (uint32_t i = 0; i < files_.size(); ++i) {
    FERRY_ASSIGN_OR_RETURN(int fd, FileFd(i, scratch));
    FERRY_RETURN_IF_ERROR(FsyncFd(fd, staging_dir_ + "/" + files_[i].path));
    scratch.Reset();
  }
  std::vector<std::string> dirs = dirs_;
  std::stable_sort(dirs.begin(), dirs.end(), [](const std::string& a, const std::string& b) {
    return std::count(a.begin(), a.end(), '/') > std::count(b.begin(), b.end(), '/');
  });
  for (const std::string& rel : dirs) {
    FERRY_ASSIGN_OR_RETURN(Fd dir, OpenStageDir(rel, false, rel));
    FERRY_RETURN_IF_ERROR(FsyncFd(dir.get(), staging_dir_ + "/" + rel));
  }
  return FsyncFd(stage_fd_.get(), staging_dir_);
}

Status StagedInstall::Commit() {
  if (committed_ || !files_created_) {
    return absl::FailedPreconditionError(absl::StrCat("Commit of install into ", target_dir_,
                                                      " called before CreateFiles or twice"));
  }
  struct stat st;
  bool exists = false;
  if (::fstatat(parent_fd_.get(), name_.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (!S_ISDIR(st.st_mode)) {
      return absl::AbortedError(absl::StrCat(
          "install target '", target_dir_,
          "' was replaced by a symlink or non-directory during the install; check what else "
          "writes there, then retry"));
    }
    exists = true;
  } else if (errno != ENOENT) {
    return IoError("cannot stat install target", target_dir_, errno);
  }
  if (exists) {
    FERRY_RETURN_IF_ERROR(MergeLiveTree());
    ::fchmod(stage_fd_.get(), st.st_mode & 07777);
  }
  FERRY_RETURN_IF_ERROR(SyncStage());
  for (StagedFile& f : files_) f.fd.Reset();

  if (hook_for_test) hook_for_test("before-exchange");
  std::string old_name;  // where the old tree ends up, if any
  if (exists) {
    if (::renameat2(parent_fd_.get(), stage_name_.c_str(), parent_fd_.get(), name_.c_str(),
                    RENAME_EXCHANGE) == 0) {
      old_name = stage_name_;
    } else if (errno == EINVAL || errno == ENOSYS) {
      // No RENAME_EXCHANGE on this filesystem: two renames, with a window in which target_dir
      // is missing (see the header).
      old_name = absl::StrCat(".", name_, kOldInfix, RandomHex());
      if (::renameat(parent_fd_.get(), name_.c_str(), parent_fd_.get(), old_name.c_str()) != 0) {
        return IoError("cannot move the live cache aside", target_dir_, errno);
      }
      if (::renameat(parent_fd_.get(), stage_name_.c_str(), parent_fd_.get(), name_.c_str()) != 0) {
        const int err = errno;
        ::renameat(parent_fd_.get(), old_name.c_str(), parent_fd_.get(), name_.c_str());
        return IoError("cannot move the staged tree into place at", target_dir_, err);
      }
    } else {
      return IoError(
          "cannot exchange the staged tree with the live cache (is it a mount point? install into "
          "a directory below it)",
          target_dir_, errno);
    }
  } else {
    int rc = ::renameat2(parent_fd_.get(), stage_name_.c_str(), parent_fd_.get(), name_.c_str(),
                         RENAME_NOREPLACE);
    if (rc != 0 && (errno == EINVAL || errno == ENOSYS)) {
      rc = ::renameat(parent_fd_.get(), stage_name_.c_str(), parent_fd_.get(), name_.c_str());
    }
    if (rc != 0) {
      if (errno == EEXIST || errno == ENOTEMPTY) {
        return absl::AbortedError(absl::StrCat(
            "install target '", target_dir_,
            "' was created by someone else during the install; retry (the next attempt merges)"));
      }
      return IoError("cannot move the staged tree into place at", target_dir_, errno);
    }
  }
  committed_ = true;
  if (hook_for_test) hook_for_test("after-exchange");

  if (::fsync(parent_fd_.get()) != 0) {
    spdlog::warn("installed {} but fsync of {} failed: {}", target_dir_, parent_, ErrnoText(errno));
  }
  stage_fd_.Reset();
  if (!old_name.empty()) {
    const std::string display = absl::StrCat(parent_ == "/" ? "" : parent_, "/", old_name);
    Status s = RemoveTreeAt(parent_fd_.get(), old_name, display);
    if (!s.ok()) {
      spdlog::warn(
          "installed {} but could not remove the previous tree: {} (the next install "
          "removes it)",
          target_dir_, s.message());
    }
  }
  return absl::OkStatus();
}

}  // namespace ferry::artifacts
