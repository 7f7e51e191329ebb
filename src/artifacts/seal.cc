// SealDirectory (contract 4.1): walk, order, chunk and checksum a directory tree.
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "artifacts/crc32c.h"
#include "artifacts/manifest.h"
#include "common/fd.h"
#include "common/utf8.h"
#include "spdlog/spdlog.h"

namespace ferry::artifacts {
namespace {

using ::ferry::internal::ErrnoText;
using ::ferry::internal::Fd;

struct DirCloser {
  void operator()(DIR* d) const { ::closedir(d); }
};
using DirPtr = std::unique_ptr<DIR, DirCloser>;

// Contract 4.1 step 4: absolute, '/'-separated, no empty, "." or ".." component, valid UTF-8.
Status CheckManifestPath(const std::string& path) {
  if (path.size() < 2 || path[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("artifact path '", path, "' is not an absolute file path"));
  }
  size_t start = 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string_view part(path.data() + start, end - start);
    if (part.empty() || part == "." || part == "..") {
      return absl::InvalidArgumentError(absl::StrCat(
          "artifact path '", path, "' has an empty, '.' or '..' component; rename it"));
    }
    start = end + 1;
  }
  if (!::ferry::internal::IsValidUtf8(path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "artifact path '", path, "' is not valid UTF-8; ModelExpress manifests need UTF-8 names"));
  }
  return absl::OkStatus();
}

// Lists regular files under `root` (canonical, a directory) into `paths`, skipping symlinks
// and ignoring other non-regular files. Iterative, so deep trees cannot overflow the stack.
Status Walk(const std::string& root, std::vector<std::string>& paths) {
  std::vector<std::string> dirs = {root};
  while (!dirs.empty()) {
    std::string dir = std::move(dirs.back());
    dirs.pop_back();
    DirPtr d(::opendir(dir.c_str()));
    if (!d) {
      int err = errno;
      std::string msg =
          absl::StrCat("cannot open directory '", dir, "' while sealing: ", ErrnoText(err),
                       "; check its permissions");
      return err == EACCES ? absl::PermissionDeniedError(msg) : absl::InternalError(msg);
    }
    const std::string prefix = dir == "/" ? "/" : dir + "/";
    for (;;) {
      errno = 0;
      struct dirent* e = ::readdir(d.get());
      if (e == nullptr) {
        if (errno != 0) {
          int err = errno;
          return absl::InternalError(
              absl::StrCat("cannot read directory '", dir, "' while sealing: ", ErrnoText(err)));
        }
        break;
      }
      std::string_view name(e->d_name);
      if (name == "." || name == "..") continue;
      std::string path = prefix + std::string(name);
      struct stat st;
      if (::fstatat(::dirfd(d.get()), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        int err = errno;
        if (err == ENOENT) continue;  // removed since readdir
        return absl::InternalError(
            absl::StrCat("cannot stat '", path, "' while sealing: ", ErrnoText(err)));
      }
      if (S_ISLNK(st.st_mode)) {
        spdlog::warn("sealing {}: skipping symlink {}", root, path);
      } else if (S_ISDIR(st.st_mode)) {
        dirs.push_back(std::move(path));
      } else if (S_ISREG(st.st_mode)) {
        paths.push_back(std::move(path));
      }  // FIFOs, sockets and devices are ignored.
    }
  }
  return absl::OkStatus();
}

// Reads `file` once, appending its chunks to `m` and setting its size and checksum.
Status SealFile(ManifestFile& file, uint64_t chunk_size, std::vector<char>& buf, Manifest& m) {
  Fd fd(::open(file.path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) {
    int err = errno;
    std::string msg = absl::StrCat("cannot open '", file.path, "' while sealing: ", ErrnoText(err),
                                   "; check its permissions");
    return err == EACCES ? absl::PermissionDeniedError(msg) : absl::InternalError(msg);
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::AbortedError(
        absl::StrCat("'", file.path,
                     "' is no longer a regular file; the tree changed while sealing, seal again"));
  }
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  file.size = size;
  uint32_t file_crc = 0;
  uint64_t offset = 0;
  while (offset < size) {
    const uint64_t length = std::min<uint64_t>(chunk_size, size - offset);
    if (m.chunks.size() >= std::numeric_limits<uint32_t>::max()) {
      return absl::InvalidArgumentError(absl::StrCat("sealing needs more than 2^32-1 chunks (at '",
                                                     file.path,
                                                     "'); raise SealOptions.chunk_size"));
    }
    uint32_t chunk_crc = 0;
    for (uint64_t done = 0; done < length;) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), length - done));
      ssize_t got = ::pread(fd.get(), buf.data(), want, static_cast<off_t>(offset + done));
      if (got < 0) {
        int err = errno;
        if (err == EINTR) continue;
        return absl::InternalError(absl::StrCat("cannot read '", file.path, "' at offset ",
                                                offset + done, " while sealing: ", ErrnoText(err)));
      }
      if (got == 0) {
        return absl::AbortedError(absl::StrCat("'", file.path, "' shrank below ", size,
                                               " bytes while sealing; seal again"));
      }
      chunk_crc = Crc32c(buf.data(), static_cast<size_t>(got), chunk_crc);
      // A file of one chunk has the chunk's checksum; only longer files need a second pass.
      if (size > chunk_size) file_crc = Crc32c(buf.data(), static_cast<size_t>(got), file_crc);
      done += static_cast<uint64_t>(got);
    }
    if (size <= chunk_size) file_crc = chunk_crc;
    m.chunks.push_back(ManifestChunk{static_cast<uint32_t>(m.chunks.size()), file.file_index,
                                     offset, length, Crc32cHex(chunk_crc)});
    offset += length;
  }
  file.checksum = Crc32cHex(file_crc);
  return absl::OkStatus();
}

