#include "worker/worker_state.h"

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "weights/dtype.h"

namespace ferry::worker {

WorkerState::WorkerState(WorkerManifest manifest) : manifest_(std::move(manifest)) {}

StatusOr<std::unique_ptr<WorkerState>> WorkerState::Create(WorkerManifest manifest) {
  if (manifest.worker_id.empty()) {
    return absl::InvalidArgumentError(
        "WorkerManifest.worker_id is empty; set the id this rank publishes under");
  }
  absl::flat_hash_set<std::string_view> names;
  names.reserve(manifest.tensors.size());
  uint64_t total = 0;
  for (size_t i = 0; i < manifest.tensors.size(); ++i) {
    const ferry::v1::TensorEntry& t = manifest.tensors[i];
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("WorkerManifest.tensors[", i, "] '", t.name(),
                                                     "' of worker ", manifest.worker_id, ": ",
                                                     why));
    };
    if (t.name().empty()) return bad("has an empty name; every tensor needs its name");
    if (!names.insert(t.name()).second) return bad("repeats a name; tensor names must be unique");
    // The one dtype table (weights/dtype.h): whatever the safetensors parser accepts is served.
    if (StatusOr<weights::DType> dtype = weights::ParseDTypeName(t.dtype()); !dtype.ok()) {
      return bad(dtype.status().message());
    }
    if (t.region() >= manifest.region_base_addresses.size()) {
      return bad(absl::StrCat("is in region ", t.region(), " but region_base_addresses has ",
                              manifest.region_base_addresses.size(),
                              " entries; give a base address for every region"));
    }
    const uint64_t base = manifest.region_base_addresses[t.region()];
    if (t.offset() > UINT64_MAX - t.size() || base > UINT64_MAX - t.offset() - t.size() ||
        total > UINT64_MAX - t.size()) {
      return bad("has an offset and size that overflow 64 bits");
    }
    total += t.size();
  }

  auto state = std::unique_ptr<WorkerState>(new WorkerState(std::move(manifest)));
  const WorkerManifest& m = state->manifest_;
  state->total_bytes_ = total;
  auto* descriptors = state->tensor_source_.mutable_tensors();
  descriptors->Reserve(static_cast<int>(m.tensors.size()));
  for (const ferry::v1::TensorEntry& t : m.tensors) {
    model_express::p2p::TensorDescriptor* d = descriptors->Add();
    d->set_name(t.name());
    d->set_addr(m.region_base_addresses[t.region()] + t.offset());
    d->set_size(t.size());
    d->set_device_id(0);
    const std::string_view torch = weights::DTypeTorchName(*weights::ParseDTypeName(t.dtype()));
    d->set_dtype(torch.data(), torch.size());
  }
  ferry::v1::GetTransferInfoResponse info;
  info.set_worker_id(m.worker_id);
  info.set_worker_rank(m.worker_rank);
  info.set_transfer_blob(m.transfer_blob);
  info.mutable_tensors()->Assign(m.tensors.begin(), m.tensors.end());
  info.set_checksum_algorithm(std::string(weights::ChecksumAlgorithmName(m.checksum_algorithm)));
  info.set_total_bytes(total);
  info.mutable_metadata()->insert(m.metadata.begin(), m.metadata.end());
  state->transfer_info_body_ = info.SerializeAsString();
  model_express::p2p::GetTensorManifestResponse tail;
  state->FillTensorManifest("", &tail);
  model_express::p2p::GetTensorManifestResponse head;
  head.mutable_tensors()->Swap(tail.mutable_tensors());
  state->tensor_manifest_head_ = head.SerializeAsString();  // field 1
  state->tensor_manifest_tail_ = tail.SerializeAsString();  // fields 3..7
  return state;
}

std::string WorkerState::mx_source_id() const {
  absl::MutexLock lock(&mu_);
  return mx_source_id_;
}

void WorkerState::SetMxSourceId(std::string mx_source_id) {
  absl::MutexLock lock(&mu_);
  mx_source_id_ = std::move(mx_source_id);
}

Status WorkerState::CheckRequest(std::string_view mx_source_id, const std::string* worker_id,
                                 std::string* mx_source_id_now) const {
  *mx_source_id_now = this->mx_source_id();
  if (!mx_source_id.empty() && mx_source_id != *mx_source_id_now) {
    return absl::FailedPreconditionError(
        absl::StrCat("mx_source_id mismatch: expected ",
                     mx_source_id_now->empty() ? "(not yet published)" : *mx_source_id_now,
                     ", got ", absl::string_view(mx_source_id.data(), mx_source_id.size()),
                     "; this worker serves another model identity: re-list sources"));
  }
  if (worker_id != nullptr && *worker_id != manifest_.worker_id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "worker_id mismatch: this endpoint serves worker ", manifest_.worker_id, ", not ",
        *worker_id, "; the source restarted under a new id: re-list sources"));
  }
  return absl::OkStatus();
}

void WorkerState::FillTensorManifest(
    const std::string& mx_source_id,
    model_express::p2p::GetTensorManifestResponse* response) const {
  *response->mutable_tensors() = tensor_source_.tensors();
  response->set_mx_source_id(mx_source_id);
  response->set_metadata_endpoint(manifest_.metadata_endpoint);
  response->set_agent_name(manifest_.agent_name);
  response->set_worker_rank(manifest_.worker_rank);
  response->set_accelerator(manifest_.accelerator);
  response->set_worker_id(manifest_.worker_id);
}

void WorkerState::FillTransferInfo(const std::string& mx_source_id,
                                   ferry::v1::GetTransferInfoResponse* response) const {
  response->Clear();
  response->ParseFromString(transfer_info_body_);  // serialized by Create(): cannot fail
  response->set_mx_source_id(mx_source_id);
}

}  // namespace ferry::worker
