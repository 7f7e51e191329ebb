#include "artifacts/manifest.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "artifacts/crc32c.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace ferry::artifacts {
namespace {

using ::testing::HasSubstr;

nlohmann::json LoadVectors() {
  std::ifstream in(std::string(FERRY_SPEC_DIR) + "/vectors/artifact-manifest.json");
  EXPECT_TRUE(in.good()) << "cannot open " << FERRY_SPEC_DIR
                         << "/vectors/artifact-manifest.json; shared/ must sit beside the repo";
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

Manifest ManifestFromJson(const nlohmann::json& j) {
  Manifest m;
  m.manifest_version = j["manifest_version"].get<uint32_t>();
  m.mx_source_type = j["mx_source_type"].get<int32_t>();
  m.chunk_size = j["chunk_size"].get<uint64_t>();
  for (const auto& f : j["files"]) {
    m.files.push_back(ManifestFile{f["file_index"].get<uint32_t>(), f["path"].get<std::string>(),
                                   f["size"].get<uint64_t>(), f["checksum"].get<std::string>()});
  }
  for (const auto& c : j["chunks"]) {
    m.chunks.push_back(ManifestChunk{c["chunk_index"].get<uint32_t>(),
                                     c["file_index"].get<uint32_t>(),
                                     c["file_offset"].get<uint64_t>(), c["length"].get<uint64_t>(),
                                     c["checksum"].get<std::string>()});
  }
  return m;
}

// A fresh directory under TMPDIR, removed with everything in it on destruction. `path()` is
// canonical, as sealed manifests name it.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ferry-art-XXXXXX").string();
    char* made = ::mkdtemp(tmpl.data());
    EXPECT_NE(made, nullptr) << "mkdtemp " << tmpl;
    path_ = std::filesystem::canonical(tmpl).string();
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

  // Writes `content` to `relative`, creating parent directories.
  void Write(const std::string& relative, const std::string& content) const {
    std::filesystem::path p = std::filesystem::path(path_) / relative;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream out(p, std::ios::binary);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    ASSERT_TRUE(out.good()) << "write " << p;
  }

 private:
  std::string path_;
};

SealOptions Chunk(int64_t chunk_size, int32_t type = 3) {
  SealOptions o;
  o.chunk_size = chunk_size;
  o.mx_source_type = type;
  return o;
}

// Replaces the sealing root prefix of every path with `to`.
void Reroot(Manifest& m, const std::string& from, const std::string& to) {
  for (ManifestFile& f : m.files) {
    ASSERT_EQ(f.path.compare(0, from.size(), from), 0) << f.path;
    f.path = to + f.path.substr(from.size());
  }
}

TEST(ManifestVectorsTest, EveryDirectoryCaseSealsToTheExpectedManifestAndId) {
  nlohmann::json doc = LoadVectors();
  ASSERT_GE(doc["from_directory"].size(), 4u);
  for (const auto& v : doc["from_directory"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    // The vectors are rooted under /var/cache/ferry-vectors/<case>; build the same tree in a
    // temporary directory, seal it, and re-root the paths before comparing.
    TempDir dir;
    for (const auto& f : v["input_files"]) {
      ASSERT_TRUE(f.contains("content_hex")) << "vector file without content_hex";
      std::string content = FromHex(f["content_hex"].get<std::string>());
      ASSERT_EQ(content.size(), f["size"].get<size_t>());
      dir.Write(f["relative_path"].get<std::string>(), content);
    }
    auto sealed = SealDirectory(
        dir.path(), Chunk(v["chunk_size_argument"].get<int64_t>(), v["mx_source_type"].get<int>()));
    ASSERT_TRUE(sealed.ok()) << sealed.status();
    Reroot(*sealed, dir.path(), v["root"].get<std::string>());
    EXPECT_EQ(*sealed, ManifestFromJson(v["expected_manifest"]));
    EXPECT_EQ(ArtifactIdJson(*sealed), v["expected_canonical_json"].get<std::string>());
    const std::string id = v["expected_artifact_id"].get<std::string>();
    EXPECT_EQ(ArtifactId(*sealed), id);
    auto summary = SummarizeManifest(*sealed);
    ASSERT_TRUE(summary.ok()) << summary.status();
    const auto& meta = v["expected_source_metadata"];
    EXPECT_EQ(summary->artifact_id, meta["artifact_id"].get<std::string>());
    EXPECT_EQ(summary->total_size, meta["total_size"].get<uint64_t>());
    EXPECT_EQ(summary->file_count, meta["file_count"].get<uint32_t>());
    EXPECT_EQ(summary->chunk_count, meta["chunk_count"].get<uint32_t>());
    EXPECT_TRUE(ValidateManifest(*sealed, id).ok());
    EXPECT_TRUE(ValidateFetchedManifest(*sealed, *summary, id).ok());
  }
}

TEST(ManifestVectorsTest, EveryExplicitManifestHashesToItsId) {
  nlohmann::json doc = LoadVectors();
  ASSERT_GE(doc["explicit"].size(), 2u);
  for (const auto& v : doc["explicit"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    Manifest m = ManifestFromJson(v["manifest"]);
    EXPECT_EQ(ArtifactIdJson(m), v["expected_canonical_json"].get<std::string>());
    EXPECT_EQ(ArtifactId(m), v["expected_artifact_id"].get<std::string>());
  }
}

TEST(ManifestVectorsTest, ChunkSizeRules) {
  nlohmann::json rules = LoadVectors()["chunk_size_validation"];
  ASSERT_EQ(rules["default"].get<int64_t>(), kDefaultChunkSize);
  ASSERT_EQ(rules["maximum"].get<int64_t>(), kMaxChunkSize);
  TempDir dir;
  dir.Write("f", "x");
  for (const auto& r : rules["build_artifact_manifest_explicit_chunk_size"]) {
    const int64_t size = r["chunk_size"].get<int64_t>();
    SCOPED_TRACE(size);
    EXPECT_EQ(ValidateChunkSize(size).ok(), r["accepted"].get<bool>());
    auto sealed = SealDirectory(dir.path(), Chunk(size));
    EXPECT_EQ(sealed.ok(), r["accepted"].get<bool>()) << sealed.status();
    if (!sealed.ok()) {
      EXPECT_EQ(sealed.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(sealed.status().message(), HasSubstr("SealOptions.chunk_size is "));
    }
  }
  for (const auto& r : rules["env_MX_ARTIFACT_TRANSFER_CHUNK_SIZE_resolution"]) {
    std::string value = r["env_value"].is_null() ? "<unset>" : r["env_value"].get<std::string>();
    SCOPED_TRACE(value);
    const char* arg = r["env_value"].is_null() ? nullptr : value.c_str();
    EXPECT_EQ(ChunkSizeFromEnvValue(arg), r["resolved_chunk_size"].get<int64_t>());
  }
}

TEST(ManifestTest, PinnedUpstreamIdFromSection42) {
  Manifest m;
  m.manifest_version = 1;
  m.mx_source_type = 3;
  m.chunk_size = 8;
  m.files = {{0, "/cache/sub.txt", 4, "text-file-checksum"},
             {1, "/cache/sub/inner.bin", 5, "inner-file-checksum"}};
  m.chunks = {{0, 0, 0, 4, "text-chunk-checksum"}, {1, 1, 0, 5, "inner-chunk-checksum"}};
  EXPECT_EQ(ArtifactId(m), "a0f08392f2abc45f78bd59f0fe2c601750c2b270dc5cc37c2166d86a65398466");
  // Structurally valid, so only the id decides.
  EXPECT_TRUE(
      ValidateManifest(m, "a0f08392f2abc45f78bd59f0fe2c601750c2b270dc5cc37c2166d86a65398466").ok());
}

TEST(ManifestTest, DotSortsBeforeSlashAndChunksAreGlobal) {
  TempDir dir;
  dir.Write("sub/inner.bin", "12345");
  dir.Write("sub.txt", "abcd");
  dir.Write("a/b/c", "0123456789");
  auto m = SealDirectory(dir.path(), Chunk(4));
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->files.size(), 3u);
  EXPECT_EQ(m->files[0].path, dir.path() + "/a/b/c");
  EXPECT_EQ(m->files[1].path, dir.path() + "/sub.txt");
  EXPECT_EQ(m->files[2].path, dir.path() + "/sub/inner.bin");
  // a/b/c: 4+4+2, sub.txt: 4, sub/inner.bin: 4+1.
  ASSERT_EQ(m->chunks.size(), 6u);
  const std::vector<std::tuple<uint32_t, uint64_t, uint64_t>> want = {
      {0, 0, 4}, {0, 4, 4}, {0, 8, 2}, {1, 0, 4}, {2, 0, 4}, {2, 4, 1}};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(m->chunks[i].chunk_index, i);
    EXPECT_EQ(m->chunks[i].file_index, std::get<0>(want[i])) << i;
    EXPECT_EQ(m->chunks[i].file_offset, std::get<1>(want[i])) << i;
    EXPECT_EQ(m->chunks[i].length, std::get<2>(want[i])) << i;
  }
  EXPECT_EQ(m->chunks[3].checksum, "92c80a31");  // "abcd"
  EXPECT_EQ(m->files[0].checksum, Crc32cHex(Crc32c("0123456789", 10)));
  EXPECT_EQ(m->chunks[2].checksum, Crc32cHex(Crc32c("89", 2)));
}

TEST(ManifestTest, EmptyFileAndExactMultiple) {
  TempDir dir;
  dir.Write("empty", "");
  dir.Write("eight", "abcdefgh");
  auto m = SealDirectory(dir.path(), Chunk(4, 7));
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->files.size(), 2u);
  EXPECT_EQ(m->mx_source_type, 7);
  EXPECT_EQ(m->files[1].path, dir.path() + "/empty");
  EXPECT_EQ(m->files[1].size, 0u);
  EXPECT_EQ(m->files[1].checksum, "00000000");
  ASSERT_EQ(m->chunks.size(), 2u);  // no trailing zero-length chunk, none for the empty file
  EXPECT_EQ(m->chunks[0].checksum, "92c80a31");
  EXPECT_EQ(m->chunks[1].file_offset, 4u);
  EXPECT_EQ(m->chunks[1].length, 4u);
  EXPECT_EQ(m->files[0].checksum, Crc32cHex(Crc32c("abcdefgh", 8)));
  EXPECT_TRUE(ValidateManifest(*m, ArtifactId(*m)).ok());
}

TEST(ManifestTest, SymlinksSkippedAndFifosIgnored) {
  TempDir dir;
  dir.Write("real/file", "data");
  ASSERT_EQ(::symlink((dir.path() + "/real/file").c_str(), (dir.path() + "/link").c_str()), 0);
  ASSERT_EQ(::symlink((dir.path() + "/real").c_str(), (dir.path() + "/dirlink").c_str()), 0);
  ASSERT_EQ(::mkfifo((dir.path() + "/fifo").c_str(), 0600), 0);
  auto m = SealDirectory(dir.path(), Chunk(1024));
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->files.size(), 1u);
  EXPECT_EQ(m->files[0].path, dir.path() + "/real/file");
}

