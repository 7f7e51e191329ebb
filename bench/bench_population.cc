#include "bench_population.h"

#include <cstdio>

#include "absl/strings/str_cat.h"

namespace ferry::bench {

namespace p2p = ::model_express::p2p;

std::string WorkerId(int64_t i) {
  char buf[9];
  std::snprintf(buf, sizeof(buf), "%08x", static_cast<uint32_t>(i * 2654435761u));
  return buf;
}

p2p::SourceIdentity Identity(const std::string& model_name) {
  p2p::SourceIdentity id;
  id.set_mx_version("0.5.0");
  id.set_mx_source_type(p2p::MX_SOURCE_TYPE_WEIGHTS);
  id.set_model_name(model_name);
  id.set_backend_framework(p2p::BACKEND_FRAMEWORK_VLLM);
  id.set_tensor_parallel_size(kRanksPerSource);
  id.set_pipeline_parallel_size(1);
  id.set_dtype("bfloat16");
  return id;
}

p2p::PublishMetadataRequest EndpointPublish(const p2p::SourceIdentity& identity, int64_t i) {
  p2p::PublishMetadataRequest req;
  *req.mutable_identity() = identity;
  req.set_worker_id(WorkerId(i));
  p2p::WorkerMetadata* w = req.mutable_worker();
  int rank = static_cast<int>(i % kRanksPerSource);
  std::string host = absl::StrCat("10.", (i >> 16) & 255, ".", (i >> 8) & 255, ".", i & 255);
  w->set_worker_rank(rank);
  w->set_metadata_endpoint(absl::StrCat(host, ":", 5600 + rank));
  w->set_agent_name(absl::StrCat("mx-agent-", WorkerId(i)));
  w->set_worker_grpc_endpoint(absl::StrCat(host, ":", 6600 + rank));
  w->set_accelerator("cuda");
  return req;
}

}  // namespace ferry::bench
