// A ferry Status as a worker endpoint's gRPC answer. Not part of the installed API.
#ifndef FERRY_WORKER_GRPC_STATUS_H_
#define FERRY_WORKER_GRPC_STATUS_H_

#include <string>

#include "ferry/status.h"
#include "grpcpp/grpcpp.h"

namespace ferry::worker::internal {

// `status` as a gRPC answer: the same code (absl's codes are gRPC's) and message.
inline grpc::Status ToGrpc(const Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

}  // namespace ferry::worker::internal

#endif  // FERRY_WORKER_GRPC_STATUS_H_