TEST(ManifestTest, RootResolvesThroughASymlinkToItsCanonicalPath) {
  TempDir dir;
  dir.Write("tree/f", "x");
  ASSERT_EQ(::symlink((dir.path() + "/tree").c_str(), (dir.path() + "/alias").c_str()), 0);
  auto m = SealDirectory(dir.path() + "/alias/./", Chunk(4));
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->files.size(), 1u);
  EXPECT_EQ(m->files[0].path, dir.path() + "/tree/f");
}

TEST(ManifestTest, LargeFileManyChunksWithSmallReadBuffer) {
  std::mt19937_64 rng(1);
  std::string big(1000003, '\0');
  for (char& c : big) c = static_cast<char>(rng());
  TempDir dir;
  dir.Write("big", big);
  SealOptions o = Chunk(65536);
  o.read_buffer_bytes = 1000;  // reads straddle chunk boundaries
  auto m = SealDirectory(dir.path(), o);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->chunks.size(), 16u);
  EXPECT_EQ(m->files[0].checksum, Crc32cHex(Crc32c(big.data(), big.size())));
  for (const ManifestChunk& c : m->chunks) {
    EXPECT_EQ(c.checksum, Crc32cHex(Crc32c(big.data() + c.file_offset, c.length)));
  }
  EXPECT_EQ(m->chunks.back().length, 1000003u - 15 * 65536);
  auto s = SummarizeManifest(*m);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->total_size, 1000003u);
}

