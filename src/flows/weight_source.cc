#include "flows/weight_source.h"

#include <algorithm>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "ferry/source_identity.h"
#include "flows/device_landing.h"
#include "weights/tensor_checksum.h"
#include "worker/centralized.h"

namespace ferry::weights {

StatusOr<ServedModel> LoadSafetensors(TransferEngine& engine, const std::string& path, int threads,
                                      ChecksumAlgorithm algorithm, int device) {
  FERRY_ASSIGN_OR_RETURN(SafetensorsLayout layout, ReadSafetensorsLayout(path));
  if (layout.tensors.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " holds no tensors; there is nothing to publish"));
  }
  ServedModel model;
  // A zero-byte region cannot be registered; a model of empty tensors still gets one page.
  FERRY_ASSIGN_OR_RETURN(model.region,
                         engine.AllocateRegion(std::max<uint64_t>(layout.data_size, 1)));
  FERRY_RETURN_IF_ERROR(
      ReadSafetensorsData(path, layout, model.region->data(), model.region->size()));
  model.checksums = ChecksumTensors(static_cast<const uint8_t*>(model.region->data()),
                                    layout.tensors, threads, algorithm);
  model.checksum_algorithm = algorithm;
  if (device >= 0) {
    AllocateOptions allocate;
    allocate.kind = MemoryKind::kCuda;
    allocate.device = device;
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<Region> on_device,
                           engine.AllocateRegion(model.region->size(), allocate));
    FERRY_RETURN_IF_ERROR(
        CopyHostToDevice(device, model.region->data(), model.region->size(), on_device->data()));
    model.region = std::move(on_device);  // the host copy is released here
  }
  for (const TensorInfo& t : layout.tensors) model.total_bytes += t.size;
  model.tensors = std::move(layout.tensors);
  model.metadata = std::move(layout.metadata);
  return model;
}

StatusOr<std::unique_ptr<WeightSource>> WeightSource::Create(WeightSourceOptions options,
                                                             ServedModel model) {
  if (options.client == nullptr) {
    return absl::InvalidArgumentError("WeightSourceOptions.client is required");
  }
  if (options.engine == nullptr) {
    return absl::InvalidArgumentError("WeightSourceOptions.engine is required");
  }
  if (model.region == nullptr) {
    return absl::InvalidArgumentError("the served model has no memory region");
  }
  if (model.checksums.size() != model.tensors.size()) {
    return absl::InvalidArgumentError("the served model needs one checksum per tensor");
  }
  FERRY_RETURN_IF_ERROR(ValidateIdentity(options.identity));
  // The id the server will compute; known before publishing so that the endpoint never
  // answers with an empty one.
  FERRY_ASSIGN_OR_RETURN(std::string mx_source_id, ComputeMxSourceId(options.identity));
  std::string worker_id = options.worker_id.empty() ? GenerateWorkerId() : options.worker_id;

  worker::WorkerManifest manifest;
  manifest.worker_id = worker_id;
  manifest.worker_rank = options.worker_rank;
  manifest.accelerator = options.accelerator;
  if (options.nixl_agent_name.empty() != options.nixl_metadata_endpoint.empty()) {
    return absl::InvalidArgumentError(
        "WeightSourceOptions.nixl_agent_name and nixl_metadata_endpoint go together: set both "
        "(a NIXL agent serves the same memory) or neither");
  }
  manifest.agent_name = options.nixl_agent_name.empty()
                            ? absl::StrCat("ferry-rank", options.worker_rank, "-", worker_id)
                            : options.nixl_agent_name;
  manifest.metadata_endpoint = options.nixl_metadata_endpoint;
  manifest.transfer_blob = options.engine->ExportBlob();
  manifest.metadata = model.metadata;
  manifest.checksum_algorithm = model.checksum_algorithm;
  if (!model.tensor_regions.empty() && model.tensor_regions.size() != model.tensors.size()) {
    return absl::InvalidArgumentError("the served model needs one region id per tensor");
  }
  const uint32_t region_id = model.region->id();
  auto add_base = [&](const Region& r) {
    if (manifest.region_base_addresses.size() <= r.id()) {
      manifest.region_base_addresses.resize(r.id() + 1, 0);
    }
    manifest.region_base_addresses[r.id()] = reinterpret_cast<uint64_t>(r.data());
  };
  add_base(*model.region);
  for (const std::unique_ptr<Region>& r : model.extra_regions) add_base(*r);
  for (size_t i = 0; i < model.tensors.size(); ++i) {
    const TensorInfo& t = model.tensors[i];
    ferry::v1::TensorEntry& e = manifest.tensors.emplace_back();
    e.set_name(t.name);
    e.set_dtype(std::string(DTypeName(t.dtype)));
    for (uint64_t d : t.shape) e.add_shape(d);
    e.set_region(model.tensor_regions.empty() ? region_id : model.tensor_regions[i]);
    e.set_offset(t.offset);
    e.set_size(t.size);
    e.set_checksum(model.checksums[i]);
  }
  if (options.held != nullptr) {
    if (options.held->size() != model.tensors.size()) {
      return absl::InvalidArgumentError("WeightSourceOptions.held must count the model's tensors");
    }
    if (!model.tensor_regions.empty() || !model.extra_regions.empty()) {
      return absl::InvalidArgumentError(
          "a model served while it is pulled lives in one region (a file pull's destination)");
    }
    manifest.held = options.held;
  }
  FERRY_ASSIGN_OR_RETURN(std::unique_ptr<worker::WorkerState> state,
                         worker::WorkerState::Create(std::move(manifest)));
  state->SetMxSourceId(mx_source_id);
  std::unique_ptr<WeightSource> source(new WeightSource(
      std::move(options), std::move(model), std::move(worker_id), std::move(mx_source_id)));
  source->state_ = std::move(state);
  return source;
}

