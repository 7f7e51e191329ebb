#include "worker/artifact_state.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "artifacts/crc32c.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::worker {
namespace {

using ::testing::HasSubstr;

// An artifact of three files under /cache, chunk size 4, laid out back to back in a region
// whose base address is 0x1000.
ArtifactServing MakeServing() {
  const std::vector<std::pair<std::string, std::string>> files = {
      {"/cache/a.py", "print(1)\n"}, {"/cache/empty", ""}, {"/cache/sub/k.bin", "0123456789"}};
  ArtifactServing s;
  s.worker_id = "w1";
  s.worker_rank = 2;
  s.source_root = "/cache";
  s.transfer_blob = "blob";
  s.region = 1;
  s.region_base_address = 0x1000;
  artifacts::Manifest& m = s.manifest;
  m.mx_source_type = 4;
  m.chunk_size = 4;
  uint64_t offset = 0;
  for (const auto& [path, data] : files) {
    const uint32_t index = static_cast<uint32_t>(m.files.size());
    m.files.push_back({index, path, data.size(),
                       artifacts::Crc32cHex(artifacts::Crc32c(data.data(), data.size()))});
    for (uint64_t at = 0; at < data.size(); at += 4) {
      const uint64_t length = std::min<uint64_t>(4, data.size() - at);
      m.chunks.push_back({static_cast<uint32_t>(m.chunks.size()), index, at, length,
                          artifacts::Crc32cHex(artifacts::Crc32c(data.data() + at, length))});
    }
    s.file_offsets.push_back(offset);
    offset += data.size();
  }
  s.region_bytes = offset;
  return s;
}

TEST(ArtifactStateTest, CreateRefusesInconsistentServing) {
  {
    ArtifactServing s = MakeServing();
    s.worker_id.clear();
    EXPECT_THAT(ArtifactState::Create(s).status().message(), HasSubstr("worker_id"));
  }
  {
    ArtifactServing s = MakeServing();
    s.file_offsets.pop_back();
    EXPECT_THAT(ArtifactState::Create(s).status().message(), HasSubstr("file_offsets has 2"));
  }
  {
    ArtifactServing s = MakeServing();
    s.file_offsets[2] = s.region_bytes;  // 10 bytes past the end
    EXPECT_THAT(ArtifactState::Create(s).status().message(),
                HasSubstr("'/cache/sub/k.bin' (10 bytes at offset 19) lies outside the region"));
  }
  {
    ArtifactServing s = MakeServing();
    s.source_root = "/other";
    EXPECT_THAT(ArtifactState::Create(s).status().message(),
                HasSubstr("'/cache/a.py' is not under source_root '/other'"));
  }
  {
    ArtifactServing s = MakeServing();
    s.manifest.chunks[0].checksum = "00000000";
    // ArtifactId is recomputed from the manifest, so only the file coverage checks can fail;
    // a chunk past its file's size can.
    s.manifest.chunks[0].length = 5;
    EXPECT_TRUE(absl::IsInvalidArgument(ArtifactState::Create(s).status()));
  }
  {
    ArtifactServing s = MakeServing();
    s.signature = std::string(64, 's');
    EXPECT_THAT(ArtifactState::Create(s).status().message(), HasSubstr("set together"));
  }
}

TEST(ArtifactStateTest, HeaderChecksAndPages) {
  auto state = ArtifactState::Create(MakeServing());
  ASSERT_TRUE(state.ok()) << state.status();
  (*state)->SetMxSourceId("abcd");
  std::string mx;
  EXPECT_TRUE((*state)->Check("", "", &mx).ok());
  EXPECT_EQ(mx, "abcd");
  Status wrong = (*state)->Check("ffff", "", &mx);
  EXPECT_TRUE(absl::IsFailedPrecondition(wrong));
  EXPECT_THAT(wrong.message(), HasSubstr("mx_source_id mismatch: expected abcd, got ffff"));
  Status unknown = (*state)->Check("abcd", "nope", &mx);
  EXPECT_TRUE(absl::IsFailedPrecondition(unknown));
  EXPECT_THAT(unknown.message(), HasSubstr("unknown artifact_id nope"));

  model_express::p2p::GetArtifactManifestHeaderResponse header;
  (*state)->FillHeader("abcd", &header);
  EXPECT_EQ(header.artifact_id(), artifacts::ArtifactId((*state)->serving().manifest));
  EXPECT_EQ(header.file_count(), 3u);
  EXPECT_EQ(header.chunk_count(), 6u);  // 3 + 0 + 3
  EXPECT_EQ(header.total_size(), 19u);
  EXPECT_EQ(header.chunk_size(), 4u);
  EXPECT_EQ(header.worker_rank(), 2u);
  ASSERT_EQ(header.files_size(), 3);
  EXPECT_EQ(header.files(2).path(), "/cache/sub/k.bin");

  model_express::p2p::GetArtifactManifestChunksResponse page;
  ASSERT_TRUE((*state)->FillChunks("abcd", 0, 4, &page).ok());
  EXPECT_EQ(page.chunks_size(), 4);
  EXPECT_EQ(page.next_page_token(), "4");
  page.Clear();
  ASSERT_TRUE((*state)->FillChunks("abcd", 4, 4, &page).ok());
  EXPECT_EQ(page.start_chunk_index(), 4u);
  EXPECT_EQ(page.chunks_size(), 2);
  EXPECT_EQ(page.chunks(1).chunk_index(), 5u);
  EXPECT_EQ(page.next_page_token(), "");
  page.Clear();
  ASSERT_TRUE((*state)->FillChunks("abcd", 6, 0, &page).ok());  // at the end: an empty page
  EXPECT_EQ(page.chunks_size(), 0);
  EXPECT_TRUE(absl::IsInvalidArgument((*state)->FillChunks("abcd", 7, 0, &page)));
  page.Clear();
  ASSERT_TRUE((*state)->FillChunks("abcd", 0, 100000, &page).ok());  // capped at 1024
  EXPECT_EQ(page.chunks_size(), 6);
}

TEST(ArtifactStateTest, LeasesAreBoundedExpireAndRelease) {
  absl::Time now = absl::FromUnixSeconds(1000);
  auto state = ArtifactState::Create(MakeServing(),
                                     LeaseOptions{absl::Seconds(10), 2, [&now] { return now; }});
  ASSERT_TRUE(state.ok()) << state.status();

  model_express::p2p::PrepareArtifactChunkResponse a, b, c;
  ASSERT_TRUE((*state)->Prepare("abcd", 4, &a).ok());
  // Chunk 4 is k.bin's second chunk: file offset 4 of the file at region offset 9.
  EXPECT_EQ(a.source().addr(), 0x1000u + 9 + 4);
  EXPECT_EQ(a.source().length(), 4u);
  EXPECT_EQ(a.chunk().file_index(), 2u);
  EXPECT_EQ(a.source_metadata(), "blob");
  EXPECT_EQ(a.lease_id().size(), 32u);
  ASSERT_TRUE((*state)->Prepare("abcd", 0, &b).ok());
  EXPECT_NE(a.lease_id(), b.lease_id());
  Status full = (*state)->Prepare("abcd", 1, &c);
  EXPECT_TRUE(absl::IsResourceExhausted(full));
  EXPECT_THAT(full.message(), HasSubstr("all 2 artifact chunk leases are outstanding"));
  EXPECT_TRUE(absl::IsInvalidArgument((*state)->Prepare("abcd", 6, &c)));

  model_express::p2p::ReleaseArtifactChunkResponse released;
  ASSERT_TRUE((*state)->Release("abcd", a.lease_id(), &released).ok());
  EXPECT_EQ(released.chunk().chunk_index(), 4u);
  EXPECT_TRUE(absl::IsNotFound((*state)->Release("abcd", a.lease_id(), &released)));
  EXPECT_EQ((*state)->outstanding_leases(), 1);

  // b expires after its ttl; its slot comes back and releasing it is NotFound.
  now += absl::Seconds(10);
  EXPECT_TRUE((*state)->Prepare("abcd", 1, &c).ok());
  EXPECT_EQ((*state)->outstanding_leases(), 1);
  Status gone = (*state)->Release("abcd", b.lease_id(), &released);
  EXPECT_TRUE(absl::IsNotFound(gone));
  EXPECT_THAT(gone.message(), HasSubstr("unknown or expired"));
}

TEST(ArtifactStateTest, TransferInfoCarriesLayoutAndSignature) {
  ArtifactServing s = MakeServing();
  s.signature = std::string(64, 's');
  s.signing_public_key = std::string(32, 'k');
  auto state = ArtifactState::Create(s);
  ASSERT_TRUE(state.ok()) << state.status();
  ferry::v1::GetArtifactTransferInfoResponse info;
  (*state)->FillTransferInfo("abcd", &info);
  EXPECT_EQ(info.mx_source_id(), "abcd");
  EXPECT_EQ(info.worker_id(), "w1");
  EXPECT_EQ(info.region(), 1u);
  EXPECT_THAT(info.file_offsets(), ::testing::ElementsAre(0, 9, 9));
  EXPECT_EQ(info.source_root(), "/cache");
  EXPECT_EQ(info.signature(), std::string(64, 's'));
  EXPECT_EQ(info.signing_public_key(), std::string(32, 'k'));
}

TEST(ArtifactStateTest, ManifestProtoRoundTrip) {
  const ArtifactServing s = MakeServing();
  for (const artifacts::ManifestFile& f : s.manifest.files) {
    model_express::p2p::ArtifactManifestFile p;
    ManifestFileToProto(f, &p);
    EXPECT_EQ(ManifestFileFromProto(p), f);
  }
  for (const artifacts::ManifestChunk& c : s.manifest.chunks) {
    model_express::p2p::ArtifactManifestChunk p;
    ManifestChunkToProto(c, &p);
    EXPECT_EQ(ManifestChunkFromProto(p), c);
  }
}

}  // namespace
}  // namespace ferry::worker