TEST(ManifestTest, BadRootsAndOptions) {
  TempDir dir;
  dir.Write("file", "x");
  auto missing = SealDirectory(dir.path() + "/nope", Chunk(4));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("/nope"));
  auto not_dir = SealDirectory(dir.path() + "/file", Chunk(4));
  EXPECT_EQ(not_dir.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(not_dir.status().message(), HasSubstr("is not a directory"));
  auto zero = SealDirectory(dir.path(), Chunk(0));
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(zero.status().message(), HasSubstr("SealOptions.chunk_size is 0"));
  auto over = SealDirectory(dir.path(), Chunk(kMaxChunkSize + 1));
  EXPECT_EQ(over.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(over.status().message(), HasSubstr("SealOptions.chunk_size is 4294967297"));
  EXPECT_TRUE(SealDirectory(dir.path(), Chunk(kMaxChunkSize)).ok());
  EXPECT_EQ(SealOptions().chunk_size, 67108864);
}

TEST(ManifestTest, NonUtf8NameRejected) {
  TempDir dir;
  dir.Write(std::string("bad\xff", 4), "x");
  auto m = SealDirectory(dir.path(), Chunk(4));
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m.status().message(), HasSubstr("is not valid UTF-8"));
}

TEST(ManifestTest, JsonEscapesLikeSerde) {
  Manifest m;
  m.chunk_size = 1;
  m.mx_source_type = -2;
  m.files = {
      {0, std::string("/r/q\"b\\s\x01\x1f\b\t\n\f\r\x7f/caf\xc3\xa9 \xe2\x80\xa8"), 0, "00000000"}};
  EXPECT_EQ(ArtifactIdJson(m),
            std::string("{\"manifest_version\":1,\"mx_source_type\":-2,\"chunk_size\":1,\"files\":"
                        "[{\"file_index\":0,\"path\":\"/r/q\\\"b\\\\s\\u0001\\u001f\\b\\t\\n\\f\\r"
                        "\x7f/caf\xc3\xa9 \xe2\x80\xa8\",\"size\":0,\"checksum\":\"00000000\"}],"
                        "\"chunks\":[]}"));
}

class TamperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_.Write("a", "0123456789");
    dir_.Write("b", "xyz");
    auto m = SealDirectory(dir_.path(), Chunk(4));
    ASSERT_TRUE(m.ok()) << m.status();
    m_ = *m;
    id_ = ArtifactId(m_);
    ASSERT_TRUE(ValidateManifest(m_, id_).ok());
  }
  void ExpectRefused(const Manifest& m, const std::string& substr) {
    Status s = ValidateManifest(m, id_);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_THAT(s.message(), HasSubstr(substr));
  }
  TempDir dir_;
  Manifest m_;
  std::string id_;
};

TEST_F(TamperTest, ChunkChecksum) {
  Manifest m = m_;
  m.chunks[1].checksum = "deadbeef";
  ExpectRefused(m, "artifact_id mismatch: the source claims " + id_);
}

TEST_F(TamperTest, FileTableSize) {
  Manifest m = m_;
  m.files[0].size = 11;
  ExpectRefused(m, "file 0 ('" + dir_.path() + "/a') has size 11 but its chunks cover 10 bytes");
}

TEST_F(TamperTest, FileTablePathChangesTheId) {
  Manifest m = m_;
  m.files[1].path = "/etc/passwd";
  ExpectRefused(m, "artifact_id mismatch");
}

