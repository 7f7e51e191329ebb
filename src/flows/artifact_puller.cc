#include "flows/artifact_puller.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "artifacts/crc32c.h"
#include "artifacts/install_lock.h"
#include "client/source_selection.h"
#include "common/logging.h"
#include "ferry/publisher.h"
#include "ferry/source_identity.h"

namespace ferry::artifacts {

namespace {

namespace p2p = ::model_express::p2p;

std::string IdentityText(const SourceIdentity& identity, const std::string& mx_source_id) {
  std::string text = absl::StrCat(p2p::MxSourceType_Name(identity.mx_source_type()),
                                  " artifact of model ", identity.model_name());
  if (!identity.revision().empty()) absl::StrAppend(&text, " revision ", identity.revision());
  if (!identity.gpu_arch().empty()) absl::StrAppend(&text, " gpu_arch ", identity.gpu_arch());
  absl::StrAppend(&text, " (mx_source_id ", mx_source_id, ")");
  return text;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// A transfer window: anonymous engine memory (not shareable: it is never served), faulted in
// by the first read into it and reused for every later window.
struct Buffer {
  std::unique_ptr<Region> region;
  uint64_t size = 0;
  char* data() const { return static_cast<char*>(region->data()); }
};

StatusOr<Buffer> MakeBuffer(TransferEngine& engine, uint64_t bytes) {
  AllocateOptions allocate;
  allocate.shareable = false;
  allocate.prefault = false;
  StatusOr<std::unique_ptr<Region>> region = engine.AllocateRegion(bytes, allocate);
  if (!region.ok()) {
    return Status(region.status().code(),
                  absl::StrCat("cannot allocate a ", bytes, "-byte transfer window (",
                               region.status().message(), "); lower the window size"));
  }
  Buffer b;
  b.region = *std::move(region);
  b.size = bytes;
  return b;
}

class ArtifactPuller {
 public:
  explicit ArtifactPuller(const ArtifactPullOptions& options) : o_(options) {}

  StatusOr<ArtifactPullResult> Run() {
    const absl::Time start = absl::Now();
    FERRY_RETURN_IF_ERROR(Validate());
    FERRY_ASSIGN_OR_RETURN(mx_source_id_, ComputeMxSourceId(o_.identity));
    const std::string who = IdentityText(o_.identity, mx_source_id_);

    FERRY_ASSIGN_OR_RETURN(
        std::unique_ptr<InstallLock> lock,
        InstallLock::Acquire(o_.state_dir, o_.into, o_.lock_timeout, o_.on_lock_wait));
    ArtifactPullResult result;
    result.installed_into = lock->canonical_target();
    result.mx_source_id = mx_source_id_;
    if (!o_.force) {
      if (auto done = lock->ReadDone(mx_source_id_);
          done.has_value() && IsDirectory(lock->canonical_target())) {
        spdlog::info("{} is already installed in {} (artifact {} from {}); nothing to do", who,
                     lock->canonical_target(), done->artifact_id, done->source);
        result.installed = false;
        result.artifact_id = done->artifact_id;
        result.total_time = absl::Now() - start;
        return result;
      }
      if (auto failed = lock->ReadFailed(mx_source_id_);
          failed.has_value() && FailureMarkerActive(*failed, o_.failure_ttl, absl::Now())) {
        const absl::Duration age = absl::Now() - failed->failed_at;
        return absl::FailedPreconditionError(absl::StrCat(
            "a pull of ", who, " into ", lock->canonical_target(), " failed ",
            absl::FormatDuration(absl::Trunc(age, absl::Milliseconds(100))),
            " ago on this node, so this one is not repeating it for another ",
            absl::FormatDuration(absl::Trunc(o_.failure_ttl - age, absl::Milliseconds(100))),
            " (--failure-ttl); pass --force to retry now. That failure: ", failed->reason));
      }
    }

    SourceSelection selection;
    selection.model_name = o_.identity.model_name();
    selection.match_rank = false;
    selection.accelerator = o_.accelerator;
    selection.target_worker_id =
        o_.target_worker_id.empty() ? GenerateWorkerId() : o_.target_worker_id;
    selection.topology = o_.topology;
    FERRY_ASSIGN_OR_RETURN(Candidates listed,
                           ListCandidates(*o_.client, o_.identity, selection, who));
    const std::vector<SourceInstanceRef>& candidates = listed.ordered;
    if (candidates.empty()) {
      return absl::NotFoundError(absl::StrCat(
          "no READY source for ", who, " on ", o_.client->server_address(), " (", listed.ready,
          " READY worker(s) of this identity, none with a compatible accelerator); start one "
          "with `ferry artifact publish`, check the identity flags, or build the cache locally"));
    }

    StatusOr<size_t> chosen =
        TryCandidates(candidates, o_.max_sources, who,
                      absl::StrCat(lock->canonical_target(), " was left untouched"),
                      &result.attempts, [&](const SourceInstanceRef& ref, SourceAttempt* attempt) {
                        return TryOne(ref, attempt, &result);
                      });
    if (chosen.ok()) {
      const SourceInstanceRef& ref = candidates[*chosen];
      result.installed = true;
      result.mx_source_id = ref.mx_source_id();
      result.source_worker_id = ref.worker_id();
      result.source_endpoint = result.attempts.back().endpoint;
      result.total_time = absl::Now() - start;
      if (Status s = lock->WriteDone(
              mx_source_id_, InstallLock::DoneMarker{result.artifact_id,
                                                     absl::StrCat("worker ", ref.worker_id(),
                                                                  " at ", result.source_endpoint),
                                                     absl::Now()});
          !s.ok()) {
        spdlog::warn("installed, but could not record it for other pulls on this node: {}",
                     s.message());
      }
      return result;
    }
    const Status failed = chosen.status();
    // Refusals by this node's own trust settings (PermissionDenied: unsigned, untrusted key)
    // say nothing about the sources: the caller may fix them at once (--trust,
    // --allow-unsigned), so they leave no marker that would make the next pull wait.
    const bool only_trust_refusals = std::all_of(
        result.attempts.begin(), result.attempts.end(),
        [](const ArtifactPullAttempt& a) { return absl::IsPermissionDenied(a.status); });
    if (!only_trust_refusals) {
      if (Status s =
              lock->WriteFailed(mx_source_id_,
                                InstallLock::FailedMarker{
                                    std::string(failed.message().substr(0, 4096)), absl::Now()});
          !s.ok()) {
        spdlog::warn("could not record the failure for other pulls on this node: {}", s.message());
      }
    }
    return failed;
  }

 private:
  Status Validate() const {
    if (o_.client == nullptr) {
      return absl::InvalidArgumentError("ArtifactPullOptions.client is required");
    }
    if (o_.engine == nullptr) {
      return absl::InvalidArgumentError("ArtifactPullOptions.engine is required");
    }
    if (o_.into.empty()) {
      return absl::InvalidArgumentError(
          "ArtifactPullOptions.into is empty; name the cache directory to install into");
    }
    if (o_.state_dir.empty()) {
      return absl::InvalidArgumentError("ArtifactPullOptions.state_dir is required");
    }
    if (o_.max_sources < 1 || o_.max_sources > 16) {
      return absl::InvalidArgumentError(
          absl::StrCat("ArtifactPullOptions.max_sources must be 1..16, got ", o_.max_sources));
    }
    const int type = o_.identity.mx_source_type();
    if (type < p2p::MX_SOURCE_TYPE_TORCH_COMPILE_CACHE ||
        type > p2p::MX_SOURCE_TYPE_TVM_FFI_CACHE) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ArtifactPullOptions.identity.mx_source_type=", type, " is not a cache type (3..9)"));
    }
    return ValidateIdentity(o_.identity);
  }

  Status TryOne(const SourceInstanceRef& ref, ArtifactPullAttempt* attempt,
                ArtifactPullResult* result) {
    FERRY_ASSIGN_OR_RETURN(GetMetadataResponse record,
                           o_.client->GetMetadata(ref.mx_source_id(), ref.worker_id()));
    if (!record.found()) {
      return absl::NotFoundError("the server no longer holds this worker's record");
    }
    const p2p::WorkerMetadata& w = record.worker();
    attempt->endpoint = w.worker_grpc_endpoint();
    if (!w.has_artifact_source()) {
      return absl::FailedPreconditionError("the record carries no artifact_source payload");
    }
    if (w.artifact_source().node_rank() != o_.node_rank) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the source serves node_rank ", w.artifact_source().node_rank(), ", not ", o_.node_rank));
    }
    if (attempt->endpoint.empty()) {
      return absl::FailedPreconditionError("the record has no worker endpoint");
    }
    const std::string expected_id = w.artifact_source().artifact_id();
    const std::string source_text =
        absl::StrCat("worker ", ref.worker_id(), " at ", attempt->endpoint);

    worker::WorkerClientOptions client_options = o_.endpoint;
    client_options.endpoint = attempt->endpoint;
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<worker::WorkerClient> client,
                           worker::WorkerClient::Create(client_options));
    FERRY_ASSIGN_OR_RETURN(worker::WorkerClient::FetchedManifest fetched,
                           client->GetArtifactManifest(ref.mx_source_id(), expected_id,
                                                       o_.limits.max_files * 64 + 1024));
    const Manifest& m = fetched.manifest;
    FERRY_RETURN_IF_ERROR(ValidateFetchedManifest(m, fetched.header, expected_id));
    const std::string& artifact_id = fetched.header.artifact_id;
    FERRY_ASSIGN_OR_RETURN(ferry::v1::GetArtifactTransferInfoResponse info,
                           client->GetArtifactTransferInfo(ref.mx_source_id(), artifact_id));

