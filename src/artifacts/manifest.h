// Sealed artifact manifests and artifact_id, identical to ModelExpress's (contract section 4):
// a directory becomes a file table and a fixed-size chunk table with CRC32C checksums, and
// artifact_id is the SHA-256 of the manifest's canonical JSON.
#ifndef FERRY_ARTIFACTS_MANIFEST_H_
#define FERRY_ARTIFACTS_MANIFEST_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "ferry/status.h"

namespace ferry::artifacts {

inline constexpr uint32_t kManifestVersion = 1;
inline constexpr int64_t kDefaultChunkSize = int64_t{64} << 20;  // 64 MiB
inline constexpr int64_t kMaxChunkSize = int64_t{4} << 30;       // 4 GiB, inclusive

// One regular file. `path` is the canonical absolute POSIX path on the machine that sealed it.
struct ManifestFile {
  uint32_t file_index = 0;  // position in Manifest::files
  std::string path;
  uint64_t size = 0;
  std::string checksum;  // CRC32C of the whole file, 8 lowercase hex digits
  bool operator==(const ManifestFile&) const = default;
};

// One byte range of one file.
struct ManifestChunk {
  uint32_t chunk_index = 0;  // global position in Manifest::chunks
  uint32_t file_index = 0;
  uint64_t file_offset = 0;
  uint64_t length = 0;
  std::string checksum;  // CRC32C of the range, 8 lowercase hex digits
  bool operator==(const ManifestChunk&) const = default;
};

// Mirrors ModelExpress's ArtifactManifest. Files are sorted bytewise by path; chunks run through
// the files in that order, each file's chunks contiguous from offset 0. Empty files have none.
struct Manifest {
  uint32_t manifest_version = kManifestVersion;
  int32_t mx_source_type = 0;  // model_express::p2p::MxSourceType value, as given by the caller
  uint64_t chunk_size = 0;
  std::vector<ManifestFile> files;
  std::vector<ManifestChunk> chunks;
  bool operator==(const Manifest&) const = default;
};

struct SealOptions {
  // Bytes per chunk; must be in [1, kMaxChunkSize]. Default 64 MiB.
  int64_t chunk_size = kDefaultChunkSize;
  // Copied into Manifest::mx_source_type (e.g. MX_SOURCE_TYPE_TRITON_CACHE).
  int32_t mx_source_type = 0;
  // Size of each read while sealing; must be > 0. Default 8 MiB.
  size_t read_buffer_bytes = size_t{8} << 20;
};

// Returns OK if 1 <= chunk_size <= kMaxChunkSize, else InvalidArgument naming SealOptions.
Status ValidateChunkSize(int64_t chunk_size);

// The chunk size ModelExpress takes from MX_ARTIFACT_TRANSFER_CHUNK_SIZE when none is given:
// the value as a decimal integer, or kDefaultChunkSize when `value` is null, not an integer, or
// <= 0. A value above kMaxChunkSize is returned as is (sealing then fails), as upstream does.
// Reading the variable itself is the caller's job (the env table); this is only the rule.
int64_t ChunkSizeFromEnvValue(const char* value);

// Seals the tree under `root` (contract 4.1): resolves root (realpath), which must be a
// directory; walks it recursively, skipping symlinks and ignoring FIFOs, sockets and devices;
// lists each regular file by canonical absolute path in bytewise order; cuts each file into
// chunks of options.chunk_size and records CRC32C per chunk and per file, reading every file
// once. Errors: InvalidArgument for bad options, a root that is not a directory, or a path
// that is not UTF-8 or has an empty, "." or ".." component; NotFound for a missing root;
// Aborted when a file changes size while being read (seal again); PermissionDenied for an
// unreadable file or directory; Internal for other I/O errors.
// The manifest describes the bytes as read; a tree being written concurrently may mix states.
StatusOr<Manifest> SealDirectory(const std::string& root, const SealOptions& options);

// A sealed snapshot: the tree's files copied, back to back in file order, into memory the caller
// provides, and the manifest sealed from those copied bytes, so that later writes to the live
// tree cannot change what is served.
struct Snapshot {
  Manifest manifest;
  std::string root;                    // canonical root; every manifest path starts with root + "/"
  std::vector<uint64_t> file_offsets;  // by file_index: where the file starts in the memory
  uint64_t total_bytes = 0;            // sum of file sizes
};

// Returns writable memory of at least `bytes` bytes (called once, with bytes >= 1) that stays
// valid while the caller needs the snapshot.
using SnapshotAllocator = std::function<StatusOr<char*>(uint64_t bytes)>;

// SealDirectory's walk, ordering and checks, but every file is first copied into memory from
// `allocate` (sized by the files' sizes at the walk) and checksummed from the copy. Aborted when
// a file changed size between the walk and the copy (seal again); InvalidArgument when the tree
// holds no regular file; other errors as SealDirectory.
StatusOr<Snapshot> SnapshotDirectory(const std::string& root, const SealOptions& options,
                                     const SnapshotAllocator& allocate);

// The canonical JSON of contract 4.2: compact, keys in fixed (not sorted) order, strings raw
// UTF-8 with '"', '\\' and control characters escaped like serde_json. Hashes whatever the
// manifest says; nothing is validated.
std::string ArtifactIdJson(const Manifest& manifest);

// Lowercase hex SHA-256 (64 characters) of ArtifactIdJson(manifest).
std::string ArtifactId(const Manifest& manifest);

// What an ArtifactSourceMetadata carries about a manifest (node_rank is the caller's).
struct SourceSummary {
  std::string artifact_id;
  uint64_t total_size = 0;
  uint32_t file_count = 0;
  uint32_t chunk_count = 0;
  bool operator==(const SourceSummary&) const = default;
};

// Summarizes `manifest`. InvalidArgument if total_size overflows u64 or a count exceeds u32.
StatusOr<SourceSummary> SummarizeManifest(const Manifest& manifest);

// The target-side checks of contract 4.3 on a manifest fetched from a peer: version 1; chunk
// size in bounds; each file's file_index is its position; for chunk i, chunk_index == i,
// file_index < file count, 0 < length <= chunk_size, and file_offset continues its file's
// chunks with no gap or overlap and never past the file's size; every file fully covered; and
// ArtifactId(manifest) == `artifact_id` (the id the source claims). Fails with DataLoss naming
// the first failing file or chunk: the manifest is corrupt or tampered, so try another source.
Status ValidateManifest(const Manifest& manifest, std::string_view artifact_id);

// ValidateManifest plus the header checks of 4.3: `header` (the source's claimed summary) has
// the id the caller expects (skipped when `expected_artifact_id` is empty), and its file and
// chunk counts match the tables received.
Status ValidateFetchedManifest(const Manifest& manifest, const SourceSummary& header,
                               std::string_view expected_artifact_id);

}  // namespace ferry::artifacts

#endif  // FERRY_ARTIFACTS_MANIFEST_H_
