#include "artifacts/manifest.h"

#include <cerrno>
#include <cstdlib>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/hashing.h"

namespace ferry::artifacts {
namespace {

using ::ferry::internal::Sha256Hex;

// Appends `s` as a JSON string the way serde_json writes it (contract 3.1 step 6).
void AppendJsonString(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 0xf]);
        } else {
          out.push_back(ch);
        }
    }
  }
  out.push_back('"');
}

Status Corrupt(std::string_view what) {
  return absl::DataLossError(absl::StrCat("artifact manifest rejected: ", std::string(what),
                                          "; the source's manifest is corrupt or tampered, ",
                                          "try another source"));
}

}  // namespace

Status ValidateChunkSize(int64_t chunk_size) {
  if (chunk_size < 1 || chunk_size > kMaxChunkSize) {
    return absl::InvalidArgumentError(absl::StrCat("SealOptions.chunk_size is ", chunk_size,
                                                   "; it must be between 1 and ", kMaxChunkSize,
                                                   " bytes (4 GiB) inclusive"));
  }
  return absl::OkStatus();
}

int64_t ChunkSizeFromEnvValue(const char* value) {
  if (value == nullptr) return kDefaultChunkSize;
  std::string_view s(value);
  // Python's int(): surrounding whitespace and an optional sign are allowed.
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\n')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n')) {
    s.remove_suffix(1);
  }
  bool negative = false;
  if (!s.empty() && (s.front() == '+' || s.front() == '-')) {
    negative = s.front() == '-';
    s.remove_prefix(1);
  }
  if (s.empty()) return kDefaultChunkSize;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return kDefaultChunkSize;
    int64_t d = c - '0';
    // Too large for int64: certainly above kMaxChunkSize, so sealing rejects it.
    if (v > (std::numeric_limits<int64_t>::max() - d) / 10) {
      return negative ? kDefaultChunkSize : std::numeric_limits<int64_t>::max();
    }
    v = v * 10 + d;
  }
  if (negative || v == 0) return kDefaultChunkSize;
  return v;
}

std::string ArtifactIdJson(const Manifest& m) {
  std::string out;
  out.reserve(128 + m.files.size() * 128 + m.chunks.size() * 112);
  absl::StrAppend(&out, "{\"manifest_version\":", m.manifest_version,
                  ",\"mx_source_type\":", m.mx_source_type, ",\"chunk_size\":", m.chunk_size,
                  ",\"files\":[");
  for (size_t i = 0; i < m.files.size(); ++i) {
    const ManifestFile& f = m.files[i];
    if (i > 0) out.push_back(',');
    absl::StrAppend(&out, "{\"file_index\":", f.file_index, ",\"path\":");
    AppendJsonString(out, f.path);
    absl::StrAppend(&out, ",\"size\":", f.size, ",\"checksum\":");
    AppendJsonString(out, f.checksum);
    out.push_back('}');
  }
  out += "],\"chunks\":[";
  for (size_t i = 0; i < m.chunks.size(); ++i) {
    const ManifestChunk& c = m.chunks[i];
    if (i > 0) out.push_back(',');
    absl::StrAppend(&out, "{\"chunk_index\":", c.chunk_index, ",\"file_index\":", c.file_index,
                    ",\"file_offset\":", c.file_offset, ",\"length\":", c.length, ",\"checksum\":");
    AppendJsonString(out, c.checksum);
    out.push_back('}');
  }
  out += "]}";
  return out;
}

std::string ArtifactId(const Manifest& manifest) { return Sha256Hex(ArtifactIdJson(manifest)); }

StatusOr<SourceSummary> SummarizeManifest(const Manifest& m) {
  constexpr uint64_t kMaxCount = std::numeric_limits<uint32_t>::max();
  if (m.files.size() > kMaxCount) {
    return absl::InvalidArgumentError(absl::StrCat("artifact manifest has ", m.files.size(),
                                                   " files; at most ", kMaxCount, " fit in u32"));
  }
  if (m.chunks.size() > kMaxCount) {
    return absl::InvalidArgumentError(absl::StrCat("artifact manifest has ", m.chunks.size(),
                                                   " chunks; at most ", kMaxCount,
                                                   " fit in u32; use a larger chunk size"));
  }
  SourceSummary s;
  for (const ManifestFile& f : m.files) {
    if (s.total_size > std::numeric_limits<uint64_t>::max() - f.size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "artifact manifest total size overflows u64 at file ", f.file_index, " '", f.path, "'"));
    }
    s.total_size += f.size;
  }
  s.artifact_id = ArtifactId(m);
  s.file_count = static_cast<uint32_t>(m.files.size());
  s.chunk_count = static_cast<uint32_t>(m.chunks.size());
  return s;
}

