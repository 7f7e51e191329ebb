// Installing a pulled artifact (a compile-cache tree) into the live cache directory: the
// manifest's absolute source paths are mapped under the target (PlanInstallPaths), the files
// are written into a staging directory beside the target, and Commit swaps the staged tree in
// with one rename, so the live cache is either untouched or complete, even if the process is
// killed at any point. Nothing is ever written outside the target directory.
//
//   FERRY_ASSIGN_OR_RETURN(auto lock, InstallLock::Acquire(state_dir, dir, timeout));
//   FERRY_ASSIGN_OR_RETURN(auto paths, PlanInstallPaths(manifest, source_root));
//   FERRY_ASSIGN_OR_RETURN(auto install, StagedInstall::Create(dir));
//   FERRY_RETURN_IF_ERROR(install->CreateFiles(paths, sizes));
//   ... install->Write(file_index, offset, data, length) for every chunk ...
//   FERRY_RETURN_IF_ERROR(install->Commit());
#ifndef FERRY_ARTIFACTS_INSTALL_H_
#define FERRY_ARTIFACTS_INSTALL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "artifacts/manifest.h"
#include "common/fd.h"
#include "ferry/status.h"

namespace ferry::artifacts {

// Bounds on what a peer may make us write. The defaults are far above any real compile cache
// and only stop absurd (hostile or corrupt) manifests.
struct InstallLimits {
  uint64_t max_total_bytes = uint64_t{256} << 30;  // sum of file sizes
  uint64_t max_file_bytes = uint64_t{64} << 30;    // any one file
  uint64_t max_files = 1'000'000;
  size_t max_path_bytes = 4096;      // relative path length
  size_t max_component_bytes = 255;  // one path component
  size_t max_depth = 64;             // components in a relative path
};

// Maps each manifest file path (absolute, under `source_root`) to a path relative to the install
// directory. A path must start with source_root + "/" (compared by component: "/cache2/x" is not
// under "/cache"); the remainder must be non-empty, contain no NUL byte and no empty, "." or ".."
// component, and be within `limits`. No two files may map to the same path, and no file may be a
// directory of another ("a" and "a/b"). The file count, each size and the total are checked
// against `limits`. `source_root` must be absolute and normalized (no trailing slash except "/").
// Result index i corresponds to manifest.files[i].
// Errors: InvalidArgument naming the entry (file index and path) and the rule it breaks, e.g.
// "artifact file 3 '/etc/passwd' is outside the source root '/cache'; refusing to install it".
StatusOr<std::vector<std::string>> PlanInstallPaths(const Manifest& manifest,
                                                    std::string_view source_root,
                                                    const InstallLimits& limits = {});

// The canonical form of an install target: realpath(parent) + "/" + name, creating the parent
// (mode 0755) if it is missing. The target itself is not resolved (it may not exist, and a
// symlinked target is refused by StagedInstall). InvalidArgument for an empty path or one whose
// last component is "." or ".."; NotFound/PermissionDenied/Internal when the parent cannot be
// created or resolved, naming it.
StatusOr<std::string> CanonicalInstallTarget(const std::string& target_dir);

// One install of one artifact into `target_dir` (the live cache directory).
// Thread-compatible. REQUIRES: the caller holds the InstallLock for target_dir for the whole
// life of the object (Create removes leftovers of earlier installs, which would break a
// concurrent one).
//
// Contract with the cache's other writers: entries written into the live tree by another
// process between the start of Commit's merge (step 2) and the exchange (step 3) are lost with
// the old tree. Install while no job is writing that cache.
class StagedInstall {
 public:
  // `target_dir` need not exist (its parent is created, mode 0755, if missing); if it exists it
  // must be a directory and not a symlink (refused, naming it). Removes leftovers of earlier
  // killed installs beside it (entries of the parent named ".<name>.ferry-stage.<16 hex>" and
  // ".<name>.ferry-old.<16 hex>"), then creates the staging directory
  // "<parent>/.<name>.ferry-stage.<16 random hex>" on the same filesystem, so the final rename is
  // atomic.
  static StatusOr<std::unique_ptr<StagedInstall>> Create(const std::string& target_dir);

  // Removes the staging directory (recursively, never following symlinks) unless committed.
  ~StagedInstall();
  StagedInstall(const StagedInstall&) = delete;
  StagedInstall& operator=(const StagedInstall&) = delete;

