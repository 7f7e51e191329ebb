// (being written)
#include "transfer/transport.h"

namespace ferry::internal {

StatusOr<std::unique_ptr<Transport>> CreateUcxTransport(const TransferEngineOptions& options) {
  return absl::UnimplementedError("UCX transport is being written");
}

}  // namespace ferry::internal