TEST_F(TamperTest, FileIndex) {
  Manifest m = m_;
  m.files[1].file_index = 0;
  ExpectRefused(m, "file 1 ('" + dir_.path() + "/b') has file_index 0, expected 1");
}

TEST_F(TamperTest, ChunkStructure) {
  Manifest gap = m_;
  gap.chunks[1].file_offset = 5;
  ExpectRefused(gap, "chunk 1 of file 0 ('" + dir_.path() + "/a') starts at offset 5, expected 4");
  Manifest index = m_;
  index.chunks[2].chunk_index = 7;
  ExpectRefused(index, "chunk 2 has chunk_index 7, expected 2");
  Manifest file = m_;
  file.chunks[3].file_index = 2;
  ExpectRefused(file, "chunk 3 names file_index 2 but there are 2 files");
  Manifest zero = m_;
  zero.chunks[2].length = 0;
  ExpectRefused(zero, "chunk 2 of file 0 ('" + dir_.path() + "/a') has length 0");
  Manifest big = m_;
  big.chunks[2].length = 5;
  ExpectRefused(big, "has length 5, outside [1, chunk_size 4]");
  Manifest past = m_;
  past.files[1].size = 2;
  ExpectRefused(past,
                "chunk 3 of file 1 ('" + dir_.path() + "/b') ends at 3, past the file size 2");
  Manifest missing = m_;
  missing.chunks.pop_back();
  ExpectRefused(missing, "file 1 ('" + dir_.path() + "/b') has size 3 but its chunks cover 0");
}

TEST_F(TamperTest, WrongIdAndHeader) {
  EXPECT_TRUE(ValidateManifest(m_, id_).ok());
  Status wrong = ValidateManifest(m_, std::string(64, '0'));
  EXPECT_EQ(wrong.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(wrong.message(), HasSubstr("the manifest hashes to " + id_));
  auto header = SummarizeManifest(m_);
  ASSERT_TRUE(header.ok());
  EXPECT_TRUE(ValidateFetchedManifest(m_, *header, id_).ok());
  EXPECT_TRUE(ValidateFetchedManifest(m_, *header, "").ok());
  Status expected = ValidateFetchedManifest(m_, *header, std::string(64, 'a'));
  EXPECT_THAT(expected.message(), HasSubstr("is not the expected " + std::string(64, 'a')));
  SourceSummary counts = *header;
  counts.chunk_count = 3;
  EXPECT_THAT(ValidateFetchedManifest(m_, counts, id_).message(),
              HasSubstr("header chunk_count 3 but 4 chunks received"));
  counts = *header;
  counts.file_count = 1;
  EXPECT_THAT(ValidateFetchedManifest(m_, counts, id_).message(),
              HasSubstr("header file_count 1 but 2 files received"));
}

}  // namespace
}  // namespace ferry::artifacts