WeightSource::WeightSource(WeightSourceOptions options, ServedModel model, std::string worker_id,
                           std::string mx_source_id)
    : options_(std::move(options)),
      model_(std::move(model)),
      worker_id_(std::move(worker_id)),
      mx_source_id_(std::move(mx_source_id)) {}

WeightSource::~WeightSource() { Stop(); }

Status WeightSource::Start() {
  if (serving_ != nullptr || stopped_) {
    return absl::FailedPreconditionError("a WeightSource starts once");
  }
  if (options_.held != nullptr) {
    // Only verified tensors' bytes, from before the endpoint exists.
    std::vector<std::tuple<uint64_t, uint64_t, size_t>> spans;  // (offset, end, tensor)
    for (size_t i = 0; i < model_.tensors.size(); ++i) {
      const TensorInfo& t = model_.tensors[i];
      if (t.size > 0) spans.emplace_back(t.offset, t.offset + t.size, i);
    }
    std::sort(spans.begin(), spans.end());
    std::shared_ptr<const worker::HeldTensors> held = options_.held;
    FERRY_RETURN_IF_ERROR(options_.engine->LimitServing(
        *model_.region, [held, spans = std::move(spans)](uint64_t offset, uint64_t length) {
          const uint64_t end = offset + length;
          auto it = std::upper_bound(spans.begin(), spans.end(),
                                     std::make_tuple(offset, UINT64_MAX, SIZE_MAX));
          if (it != spans.begin()) --it;
          for (; it != spans.end() && std::get<0>(*it) < end; ++it) {
            if (std::get<1>(*it) > offset && !held->Holds(std::get<2>(*it))) return false;
          }
          // Nothing past the last tensor (a file pull's tensors are contiguous from 0).
          return spans.empty() || end <= std::get<1>(spans.back());
        }));
  }
  worker::WorkerServerOptions endpoint = options_.endpoint;
  endpoint.state = state_.get();
  PublisherOptions popts;
  popts.start_initializing = options_.held != nullptr && !options_.held->complete();
  // ferry's own figure for ModelExpress's source_load: how busy the engine's TCP server was
  // between heartbeats (its share of the cap, when capped).
  TransferEngine* engine = options_.engine;
  popts.source_load = [engine]() -> std::optional<float> {
    return static_cast<float>(engine->TakeServingLoad());
  };
  popts.client = options_.client;
  popts.identity = options_.identity;
  popts.worker_id = worker_id_;
  popts.heartbeat_interval = options_.heartbeat_interval;
  FERRY_ASSIGN_OR_RETURN(
      serving_, worker::Serving::Start(
                    std::move(endpoint), std::move(popts),
                    [&](const std::string& address, model_express::p2p::WorkerMetadata* record) {
                      worker::FillP2pRecord(*state_, address, record);
                      record->mutable_topology()->insert(options_.topology.begin(),
                                                         options_.topology.end());
                      if (options_.centralized) {
                        worker::FillCentralizedRecord(*state_, record);
                      }
                    }));
  if (serving_->mx_source_id() != mx_source_id_) {
    // The server hashed the identity differently (an older ModelExpress server); targets use
    // the server's id, so serve that one.
    spdlog::warn("server computed mx_source_id {} but ferry computed {}; serving the server's",
                 serving_->mx_source_id(), mx_source_id_);
    state_->SetMxSourceId(serving_->mx_source_id());
  }
  return absl::OkStatus();
}

Status WeightSource::MarkReady() {
  if (options_.held == nullptr) return absl::OkStatus();
  if (!options_.held->complete()) {
    return absl::FailedPreconditionError(
        "the model is not whole yet: some tensors are not verified; finish the pull first");
  }
  if (serving_ == nullptr) return absl::FailedPreconditionError("Start() the source first");
  FERRY_RETURN_IF_ERROR(options_.engine->LimitServing(*model_.region, nullptr));
  return serving_->MarkReady();
}

void WeightSource::Stop() {
  if (stopped_) return;
  stopped_ = true;
  if (serving_ != nullptr) serving_->Stop();
}

std::string WeightSource::endpoint() const {
  return serving_ != nullptr ? serving_->endpoint() : std::string();
}

}  // namespace ferry::weights