  // Creates every file (relative paths from PlanInstallPaths, `sizes` parallel to them) inside
  // the stage, mode 0644, with O_CREAT|O_EXCL|O_NOFOLLOW, sized with ftruncate; intermediate
  // directories get mode 0755 and are opened component by component with O_NOFOLLOW, so an
  // existing symlink anywhere in the stage is refused (FailedPrecondition naming the entry),
  // never followed. Keeps file descriptors open for Write (up to a bound; beyond it Write
  // reopens the file, again without following symlinks). Call once, before Write.
  // Errors: InvalidArgument for mismatched vectors or a path that is not a clean relative path;
  // FailedPrecondition when called twice or after Commit; Internal for I/O errors, naming the
  // path and what to check.
  Status CreateFiles(const std::vector<std::string>& relative_paths,
                     const std::vector<uint64_t>& sizes);

  // Writes `length` bytes of `data` into file `index` at `offset` (pwrite, retried until done).
  // InvalidArgument for an unknown index or a range past the file's size; FailedPrecondition
  // before CreateFiles or after Commit.
  Status Write(uint32_t index, uint64_t offset, const void* data, size_t length);

  // Makes target_dir the staged tree, atomically:
  //  1. If target_dir exists and is non-empty, the entries of the live tree that the artifact
  //     does not contain are carried over into the stage (regular files hard-linked,
  //     directories recreated with their mode, symlinks recreated as the same symlink, never
  //     followed, anything else skipped), so local cache entries survive; entries the artifact
  //     contains (by path) are replaced by the artifact's.
  //  2. make the stage durable: one syncfs of its filesystem (else an fsync of every staged file,
  //     then every staged directory, deepest first).
  //  3. renameat2(RENAME_EXCHANGE) of the stage and target_dir when target_dir exists, else
  //     renameat2(RENAME_NOREPLACE). If the filesystem refuses RENAME_EXCHANGE (EINVAL/ENOSYS),
  //     falls back to rename(target_dir -> ".<name>.ferry-old.<hex>") then rename(stage ->
  //     target_dir): in the tiny window between the two, target_dir does not exist (a reader
  //     sees a missing cache, never a partial one), and a kill there leaves the old tree at the
  //     -old name (the next Create removes it; the next install recreates target_dir).
  //  4. fsync the parent directory; remove the old tree (a failure here is only logged: the
  //     next Create removes it).
  // Killed before step 3: target_dir untouched. Killed after: target_dir complete.
  // Errors: FailedPrecondition before CreateFiles or when already committed; Aborted when
  // target_dir changed under us (created, or replaced by a non-directory) during the install;
  // Internal for I/O errors. On error target_dir is untouched and the stage is left to the
  // destructor.
  Status Commit();

  const std::string& staging_dir() const { return staging_dir_; }
  const std::string& target_dir() const { return target_dir_; }  // canonical

  // Tests only: called with "before-exchange" and "after-exchange" inside Commit.
  std::function<void(std::string_view point)> hook_for_test;

 private:
  struct StagedFile {
    std::string path;  // relative to the stage
    uint64_t size = 0;
    internal::Fd fd;  // open for writing, or invalid when over the open-file bound
  };

  StagedInstall(std::string target_dir, std::string parent, std::string name,
                internal::Fd parent_fd, std::string stage_name, internal::Fd stage_fd);

  // Opens (creating when `create`) the stage directory `rel_dir` ("" is the stage itself),
  // component by component, never following symlinks. `for_entry` names the entry in errors.
  StatusOr<internal::Fd> OpenStageDir(std::string_view rel_dir, bool create,
                                      std::string_view for_entry);
  // Returns a writable fd for file `index`: its kept one, or one opened into `scratch`.
  StatusOr<int> FileFd(uint32_t index, internal::Fd& scratch);
  Status MergeLiveTree();
  Status SyncStage();

  std::string target_dir_;   // canonical
  std::string parent_;       // canonical parent of target_dir_
  std::string name_;         // last component of target_dir_
  internal::Fd parent_fd_;   // O_DIRECTORY
  std::string stage_name_;   // entry of parent_
  std::string staging_dir_;  // parent_ + "/" + stage_name_
  internal::Fd stage_fd_;    // O_DIRECTORY
  std::vector<StagedFile> files_;
  std::vector<std::string> dirs_;  // staged directories, relative to the stage (not "")
  bool files_created_ = false;
  bool committed_ = false;
};

}  // namespace ferry::artifacts

#endif  // FERRY_ARTIFACTS_INSTALL_H_
