// libFuzzer target: the transfer blob a source hands out (ferry.v1.TransferBlob), as a target's
// TransferEngine::Connect and Peer::Read use it. Protobuf decodes it; ferry then checks its
// version, picks a transport from its sections, host identity and region list
// (EngineCore::Candidates), connects with the addresses and secrets it names, and validates
// reads against its regions. Each input is a blob; one that protobuf decodes is first pointed
// at a real source engine in this process (its TCP host and port and its shm socket name are
// replaced, so the fuzzer never dials anything else; optionally its secrets and host identity
// too, so that connections succeed), then connected to and read from: the last 4 KiB of every
// region the blob lists (up to 4).
//
// Invariants: a blob protobuf refuses is InvalidArgument; a decoded blob re-encodes and decodes
// to the same message; Connect and Read fail only with the codes their contracts name; a read
// that succeeds read ranges inside the source's real regions and holds their bytes.
//
// Input: byte 0 = bit 0 the real TCP secret, bit 1 the real shm secret, bit 2 this host's
// identity (so shm is reachable), bits 3-4 the transport asked for; then the blob.
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/util/message_differencer.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ferry/transfer.h"
#include "ferry/v1/transfer.pb.h"
#include "transfer/transport.h"

// The fuzzer's engines run without UCX and CUDA IPC, whose sources it does not build.
namespace ferry::internal {
StatusOr<std::unique_ptr<Transport>> CreateUcxTransport(const TransferEngineOptions&) {
  return absl::UnimplementedError("UCX is not built into transfer_blob_fuzz");
}
bool UcxRdmaAvailable(const TransferEngineOptions&) { return false; }
StatusOr<std::unique_ptr<Transport>> CreateCudaIpcTransport(const TransferEngineOptions&) {
  return absl::FailedPreconditionError("CUDA IPC is not built into transfer_blob_fuzz");
}
}  // namespace ferry::internal

namespace {

using ferry::ReadOp;
using ferry::TransferEngine;
using ferry::TransportKind;

uint8_t PatternByte(uint32_t region, uint64_t offset) {
  return static_cast<uint8_t>(offset * 131 + region * 29 + 3);
}

struct World {
  std::unique_ptr<TransferEngine> source;
  std::unique_ptr<TransferEngine> target;
  std::vector<std::unique_ptr<ferry::Region>> regions;
  std::map<uint32_t, uint64_t> sizes;  // the source's real regions
  ferry::v1::TransferBlob real;        // the source's blob
};

std::unique_ptr<TransferEngine> MakeEngine(const char* name) {
  ferry::TransferEngineOptions options;
  options.name = name;
  options.enable_ucx = false;
  options.enable_cuda_ipc = false;
  options.tcp_listen = "127.0.0.1:0";
  options.tcp_streams = 1;
  auto engine = TransferEngine::Create(options);
  if (!engine.ok()) __builtin_trap();
  return std::move(*engine);
}

const World& TheWorld() {
  static World* w = [] {
    // Protobuf logs every string field that is not UTF-8 (the parse then fails): most inputs.
    google::protobuf::SetLogHandler(
        [](google::protobuf::LogLevel, const char*, int, const std::string&) {});
    auto* world = new World;
    world->source = MakeEngine("fuzz source");
    world->target = MakeEngine("fuzz target");
    // Region 0: engine memory (shm serves it); region 1: caller memory (TCP only).
    auto allocated = world->source->AllocateRegion(256 << 10);
    static char caller_memory[64 << 10];
    auto registered = world->source->RegisterRegion(caller_memory, sizeof(caller_memory));
    if (!allocated.ok() || !registered.ok()) __builtin_trap();
    world->regions.push_back(std::move(*allocated));
    world->regions.push_back(std::move(*registered));
    for (const auto& r : world->regions) {
      auto* p = static_cast<uint8_t*>(r->data());
      for (uint64_t i = 0; i < r->size(); ++i) p[i] = PatternByte(r->id(), i);
      world->sizes[r->id()] = r->size();
    }
    if (!world->real.ParseFromString(world->source->ExportBlob())) __builtin_trap();
    return world;
  }();
  return *w;
}

bool Allowed(absl::StatusCode code, bool connecting) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:     // malformed blob, bad op, out of range
    case absl::StatusCode::kFailedPrecondition:  // no common transport; a broken connection
    case absl::StatusCode::kUnavailable:         // unreachable
    case absl::StatusCode::kPermissionDenied:    // wrong secret
      return true;
    case absl::StatusCode::kNotFound:  // no such region at the source
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kDeadlineExceeded:
      return !connecting;
    default:
      return false;
  }
}

