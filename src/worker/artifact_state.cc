#include "worker/artifact_state.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace ferry::worker {
namespace {

constexpr uint32_t kMaxPage = 1024;  // contract section 11

}  // namespace

void ManifestFileToProto(const artifacts::ManifestFile& file,
                         model_express::p2p::ArtifactManifestFile* out) {
  out->set_file_index(file.file_index);
  out->set_path(file.path);
  out->set_size(file.size);
  out->set_checksum(file.checksum);
}

void ManifestChunkToProto(const artifacts::ManifestChunk& chunk,
                          model_express::p2p::ArtifactManifestChunk* out) {
  out->set_chunk_index(chunk.chunk_index);
  out->set_file_index(chunk.file_index);
  out->set_file_offset(chunk.file_offset);
  out->set_length(chunk.length);
  out->set_checksum(chunk.checksum);
}

artifacts::ManifestFile ManifestFileFromProto(const model_express::p2p::ArtifactManifestFile& f) {
  return artifacts::ManifestFile{f.file_index(), f.path(), f.size(), f.checksum()};
}

artifacts::ManifestChunk ManifestChunkFromProto(
    const model_express::p2p::ArtifactManifestChunk& c) {
  return artifacts::ManifestChunk{c.chunk_index(), c.file_index(), c.file_offset(), c.length(),
                                  c.checksum()};
}

StatusOr<std::unique_ptr<ArtifactState>> ArtifactState::Create(ArtifactServing serving,
                                                               LeaseOptions leases) {
  if (serving.worker_id.empty()) {
    return absl::InvalidArgumentError("ArtifactServing.worker_id is empty; set the worker's id");
  }
  if (leases.max_leases < 1 || leases.ttl <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "LeaseOptions: max_leases must be >= 1 and ttl positive (defaults 64 and 300 s)");
  }
  const artifacts::Manifest& m = serving.manifest;
  const std::string id = artifacts::ArtifactId(m);
  if (Status s = artifacts::ValidateManifest(m, id); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ArtifactServing.manifest is not a valid sealed manifest: ", s.message()));
  }
  if (serving.file_offsets.size() != m.files.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ArtifactServing.file_offsets has ", serving.file_offsets.size(),
                     " entries for ", m.files.size(), " files; give one offset per file"));
  }
  const std::string prefix = serving.source_root == "/" ? "/" : serving.source_root + "/";
  if (serving.source_root.empty() || serving.source_root[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("ArtifactServing.source_root '", serving.source_root, "' is not absolute"));
  }
  for (size_t i = 0; i < m.files.size(); ++i) {
    const artifacts::ManifestFile& f = m.files[i];
    const uint64_t off = serving.file_offsets[i];
    if (off > serving.region_bytes || f.size > serving.region_bytes - off) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ArtifactServing: file ", i, " '", f.path, "' (", f.size, " bytes at offset ", off,
          ") lies outside the region of ", serving.region_bytes, " bytes"));
    }
    if (!absl::StartsWith(f.path, prefix)) {
      return absl::InvalidArgumentError(absl::StrCat("ArtifactServing: file ", i, " '", f.path,
                                                     "' is not under source_root '",
                                                     serving.source_root, "'"));
    }
  }
  if (serving.signature.empty() != serving.signing_public_key.empty()) {
    return absl::InvalidArgumentError(
        "ArtifactServing.signature and signing_public_key must be set together (or both empty)");
  }
  auto state = std::unique_ptr<ArtifactState>(new ArtifactState(std::move(serving), leases));
  FERRY_ASSIGN_OR_RETURN(state->summary_, artifacts::SummarizeManifest(state->serving_.manifest));
  return state;
}

ArtifactState::ArtifactState(ArtifactServing serving, LeaseOptions leases)
    : serving_(std::move(serving)),
      lease_options_(leases),
      now_(leases.clock_for_test ? leases.clock_for_test : [] { return absl::Now(); }) {}

std::string ArtifactState::mx_source_id() const {
  absl::MutexLock lock(&mu_);
  return mx_source_id_;
}

void ArtifactState::SetMxSourceId(std::string mx_source_id) {
  absl::MutexLock lock(&mu_);
  mx_source_id_ = std::move(mx_source_id);
}

Status ArtifactState::Check(std::string_view mx_source_id, std::string_view artifact_id,
                            std::string* mx_source_id_now) const {
  std::string served = this->mx_source_id();
  if (!mx_source_id.empty() && mx_source_id != served) {
    return absl::FailedPreconditionError(absl::StrCat(
        "mx_source_id mismatch: expected ", served.empty() ? "(unpublished)" : served, ", got ",
        std::string(mx_source_id), "; the source was republished, list sources again"));
  }
  if (!artifact_id.empty() && artifact_id != summary_.artifact_id) {
    return absl::FailedPreconditionError(
        absl::StrCat("unknown artifact_id ", std::string(artifact_id), ": this worker serves ",
                     summary_.artifact_id, "; list sources again"));
  }
  *mx_source_id_now = std::move(served);
  return absl::OkStatus();
}