// The canonical root of `root` and its regular files, sorted, checked and indexed (sizes and
// checksums still empty).
StatusOr<Manifest> ListTree(const std::string& root, const SealOptions& options,
                            std::string* canonical_root) {
  FERRY_RETURN_IF_ERROR(ValidateChunkSize(options.chunk_size));
  if (options.read_buffer_bytes == 0) {
    return absl::InvalidArgumentError("SealOptions.read_buffer_bytes is 0; it must be positive");
  }
  char resolved[PATH_MAX];
  if (::realpath(root.c_str(), resolved) == nullptr) {
    int err = errno;
    std::string msg = absl::StrCat("cannot resolve artifact root '", root, "': ", ErrnoText(err),
                                   "; pass an existing directory");
    return err == ENOENT ? absl::NotFoundError(msg) : absl::InvalidArgumentError(msg);
  }
  const std::string canonical(resolved);
  struct stat st;
  if (::stat(canonical.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("artifact root '", root, "' (", canonical, ") is not a directory"));
  }
  std::vector<std::string> paths;
  FERRY_RETURN_IF_ERROR(Walk(canonical, paths));
  // std::string compares as unsigned bytes: '.' (0x2E) sorts before '/' (0x2F).
  std::sort(paths.begin(), paths.end());
  if (paths.size() > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("artifact root '", canonical, "' has ",
                                                   paths.size(), " files; at most 2^32-1"));
  }
  Manifest m;
  m.manifest_version = kManifestVersion;
  m.mx_source_type = options.mx_source_type;
  m.chunk_size = static_cast<uint64_t>(options.chunk_size);
  m.files.reserve(paths.size());
  for (size_t i = 0; i < paths.size(); ++i) {
    FERRY_RETURN_IF_ERROR(CheckManifestPath(paths[i]));
    m.files.push_back(ManifestFile{static_cast<uint32_t>(i), std::move(paths[i]), 0, ""});
  }
  *canonical_root = canonical;
  return m;
}

Status OpenError(const std::string& path, int err) {
  std::string msg = absl::StrCat("cannot open '", path, "' while sealing: ", ErrnoText(err),
                                 "; check its permissions");
  return err == EACCES ? absl::PermissionDeniedError(msg) : absl::InternalError(msg);
}

