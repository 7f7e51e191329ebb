// Serving a prepared answer without copying it per request. A worker endpoint's big answers
// (GetTransferInfo, GetTensorManifest: megabytes for 100,000 tensors) never change while the
// model is served, so they are serialized once and every answer refers to those bytes. gRPC
// 1.51's generated code offers ByteBuffer methods only on the async and callback APIs, and
// callback methods stall the synchronous ones on a shared server; so the services register
// their methods by hand, as generated code does, with ByteBuffer handlers where it matters.
// Not part of the installed API.
#ifndef FERRY_WORKER_RAW_SERVICE_H_
#define FERRY_WORKER_RAW_SERVICE_H_

#include <initializer_list>
#include <string>

#include "ferry/status.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/impl/rpc_service_method.h"
#include "grpcpp/impl/service_type.h"
#include "grpcpp/support/method_handler.h"
#include "worker/grpc_status.h"

namespace ferry::worker::internal {

// A grpc::Service whose unary methods the subclass adds in its constructor. Thread-safety is
// the subclass's.
class HandRegisteredService : public grpc::Service {
 protected:
  // Adds the unary method `path` ("/package.Service/Method", a string literal: gRPC keeps the
  // pointer), served synchronously by
  // `method` of `self` (the subclass object, which must outlive the server). Request and
  // response are protobuf messages or grpc::ByteBuffer.
  template <class S, class Request, class Response>
  void AddUnary(const char* path, S* self,
                grpc::Status (S::*method)(grpc::ServerContext*, const Request*, Response*)) {
    AddMethod(new grpc::internal::RpcServiceMethod(
        path, grpc::internal::RpcMethod::NORMAL_RPC,
        new grpc::internal::RpcMethodHandler<S, Request, Response>(
            [method](S* s, grpc::ServerContext* context, const Request* request,
                     Response* response) { return (s->*method)(context, request, response); },
            self)));
  }
};

// Parses a raw request into `out`. False when it is not a message of that type.
bool ParseRawRequest(const grpc::ByteBuffer& request, google::protobuf::MessageLite* out);

// The answer made of `parts` in order, each referred to, not copied (a grpc::Slice copy only
// takes a reference). Empty parts are left out.
grpc::ByteBuffer AnswerOf(std::initializer_list<grpc::Slice> parts);

// `bytes` in one reference-counted slice: the one copy of a prepared answer part.
inline grpc::Slice PreparedSlice(const std::string& bytes) {
  return grpc::Slice(bytes.data(), bytes.size());
}

}  // namespace ferry::worker::internal

#endif  // FERRY_WORKER_RAW_SERVICE_H_
