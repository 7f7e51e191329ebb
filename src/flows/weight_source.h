// The source side of a peer-to-peer weight transfer: a model's tensors in one registered region
// of a TransferEngine, served by a worker endpoint and published to ferry-server with
// heartbeats. Used by `ferry publish` (weights loaded from a safetensors file) and by
// `ferry pull --then-publish` (the weights just pulled).
#ifndef FERRY_FLOWS_WEIGHT_SOURCE_H_
#define FERRY_FLOWS_WEIGHT_SOURCE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "ferry/metadata_client.h"
#include "ferry/publisher.h"
#include "ferry/status.h"
#include "ferry/transfer.h"
#include "weights/safetensors.h"
#include "weights/tensor_checksum.h"
#include "worker/held_tensors.h"
#include "worker/serving.h"
#include "worker/worker_server.h"
#include "worker/worker_state.h"

namespace ferry::weights {

// A model held in one registered region: tensor offsets are relative to the region's start.
struct ServedModel {
  // Memory behind `region` that the engine did not allocate (RegisterRegion), if any. Declared
  // first so that it is released after the region is deregistered.
  std::shared_ptr<void> owned_memory;
  std::unique_ptr<Region> region;
  // Buffers served in place (ServeBuffers): one region per caller allocation. `region` is the
  // first; these are the others, and `tensor_regions` holds, per tensor, the id of the region
  // its offset is relative to. Empty `tensor_regions`: every tensor is in `region`.
  std::vector<std::unique_ptr<Region>> extra_regions;
  std::vector<uint32_t> tensor_regions;
  std::vector<TensorInfo> tensors;  // offsets relative to the tensor's region
  std::vector<uint64_t> checksums;  // of each tensor, same order as `tensors`
  ChecksumAlgorithm checksum_algorithm = ChecksumAlgorithm::kXxh3_64;
  std::map<std::string, std::string> metadata;  // safetensors "__metadata__"
  uint64_t total_bytes = 0;                     // sum of tensor sizes
};

// Reads `path`'s data section into a pre-faulted region allocated by `engine` and checksums
// every tensor with `algorithm` on `threads` threads. `device` >= 0: the region is device
// memory of that GPU (the file is read and checksummed in host memory, then copied over).
// Errors name the file.
StatusOr<ServedModel> LoadSafetensors(TransferEngine& engine, const std::string& path,
                                      int threads = 2,
                                      ChecksumAlgorithm algorithm = ChecksumAlgorithm::kXxh3_64,
                                      int device = -1);

struct WeightSourceOptions {
  MetadataClient* client = nullptr;  // borrowed; required
  TransferEngine* engine = nullptr;  // borrowed; required (the model's region belongs to it)
  SourceIdentity identity;           // model_name required
  uint32_t worker_rank = 0;
  // What the memory is: "cpu" for host memory (ModelExpress's GPU targets then skip this
  // source, since they cannot read host memory).
  std::string accelerator = "cpu";
  std::string worker_id;  // empty: GenerateWorkerId()
  // Listen/advertise address, token and TLS of the worker endpoint. `state` is filled here.
  worker::WorkerServerOptions endpoint;
  // false (ModelExpress's default, P2P metadata): the server record carries endpoints only.
  // true: it also carries the transfer blob and tensor list (centralized mode).
  bool centralized = false;
  // This node's datacenter domains, published as WorkerMetadata.topology (ModelExpress 0.7.0)
  // for topology-aware targets. Empty: none.
  std::map<std::string, std::string> topology;
  // A NIXL agent that serves the same memory (ferry.torch.publish(backend="ferry+nixl")): its
  // name and its listener's host:port, both or neither. With them, the record and the manifest
  // name the agent (ModelExpress's P2P metadata mode), and the worker endpoint also serves
  // ModelExpress's read leases (PrepareTensorRead / ReleaseTensorRead). Empty: ferry's engine
  // only.
  std::string nixl_agent_name;
  std::string nixl_metadata_endpoint;
  std::optional<absl::Duration> heartbeat_interval;  // unset: the Publisher's default
  // Serving while the model is still being pulled: which tensors (in the model's order) are
  // verified and may be served. Until MarkReady(), the record is INITIALIZING (ModelExpress
  // clients list READY sources only), and the engine serves only the ranges of held tensors
  // (TransferEngine::LimitServing: the engine must serve TCP only). Null: the whole model now.
  std::shared_ptr<worker::HeldTensors> held;
};

// Thread-compatible.
class WeightSource {
 public:
  // Validates options; builds the worker manifest from `model`. Starts nothing.
  static StatusOr<std::unique_ptr<WeightSource>> Create(WeightSourceOptions options,
                                                        ServedModel model);
  ~WeightSource();  // Stop()s
  WeightSource(const WeightSource&) = delete;
  WeightSource& operator=(const WeightSource&) = delete;

  // Starts the worker endpoint, publishes the record, marks it READY and starts heartbeats.
  // On failure nothing keeps running.
  Status Start();
  // Marks the record STALE (the publisher stops first, so no heartbeat overwrites it), then
  // closes the endpoint. Idempotent.
  void Stop();
  // With options.held: the whole model is verified; serve all of it and mark the record READY.
  // FailedPrecondition while some tensor is not held. OK at once without options.held.
  Status MarkReady();

  const std::string& mx_source_id() const { return mx_source_id_; }
  const std::string& worker_id() const { return worker_id_; }
  std::string endpoint() const;  // worker endpoint host:port; "" before Start()
  const ServedModel& model() const { return model_; }

 private:
  WeightSource(WeightSourceOptions options, ServedModel model, std::string worker_id,
               std::string mx_source_id);

  WeightSourceOptions options_;
  ServedModel model_;
  const std::string worker_id_;
  const std::string mx_source_id_;
  std::unique_ptr<worker::WorkerState> state_;
  std::unique_ptr<worker::Serving> serving_;
  bool stopped_ = false;
};

}  // namespace ferry::weights

#endif  // FERRY_FLOWS_WEIGHT_SOURCE_H_