// Copies `file` (expected `size` bytes) to `dst`; Aborted if it is no longer that size.
Status CopyFile(const ManifestFile& file, uint64_t size, char* dst) {
  Fd fd(::open(file.path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return OpenError(file.path, errno);
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  uint64_t done = 0;
  for (;;) {
    // Ask for one byte more than expected at the end, to notice a file that grew.
    char extra;
    char* to = done < size ? dst + done : &extra;
    size_t want = done < size ? static_cast<size_t>(std::min<uint64_t>(size - done, 1u << 30)) : 1;
    ssize_t got = ::pread(fd.get(), to, want, static_cast<off_t>(done));
    if (got < 0) {
      int err = errno;
      if (err == EINTR) continue;
      return absl::InternalError(absl::StrCat("cannot read '", file.path, "' at offset ", done,
                                              " while sealing: ", ErrnoText(err)));
    }
    if (got == 0) break;
    if (done >= size) {
      return absl::AbortedError(
          absl::StrCat("'", file.path, "' grew beyond ", size, " bytes while sealing; seal again"));
    }
    done += static_cast<uint64_t>(got);
  }
  if (done != size) {
    return absl::AbortedError(absl::StrCat("'", file.path, "' shrank from ", size, " to ", done,
                                           " bytes while sealing; seal again"));
  }
  return absl::OkStatus();
}

}  // namespace

StatusOr<Manifest> SealDirectory(const std::string& root, const SealOptions& options) {
  std::string canonical;
  FERRY_ASSIGN_OR_RETURN(Manifest m, ListTree(root, options, &canonical));
  std::vector<char> buf(
      std::min<uint64_t>(options.read_buffer_bytes, static_cast<uint64_t>(options.chunk_size)));
  for (ManifestFile& f : m.files) {
    FERRY_RETURN_IF_ERROR(SealFile(f, m.chunk_size, buf, m));
  }
  return m;
}

StatusOr<Snapshot> SnapshotDirectory(const std::string& root, const SealOptions& options,
                                     const SnapshotAllocator& allocate) {
  Snapshot snap;
  FERRY_ASSIGN_OR_RETURN(snap.manifest, ListTree(root, options, &snap.root));
  Manifest& m = snap.manifest;
  if (m.files.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("artifact root '", snap.root, "' holds no regular file; nothing to seal"));
  }
  snap.file_offsets.reserve(m.files.size());
  for (ManifestFile& f : m.files) {
    struct stat st;
    if (::lstat(f.path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      return absl::AbortedError(absl::StrCat(
          "'", f.path,
          "' is no longer a regular file; the tree changed while sealing, seal again"));
    }
    f.size = static_cast<uint64_t>(st.st_size);
    snap.file_offsets.push_back(snap.total_bytes);
    snap.total_bytes += f.size;
  }
  FERRY_ASSIGN_OR_RETURN(char* base, allocate(std::max<uint64_t>(snap.total_bytes, 1)));
  for (ManifestFile& f : m.files) {
    char* data = base + snap.file_offsets[f.file_index];
    FERRY_RETURN_IF_ERROR(CopyFile(f, f.size, data));
    uint64_t offset = 0;
    while (offset < f.size) {
      const uint64_t length = std::min<uint64_t>(m.chunk_size, f.size - offset);
      if (m.chunks.size() >= std::numeric_limits<uint32_t>::max()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "sealing needs more than 2^32-1 chunks (at '", f.path, "'); raise the chunk size"));
      }
      m.chunks.push_back(ManifestChunk{static_cast<uint32_t>(m.chunks.size()), f.file_index, offset,
                                       length, Crc32cHex(Crc32c(data + offset, length, 0))});
      offset += length;
    }
    f.checksum = f.size <= m.chunk_size && f.size > 0 ? m.chunks.back().checksum
                                                      : Crc32cHex(Crc32c(data, f.size, 0));
  }
  return snap;
}

}  // namespace ferry::artifacts
