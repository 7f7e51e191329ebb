// libFuzzer target: what ferry-server reads back from Redis, which another replica, an older
// version or an operator with redis-cli may have written: the per-worker summary JSON and the
// stored record and identity protobufs. Everything must parse or be refused as DataLoss,
// never crash.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "model_express/p2p.pb.h"
#include "store/redis_layout.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto summary = ferry::store::internal::ParseSummary(text);
  if (summary.ok()) {
    for (const auto& [rank, state] : summary->ranks) {
      if (!model_express::p2p::SourceStatus_IsValid(state.status)) __builtin_trap();
    }
  }
  model_express::p2p::WorkerMetadata worker;
  (void)worker.ParseFromArray(data, static_cast<int>(size));
  model_express::p2p::SourceIdentity identity;
  (void)identity.ParseFromArray(data, static_cast<int>(size));
  return 0;
}