    // Trust before a byte moves.
    const TrustedKeys empty;
    const TrustedKeys& trusted = o_.trusted != nullptr ? *o_.trusted : empty;
    FERRY_ASSIGN_OR_RETURN(
        TrustDecision trust,
        trusted.Check(ref.mx_source_id(), artifact_id, info.signature(), info.signing_public_key(),
                      source_text, o_.allow_unsigned));
    if (trust == TrustDecision::kUnsignedAccepted) {
      spdlog::warn("installing UNSIGNED artifact {} from {} because of --allow-unsigned",
                   artifact_id, source_text);
    } else if (trust == TrustDecision::kUntrustedAccepted) {
      spdlog::warn(
          "installing artifact {} from {} signed by UNTRUSTED key {} because of "
          "--allow-unsigned",
          artifact_id, source_text, KeyFingerprint(info.signing_public_key()));
    }

    FERRY_ASSIGN_OR_RETURN(std::vector<std::string> paths,
                           PlanInstallPaths(m, info.source_root(), o_.limits));
    if (static_cast<size_t>(info.file_offsets_size()) != m.files.size()) {
      return absl::DataLossError(absl::StrCat("the source gave ", info.file_offsets_size(),
                                              " file offsets for ", m.files.size(), " files"));
    }
    uint64_t total = 0;
    uint64_t largest_chunk = 1;
    std::vector<uint64_t> sizes;
    sizes.reserve(m.files.size());
    for (const ManifestFile& f : m.files) {
      sizes.push_back(f.size);
      total += f.size;
      if (f.size == 0 && f.checksum != Crc32cHex(0)) {
        return absl::DataLossError(absl::StrCat("empty file ", f.file_index, " '", f.path,
                                                "' has checksum ", f.checksum, ", not 00000000"));
      }
    }
    for (const ManifestChunk& c : m.chunks) largest_chunk = std::max(largest_chunk, c.length);

    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<Peer> peer,
                           o_.engine->Connect(info.transfer_blob(), o_.transport));
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<StagedInstall> stage, StagedInstall::Create(o_.into));
    FERRY_RETURN_IF_ERROR(stage->CreateFiles(paths, sizes));

    const absl::Time transfer_start = absl::Now();
    FERRY_RETURN_IF_ERROR(
        ReadVerifyStage(*peer, m, info, total, largest_chunk, source_text, transfer_start, *stage));
    const absl::Time install_start = absl::Now();
    FERRY_RETURN_IF_ERROR(stage->Commit());
    result->artifact_id = artifact_id;
    result->transport = peer->transport();
    result->trust = trust;
    result->signer =
        info.signing_public_key().empty() ? "" : KeyFingerprint(info.signing_public_key());
    result->bytes = total;
    result->files = m.files.size();
    result->transfer_time = install_start - transfer_start;
    result->install_time = absl::Now() - install_start;
    return absl::OkStatus();
  }

  // One window of chunks, back to back in a buffer: chunks [first, next), `bytes` in all.
  struct Window {
    size_t first = 0;
    size_t next = 0;
    uint64_t bytes = 0;
  };

  // Reads every chunk through `peer`, a window at a time into two alternating buffers, so that
  // the next window is read while this one is verified (every chunk's CRC32C, and each file's
  // as its last chunk arrives) and written into the stage.
  Status ReadVerifyStage(Peer& peer, const Manifest& m,
                         const ferry::v1::GetArtifactTransferInfoResponse& info, uint64_t total,
                         uint64_t largest_chunk, const std::string& source_text, absl::Time start,
                         StagedInstall& stage) {
    const uint64_t window =
        std::max(largest_chunk, std::min(o_.window_bytes, std::max<uint64_t>(total, 1)));
    std::vector<Window> windows;
    for (size_t i = 0; i < m.chunks.size();) {
      Window w{i, i, 0};
      while (w.next < m.chunks.size() && w.bytes + m.chunks[w.next].length <= window) {
        w.bytes += m.chunks[w.next++].length;
      }
      windows.push_back(w);
      i = w.next;
    }
    const size_t buffers = std::min<size_t>(windows.size(), 2);
    for (size_t b = 0; b < buffers; ++b) {
      if (buffers_[b].region == nullptr || buffers_[b].size < window) {
        buffers_[b] = Buffer{};
        FERRY_ASSIGN_OR_RETURN(buffers_[b], MakeBuffer(*o_.engine, window));
      }
    }
    std::atomic<uint64_t> done{0};
    auto read = [&](size_t k) -> Status {
      const Window& w = windows[k];
      char* base = buffers_[k % 2].data();
      std::vector<ReadOp> ops;
      ops.reserve(w.next - w.first);
      uint64_t at = 0;
      for (size_t i = w.first; i < w.next; ++i) {
        const ManifestChunk& c = m.chunks[i];
        ops.push_back(ReadOp{info.region(), info.file_offsets(c.file_index) + c.file_offset,
                             base + at, c.length});
        at += c.length;
      }
      ReadOptions options;
      options.timeout = o_.transfer_timeout;
      options.start = start;
      options.stall_timeout = o_.stall_timeout;
      if (o_.on_progress) {
        const uint64_t before = done.load();
        options.on_progress = [&, before](uint64_t round_done, uint64_t) {
          o_.on_progress(ArtifactPullProgress{before + round_done, total, source_text});
        };
      }
      Status s = peer.Read(CoalesceReadOps(std::move(ops)), options);
      if (s.ok()) done += w.bytes;
      return s;
    };

    uint32_t file_crc = 0;  // running CRC of the file whose chunks are being verified
    Status current = windows.empty() ? absl::OkStatus() : read(0);
    for (size_t k = 0; k < windows.size(); ++k) {
      FERRY_RETURN_IF_ERROR(current);
      // The next window's read runs while this one is checked and staged; it is joined before
      // leaving this iteration, also on errors.
      Status upcoming;
      std::thread reader;
      if (k + 1 < windows.size()) reader = std::thread([&] { upcoming = read(k + 1); });
      Status checked = VerifyAndStage(m, windows[k], buffers_[k % 2].data(), file_crc, stage);
      if (reader.joinable()) reader.join();
      FERRY_RETURN_IF_ERROR(checked);
      current = std::move(upcoming);
    }
    return absl::OkStatus();
  }

  // Verifies window `w` (its bytes at `data`) and writes it into the stage.
  Status VerifyAndStage(const Manifest& m, const Window& w, const char* data, uint32_t& file_crc,
                        StagedInstall& stage) {
    uint64_t pos = 0;
    for (size_t i = w.first; i < w.next; ++i) {
      const ManifestChunk& c = m.chunks[i];
      const char* bytes = data + pos;
      pos += c.length;
      const uint32_t crc = Crc32c(bytes, c.length);
      const ManifestFile& f = m.files[c.file_index];
      if (Crc32cHex(crc) != c.checksum) {
        return absl::DataLossError(absl::StrCat(
            "chunk ", c.chunk_index, " of '", f.path, "' (bytes ", c.file_offset, "..",
            c.file_offset + c.length, ") failed verification: CRC32C ", Crc32cHex(crc),
            " but the manifest says ", c.checksum, "; the source or the transfer is corrupt"));
      }
      file_crc = c.file_offset == 0 ? crc : Crc32c(bytes, c.length, file_crc);
      if (c.file_offset + c.length == f.size && Crc32cHex(file_crc) != f.checksum) {
        return absl::DataLossError(absl::StrCat("file '", f.path, "' failed verification: CRC32C ",
                                                Crc32cHex(file_crc), " but the manifest says ",
                                                f.checksum, "; the source is corrupt"));
      }
      FERRY_RETURN_IF_ERROR(stage.Write(c.file_index, c.file_offset, bytes, c.length));
    }
    return absl::OkStatus();
  }

  const ArtifactPullOptions& o_;
  std::string mx_source_id_;
  Buffer buffers_[2];
};

}  // namespace

StatusOr<ArtifactPullResult> PullArtifact(const ArtifactPullOptions& options) {
  return ArtifactPuller(options).Run();
}

}  // namespace ferry::artifacts