Status ValidateManifest(const Manifest& m, std::string_view artifact_id) {
  if (m.manifest_version != kManifestVersion) {
    return Corrupt(absl::StrCat("manifest_version is ", m.manifest_version, ", this build reads ",
                                kManifestVersion));
  }
  if (m.chunk_size < 1 || m.chunk_size > static_cast<uint64_t>(kMaxChunkSize)) {
    return Corrupt(
        absl::StrCat("chunk_size is ", m.chunk_size, ", outside [1, ", kMaxChunkSize, "]"));
  }
  constexpr uint64_t kMaxCount = std::numeric_limits<uint32_t>::max();
  if (m.files.size() > kMaxCount || m.chunks.size() > kMaxCount) {
    return Corrupt(absl::StrCat(m.files.size(), " files and ", m.chunks.size(),
                                " chunks; counts must fit in u32"));
  }
  for (size_t i = 0; i < m.files.size(); ++i) {
    if (m.files[i].file_index != i) {
      return Corrupt(absl::StrCat("file ", i, " ('", m.files[i].path, "') has file_index ",
                                  m.files[i].file_index, ", expected ", i));
    }
  }
  std::vector<uint64_t> covered(m.files.size(), 0);
  for (size_t i = 0; i < m.chunks.size(); ++i) {
    const ManifestChunk& c = m.chunks[i];
    if (c.chunk_index != i) {
      return Corrupt(
          absl::StrCat("chunk ", i, " has chunk_index ", c.chunk_index, ", expected ", i));
    }
    if (c.file_index >= m.files.size()) {
      return Corrupt(absl::StrCat("chunk ", i, " names file_index ", c.file_index,
                                  " but there are ", m.files.size(), " files"));
    }
    const ManifestFile& f = m.files[c.file_index];
    if (c.length == 0 || c.length > m.chunk_size) {
      return Corrupt(absl::StrCat("chunk ", i, " of file ", c.file_index, " ('", f.path,
                                  "') has length ", c.length, ", outside [1, chunk_size ",
                                  m.chunk_size, "]"));
    }
    uint64_t& done = covered[c.file_index];
    if (c.file_offset != done) {
      return Corrupt(absl::StrCat("chunk ", i, " of file ", c.file_index, " ('", f.path,
                                  "') starts at offset ", c.file_offset, ", expected ", done,
                                  " (chunks must be contiguous and in order)"));
    }
    if (c.length > f.size - done) {
      return Corrupt(absl::StrCat("chunk ", i, " of file ", c.file_index, " ('", f.path,
                                  "') ends at ", c.file_offset + c.length, ", past the file size ",
                                  f.size));
    }
    done += c.length;
  }
  for (size_t i = 0; i < m.files.size(); ++i) {
    if (covered[i] != m.files[i].size) {
      return Corrupt(absl::StrCat("file ", i, " ('", m.files[i].path, "') has size ",
                                  m.files[i].size, " but its chunks cover ", covered[i], " bytes"));
    }
  }
  std::string computed = ArtifactId(m);
  if (computed != artifact_id) {
    return Corrupt(absl::StrCat("artifact_id mismatch: the source claims ",
                                std::string(artifact_id), " but the manifest hashes to ",
                                computed));
  }
  return absl::OkStatus();
}

Status ValidateFetchedManifest(const Manifest& m, const SourceSummary& header,
                               std::string_view expected_artifact_id) {
  if (!expected_artifact_id.empty() && header.artifact_id != expected_artifact_id) {
    return Corrupt(absl::StrCat("the source's artifact_id ", header.artifact_id,
                                " is not the expected ", std::string(expected_artifact_id)));
  }
  if (header.file_count != m.files.size()) {
    return Corrupt(absl::StrCat("header file_count ", header.file_count, " but ", m.files.size(),
                                " files received"));
  }
  if (header.chunk_count != m.chunks.size()) {
    return Corrupt(absl::StrCat("header chunk_count ", header.chunk_count, " but ", m.chunks.size(),
                                " chunks received"));
  }
  FERRY_RETURN_IF_ERROR(ValidateManifest(m, header.artifact_id));
  // Checked last, so that a tampered table fails with the specific reason above.
  uint64_t total = 0;
  bool overflow = false;
  for (const ManifestFile& f : m.files) overflow |= __builtin_add_overflow(total, f.size, &total);
  if (overflow || header.total_size != total) {
    return Corrupt(absl::StrCat("header total_size ", header.total_size, " but the files hold ",
                                total, " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace ferry::artifacts
