#include "flows/artifact_source.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "ferry/source_identity.h"

namespace ferry::artifacts {

namespace p2p = ::model_express::p2p;

StatusOr<std::unique_ptr<ArtifactSource>> ArtifactSource::Create(ArtifactSourceOptions options) {
  if (options.client == nullptr) {
    return absl::InvalidArgumentError("ArtifactSourceOptions.client is required");
  }
  if (options.engine == nullptr) {
    return absl::InvalidArgumentError("ArtifactSourceOptions.engine is required");
  }
  const int type = options.identity.mx_source_type();
  if (type < p2p::MX_SOURCE_TYPE_TORCH_COMPILE_CACHE || type > p2p::MX_SOURCE_TYPE_TVM_FFI_CACHE) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ArtifactSourceOptions.identity.mx_source_type=", type,
        " is not a cache type (3..9: torch.compile, Triton, DeepGEMM, TileLang, CuTe DSL, "
        "FlashInfer, TVM-FFI)"));
  }
  if (options.seal.mx_source_type != type) {
    return absl::InvalidArgumentError(
        absl::StrCat("ArtifactSourceOptions.seal.mx_source_type=", options.seal.mx_source_type,
                     " differs from identity.mx_source_type=", type));
  }
  FERRY_RETURN_IF_ERROR(ValidateIdentity(options.identity));
  FERRY_ASSIGN_OR_RETURN(std::string mx_source_id, ComputeMxSourceId(options.identity));
  std::string worker_id = options.worker_id.empty() ? GenerateWorkerId() : options.worker_id;
  std::unique_ptr<ArtifactSource> source(
      new ArtifactSource(std::move(options), std::move(worker_id), std::move(mx_source_id)));
  ArtifactSource& s = *source;
  const ArtifactSourceOptions& o = s.options_;

  // Snapshot into engine memory. A tree still being written may change between the walk and
  // the copy; seal again a few times before giving up.
  StatusOr<Snapshot> snapshot = absl::AbortedError("not attempted");
  for (int attempt = 0; attempt < 3 && absl::IsAborted(snapshot.status()); ++attempt) {
    s.region_.reset();
    snapshot = SnapshotDirectory(o.root, o.seal, [&](uint64_t bytes) -> StatusOr<char*> {
      FERRY_ASSIGN_OR_RETURN(s.region_, o.engine->AllocateRegion(bytes));
      return static_cast<char*>(s.region_->data());
    });
    if (absl::IsAborted(snapshot.status())) {
      spdlog::warn("sealing {}: {}; sealing again", o.root, snapshot.status().message());
    }
  }
  if (!snapshot.ok()) return snapshot.status();
  s.snapshot_ = *std::move(snapshot);

  worker::ArtifactServing serving;
  serving.worker_id = s.worker_id_;
  serving.worker_rank = o.worker_rank;
  serving.node_rank = o.node_rank;
  serving.accelerator = o.accelerator;
  serving.agent_name = absl::StrCat("ferry-artifact-rank", o.worker_rank, "-", s.worker_id_);
  serving.manifest = s.snapshot_.manifest;
  serving.source_root = s.snapshot_.root;
  serving.transfer_blob = o.engine->ExportBlob();
  serving.region = s.region_->id();
  serving.region_base_address = reinterpret_cast<uint64_t>(s.region_->data());
  serving.region_bytes = s.region_->size();
  serving.file_offsets = s.snapshot_.file_offsets;
  if (o.signing_key != nullptr) {
    const std::string artifact_id = ArtifactId(serving.manifest);
    FERRY_ASSIGN_OR_RETURN(serving.signature,
                           o.signing_key->Sign(SignedMessage(s.mx_source_id_, artifact_id)));
    serving.signing_public_key = o.signing_key->public_key();
  }
  FERRY_ASSIGN_OR_RETURN(s.state_, worker::ArtifactState::Create(std::move(serving), o.leases));
  s.state_->SetMxSourceId(s.mx_source_id_);
  return source;
}

ArtifactSource::ArtifactSource(ArtifactSourceOptions options, std::string worker_id,
                               std::string mx_source_id)
    : options_(std::move(options)),
      worker_id_(std::move(worker_id)),
      mx_source_id_(std::move(mx_source_id)) {}

ArtifactSource::~ArtifactSource() { Stop(); }

Status ArtifactSource::Start() {
  if (serving_ != nullptr || stopped_) {
    return absl::FailedPreconditionError("an ArtifactSource starts once");
  }
  worker::WorkerServerOptions endpoint = options_.endpoint;
  endpoint.state = nullptr;
  endpoint.artifacts = state_.get();
  PublisherOptions popts;
  popts.client = options_.client;
  popts.identity = options_.identity;
  popts.worker_id = worker_id_;
  popts.heartbeat_interval = options_.heartbeat_interval;
  FERRY_ASSIGN_OR_RETURN(
      serving_, worker::Serving::Start(
                    std::move(endpoint), std::move(popts),
                    [&](const std::string& address, p2p::WorkerMetadata* record) {
                      record->set_worker_rank(options_.worker_rank);
                      record->set_worker_grpc_endpoint(address);
                      record->set_agent_name(state_->serving().agent_name);
                      record->set_accelerator(options_.accelerator);
                      p2p::ArtifactSourceMetadata* artifact = record->mutable_artifact_source();
                      artifact->set_artifact_id(state_->artifact_id());
                      artifact->set_total_size(state_->summary().total_size);
                      artifact->set_file_count(state_->summary().file_count);
                      artifact->set_chunk_count(state_->summary().chunk_count);
                      artifact->set_node_rank(options_.node_rank);
                      record->mutable_topology()->insert(options_.topology.begin(),
                                                         options_.topology.end());
                    }));
  if (serving_->mx_source_id() != mx_source_id_) {
    if (signed_artifact()) {
      const std::string server_id = serving_->mx_source_id();
      serving_->Stop();
      return absl::FailedPreconditionError(absl::StrCat(
          "the server computed mx_source_id ", server_id, " but ferry computed ", mx_source_id_,
          " and signed that one; targets would refuse the signature. Use a ferry-server (or a "
          "ModelExpress server of the same identity rules)"));
    }
    spdlog::warn("server computed mx_source_id {} but ferry computed {}; serving the server's",
                 serving_->mx_source_id(), mx_source_id_);
    state_->SetMxSourceId(serving_->mx_source_id());
  }
  return absl::OkStatus();
}

void ArtifactSource::Stop() {
  if (stopped_) return;
  stopped_ = true;
  if (serving_ != nullptr) serving_->Stop();
}

std::string ArtifactSource::endpoint() const {
  return serving_ != nullptr ? serving_->endpoint() : std::string();
}

}  // namespace ferry::artifacts
