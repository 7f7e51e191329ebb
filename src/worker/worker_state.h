// What a source's worker endpoint serves: the tensor manifest (ModelExpress's
// WorkerService.GetTensorManifest) and ferry's transfer info (FerryWorkerService.GetTransferInfo).
// The publish flow builds a WorkerManifest once the weights sit in registered memory, wraps it in
// a WorkerState, and sets the mx_source_id when PublishMetadata has returned it.
#ifndef FERRY_WORKER_WORKER_STATE_H_
#define FERRY_WORKER_WORKER_STATE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "ferry/status.h"
#include "ferry/v1/worker.pb.h"
#include "model_express/p2p.pb.h"
#include "weights/tensor_checksum.h"
#include "worker/held_tensors.h"

namespace ferry::worker {

// One source worker's tensors and connection details. Plain data, filled by the publish flow.
struct WorkerManifest {
  std::string worker_id;  // required: the id this rank publishes under
  uint32_t worker_rank = 0;
  std::string accelerator;  // "cuda", "xpu", "cpu", or "" (unknown)
  // ModelExpress's NIXL fields; empty unless a NIXL agent serves the same memory.
  std::string agent_name;
  std::string metadata_endpoint;
  std::string transfer_blob;  // serialized ferry.v1.TransferBlob (TransferEngine::ExportBlob)
  // name, dtype (safetensors name), shape, region, offset, size, checksum (`checksum_algorithm`).
  std::vector<ferry::v1::TensorEntry> tensors;
  weights::ChecksumAlgorithm checksum_algorithm = weights::ChecksumAlgorithm::kXxh3_64;
  // Indexed by region id: the region's address in this process, so that a ModelExpress
  // TensorDescriptor carries addr = base + offset.
  std::vector<uint64_t> region_base_addresses;
  // The source file's safetensors "__metadata__", handed to targets in GetTransferInfo.
  std::map<std::string, std::string> metadata;
  // Which tensors are served now (a target serving while it pulls); null: all of them. Shared
  // with the pull that marks tensors as it verifies them.
  std::shared_ptr<const HeldTensors> held;
};

// A validated WorkerManifest plus the mx_source_id, which is known only after publishing.
// The manifest is immutable; the answers built from it are prepared once in Create().
// Thread-safe.
class WorkerState {
 public:
  // InvalidArgument naming the field and the tensor when the manifest is unusable: empty
  // worker_id, an empty or repeated tensor name, a dtype outside weights/dtype.h's table (the
  // TensorDescriptors carry its torch name, as ModelExpress's do), a region
  // id without a base address, or an offset + size that overflows 64 bits.
  static StatusOr<std::unique_ptr<WorkerState>> Create(WorkerManifest manifest);

  WorkerState(const WorkerState&) = delete;
  WorkerState& operator=(const WorkerState&) = delete;

  const WorkerManifest& manifest() const { return manifest_; }
  uint64_t total_bytes() const { return total_bytes_; }  // sum of tensor sizes

  // "" until set.
  std::string mx_source_id() const;
  void SetMxSourceId(std::string mx_source_id);

  // The checks every endpoint request passes (contract section 11): a non-empty mx_source_id
  // must equal the served one, and a present worker_id must equal the manifest's. Both failures
  // are FailedPrecondition; the message names both ids. `mx_source_id_now` receives the served
  // id the check used, so that the answer carries the same one.
  Status CheckRequest(std::string_view mx_source_id, const std::string* worker_id,
                      std::string* mx_source_id_now) const;

  // The answers, carrying `mx_source_id` (the one CheckRequest returned).
  void FillTensorManifest(const std::string& mx_source_id,
                          model_express::p2p::GetTensorManifestResponse* response) const;
  void FillTransferInfo(const std::string& mx_source_id,
                        ferry::v1::GetTransferInfoResponse* response) const;

  // The GetTransferInfoResponse without mx_source_id, serialized once in Create(). Field 1
  // (mx_source_id) serialized in front of these bytes is byte for byte the whole answer, so the
  // endpoint serves every request from this one copy (TransferInfoService).
  const std::string& transfer_info_body() const { return transfer_info_body_; }

  // FillTensorManifest's answer without mx_source_id (field 2), serialized once in Create() in
  // the two parts around it: field 1 (the tensors) and fields 3..7. head + field 2 + tail is
  // byte for byte the whole answer (WorkerServiceImpl serves it so).
  const std::string& tensor_manifest_head() const { return tensor_manifest_head_; }
  const std::string& tensor_manifest_tail() const { return tensor_manifest_tail_; }

  // ModelExpress TensorDescriptors {name, addr = base + offset, size, device_id 0, torch dtype}.
  const model_express::p2p::TensorSourceMetadata& tensor_source() const { return tensor_source_; }

 private:
  explicit WorkerState(WorkerManifest manifest);

  const WorkerManifest manifest_;
  uint64_t total_bytes_ = 0;
  // Prepared answers, without mx_source_id. The transfer info is kept serialized only: a
  // 100,000-tensor answer is megabytes, and the parsed form several times that.
  model_express::p2p::TensorSourceMetadata tensor_source_;
  std::string transfer_info_body_;
  std::string tensor_manifest_head_;
  std::string tensor_manifest_tail_;

  mutable absl::Mutex mu_;
  std::string mx_source_id_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::worker

#endif  // FERRY_WORKER_WORKER_STATE_H_