void ArtifactState::FillHeader(const std::string& mx_source_id,
                               model_express::p2p::GetArtifactManifestHeaderResponse* r) const {
  const artifacts::Manifest& m = serving_.manifest;
  r->set_mx_source_id(mx_source_id);
  r->set_artifact_id(summary_.artifact_id);
  r->set_manifest_version(m.manifest_version);
  r->set_mx_source_type(static_cast<model_express::p2p::MxSourceType>(m.mx_source_type));
  r->set_total_size(summary_.total_size);
  r->set_file_count(summary_.file_count);
  r->set_chunk_count(summary_.chunk_count);
  r->set_chunk_size(m.chunk_size);
  r->set_metadata_endpoint(serving_.metadata_endpoint);
  r->set_agent_name(serving_.agent_name);
  r->set_worker_rank(serving_.worker_rank);
  r->mutable_files()->Reserve(static_cast<int>(m.files.size()));
  for (const artifacts::ManifestFile& f : m.files) ManifestFileToProto(f, r->add_files());
}

void ArtifactState::FillChunk(uint32_t index,
                              model_express::p2p::ArtifactManifestChunk* out) const {
  ManifestChunkToProto(serving_.manifest.chunks[index], out);
}

Status ArtifactState::FillChunks(const std::string& mx_source_id, uint32_t start,
                                 uint32_t max_chunks,
                                 model_express::p2p::GetArtifactManifestChunksResponse* r) const {
  const uint32_t count = summary_.chunk_count;
  if (start > count) {
    return absl::InvalidArgumentError(
        absl::StrCat("start_chunk_index ", start, " is beyond the artifact's ", count, " chunks"));
  }
  const uint32_t page = std::min(max_chunks == 0 ? kMaxPage : max_chunks, kMaxPage);
  const uint32_t end = start + std::min(page, count - start);
  r->set_mx_source_id(mx_source_id);
  r->set_artifact_id(summary_.artifact_id);
  r->set_start_chunk_index(start);
  r->mutable_chunks()->Reserve(static_cast<int>(end - start));
  for (uint32_t i = start; i < end; ++i) FillChunk(i, r->add_chunks());
  r->set_next_page_token(end < count ? absl::StrCat(end) : "");
  return absl::OkStatus();
}

void ArtifactState::DropExpiredLocked(absl::Time now) {
  for (auto it = leases_.begin(); it != leases_.end();) {
    it = it->second.expires <= now ? leases_.erase(it) : std::next(it);
  }
}

Status ArtifactState::Prepare(const std::string& mx_source_id, uint32_t chunk_index,
                              model_express::p2p::PrepareArtifactChunkResponse* r) {
  if (chunk_index >= summary_.chunk_count) {
    return absl::InvalidArgumentError(absl::StrCat("chunk_index ", chunk_index,
                                                   " is out of range: the artifact has ",
                                                   summary_.chunk_count, " chunks"));
  }
  std::string lease_id;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = now_();
    DropExpiredLocked(now);
    if (static_cast<int>(leases_.size()) >= lease_options_.max_leases) {
      return absl::ResourceExhaustedError(
          absl::StrCat("all ", lease_options_.max_leases,
                       " artifact chunk leases are outstanding; release one or retry shortly"));
    }
    lease_id = NewLeaseId();
    leases_[lease_id] = Lease{chunk_index, now + lease_options_.ttl};
  }
  const artifacts::ManifestChunk& c = serving_.manifest.chunks[chunk_index];
  r->set_mx_source_id(mx_source_id);
  r->set_artifact_id(summary_.artifact_id);
  r->set_lease_id(lease_id);
  FillChunk(chunk_index, r->mutable_chunk());
  auto* src = r->mutable_source();
  src->set_addr(serving_.region_base_address + serving_.file_offsets[c.file_index] + c.file_offset);
  src->set_length(c.length);
  src->set_device_id(0);
  r->set_source_metadata(serving_.transfer_blob);
  return absl::OkStatus();
}

Status ArtifactState::Release(const std::string& mx_source_id, std::string_view lease_id,
                              model_express::p2p::ReleaseArtifactChunkResponse* r) {
  uint32_t chunk_index = 0;
  {
    absl::MutexLock lock(&mu_);
    DropExpiredLocked(now_());
    auto it = leases_.find(std::string(lease_id));
    if (it == leases_.end()) {
      return absl::NotFoundError(absl::StrCat("unknown or expired artifact chunk lease '",
                                              std::string(lease_id), "'; prepare the chunk again"));
    }
    chunk_index = it->second.chunk_index;
    leases_.erase(it);
  }
  r->set_mx_source_id(mx_source_id);
  r->set_artifact_id(summary_.artifact_id);
  FillChunk(chunk_index, r->mutable_chunk());
  return absl::OkStatus();
}

void ArtifactState::FillTransferInfo(const std::string& mx_source_id,
                                     ferry::v1::GetArtifactTransferInfoResponse* r) const {
  r->set_mx_source_id(mx_source_id);
  r->set_artifact_id(summary_.artifact_id);
  r->set_worker_id(serving_.worker_id);
  r->set_transfer_blob(serving_.transfer_blob);
  r->set_region(serving_.region);
  r->mutable_file_offsets()->Add(serving_.file_offsets.begin(), serving_.file_offsets.end());
  r->set_source_root(serving_.source_root);
  r->set_signature(serving_.signature);
  r->set_signing_public_key(serving_.signing_public_key);
}

int ArtifactState::outstanding_leases() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(leases_.size());
}

}  // namespace ferry::worker