// Points `blob` at the source engine (never anywhere else), with its secrets and host identity
// where `flags` ask for them.
void Redirect(uint8_t flags, const ferry::v1::TransferBlob& real, ferry::v1::TransferBlob* blob) {
  if (blob->has_tcp()) {
    ferry::v1::TcpInfo* tcp = blob->mutable_tcp();
    tcp->set_host("127.0.0.1");
    if (tcp->port() != 0 && tcp->port() <= 65535) tcp->set_port(real.tcp().port());
    if ((flags & 1) != 0) tcp->set_secret(real.tcp().secret());
  }
  if (blob->has_shm()) {
    ferry::v1::ShmInfo* shm = blob->mutable_shm();
    if (!shm->socket_name().empty()) shm->set_socket_name(real.shm().socket_name());
    if ((flags & 2) != 0) shm->set_secret(real.shm().secret());
  }
  if ((flags & 4) != 0) {
    blob->set_hostname(real.hostname());
    blob->set_boot_id(real.boot_id());
    blob->set_net_namespace(real.net_namespace());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const World& world = TheWorld();
  const uint8_t flags = data[0];
  const TransportKind kinds[] = {TransportKind::kAuto, TransportKind::kTcp, TransportKind::kShm,
                                 TransportKind::kUcx};
  const TransportKind kind = kinds[(flags >> 3) & 3];
  const std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  ferry::v1::TransferBlob blob;
  if (!blob.ParseFromString(bytes)) {
    auto peer = world.target->Connect(bytes, kind);
    if (peer.ok() || peer.status().code() != absl::StatusCode::kInvalidArgument) __builtin_trap();
    return 0;
  }
  ferry::v1::TransferBlob again;
  if (!again.ParseFromString(blob.SerializeAsString()) ||
      !google::protobuf::util::MessageDifferencer::Equals(blob, again)) {
    __builtin_trap();
  }
  Redirect(flags, world.real, &blob);
  auto peer = world.target->Connect(blob.SerializeAsString(), kind);
  if (!peer.ok()) {
    if (!Allowed(peer.status().code(), true) || peer.status().message().empty()) __builtin_trap();
    return 0;
  }
  std::vector<std::vector<char>> buffers;  // each op its own allocation
  std::vector<ReadOp> ops;
  for (int i = 0; i < blob.regions_size() && i < 4; ++i) {
    const ferry::v1::RegionInfo& r = blob.regions(i);
    const uint64_t length = std::min<uint64_t>(r.size(), 4096);
    buffers.emplace_back(length, '\0');
    ops.push_back(ReadOp{r.id(), r.size() - length, buffers.back().data(), length});
  }
  ferry::ReadOptions options;
  options.timeout = absl::Seconds(5);
  options.stall_timeout = absl::Seconds(2);
  const ferry::Status read = (*peer)->Read(ops, options);
  if (!read.ok()) {
    if (!Allowed(read.code(), false) || read.message().empty()) __builtin_trap();
    return 0;
  }
  for (const ReadOp& op : ops) {
    if (op.length == 0) continue;
    auto real = world.sizes.find(op.remote_region);
    if (real == world.sizes.end() || op.remote_offset + op.length > real->second) {
      __builtin_trap();  // a read the source could not have served succeeded
    }
    const auto* got = static_cast<const uint8_t*>(op.local);
    for (uint64_t i = 0; i < op.length; ++i) {
      if (got[i] != PatternByte(op.remote_region, op.remote_offset + i)) __builtin_trap();
    }
  }
  return 0;
}