namespace ferry::artifacts {
namespace {

// Memory for SnapshotDirectory, kept by the test.
struct SnapshotMemory {
  std::vector<char> bytes;
  int calls = 0;
  SnapshotAllocator allocator() {
    return [this](uint64_t n) -> StatusOr<char*> {
      ++calls;
      bytes.assign(n, '\0');
      return bytes.data();
    };
  }
};

TEST(SnapshotTest, EveryVectorTreeSnapshotsToTheSealedManifestAndItsBytes) {
  nlohmann::json doc = LoadVectors();
  for (const auto& v : doc["from_directory"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    TempDir dir;
    std::map<std::string, std::string> contents;
    for (const auto& f : v["input_files"]) {
      std::string content = FromHex(f["content_hex"].get<std::string>());
      dir.Write(f["relative_path"].get<std::string>(), content);
      contents[dir.path() + "/" + f["relative_path"].get<std::string>()] = content;
    }
    const SealOptions options =
        Chunk(v["chunk_size_argument"].get<int64_t>(), v["mx_source_type"].get<int>());
    auto sealed = SealDirectory(dir.path(), options);
    ASSERT_TRUE(sealed.ok()) << sealed.status();
    SnapshotMemory memory;
    auto snap = SnapshotDirectory(dir.path(), options, memory.allocator());
    if (sealed->files.empty()) {
      EXPECT_TRUE(absl::IsInvalidArgument(snap.status()));
      continue;
    }
    ASSERT_TRUE(snap.ok()) << snap.status();
    EXPECT_EQ(memory.calls, 1);
    EXPECT_EQ(snap->manifest, *sealed);
    EXPECT_EQ(snap->root, dir.path());
    ASSERT_EQ(snap->file_offsets.size(), sealed->files.size());
    uint64_t expected_offset = 0;
    for (const ManifestFile& f : sealed->files) {
      EXPECT_EQ(snap->file_offsets[f.file_index], expected_offset);
      EXPECT_EQ(std::string(memory.bytes.data() + expected_offset, f.size), contents[f.path])
          << f.path;
      expected_offset += f.size;
    }
    EXPECT_EQ(snap->total_bytes, expected_offset);
  }
}

TEST(SnapshotTest, LaterWritesDoNotChangeTheSnapshot) {
  TempDir dir;
  dir.Write("a", "before");
  SnapshotMemory memory;
  auto snap = SnapshotDirectory(dir.path(), Chunk(4), memory.allocator());
  ASSERT_TRUE(snap.ok()) << snap.status();
  dir.Write("a", "after, and longer");
  dir.Write("b", "new");
  EXPECT_EQ(std::string(memory.bytes.data(), 6), "before");
  EXPECT_EQ(snap->manifest.files.size(), 1u);
  EXPECT_EQ(snap->manifest.files[0].checksum, Crc32cHex(Crc32c("before", 6)));
  EXPECT_TRUE(ValidateManifest(snap->manifest, ArtifactId(snap->manifest)).ok());
}

TEST(SnapshotTest, EmptyTreeAndAllocatorErrors) {
  TempDir dir;
  SnapshotMemory memory;
  auto empty = SnapshotDirectory(dir.path(), Chunk(4), memory.allocator());
  EXPECT_TRUE(absl::IsInvalidArgument(empty.status()));
  EXPECT_THAT(std::string(empty.status().message()), ::testing::HasSubstr("holds no regular file"));
  EXPECT_EQ(memory.calls, 0);

  dir.Write("only-empty", "");
  auto zero = SnapshotDirectory(dir.path(), Chunk(4), memory.allocator());
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_EQ(memory.bytes.size(), 1u);  // at least one byte is asked for
  EXPECT_EQ(zero->total_bytes, 0u);
  EXPECT_TRUE(zero->manifest.chunks.empty());
  EXPECT_EQ(zero->manifest.files[0].checksum, "00000000");

  auto refused = SnapshotDirectory(dir.path(), Chunk(4), [](uint64_t) -> StatusOr<char*> {
    return absl::ResourceExhaustedError("no memory for you");
  });
  EXPECT_TRUE(absl::IsResourceExhausted(refused.status()));
}

}  // namespace
}  // namespace ferry::artifacts
