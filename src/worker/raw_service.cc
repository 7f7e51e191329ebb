#include "worker/raw_service.h"

#include <vector>

namespace ferry::worker::internal {

bool ParseRawRequest(const grpc::ByteBuffer& request, google::protobuf::MessageLite* out) {
  std::vector<grpc::Slice> slices;
  if (!request.Dump(&slices).ok()) return false;
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out->ParseFromString(bytes);
}

grpc::ByteBuffer AnswerOf(std::initializer_list<grpc::Slice> parts) {
  std::vector<grpc::Slice> kept;
  kept.reserve(parts.size());
  for (const grpc::Slice& part : parts) {
    if (part.size() > 0) kept.push_back(part);
  }
  return grpc::ByteBuffer(kept.data(), kept.size());
}

}  // namespace ferry::worker::internal
