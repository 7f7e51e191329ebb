// libFuzzer target: the requests a target sends an artifact source's worker endpoint
// (contract section 11), replayed against one ArtifactState: selection checks with any ids,
// chunk pages from any start and size, Prepare for any chunk index, Release of any lease id.
// Invariants: a page never runs past the chunk table or over 1,024 entries; leases outstanding
// never exceed the bound; a lease describes a range inside the snapshot region.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "artifacts/crc32c.h"
#include "worker/artifact_state.h"

namespace {

using ferry::worker::ArtifactServing;
using ferry::worker::ArtifactState;

constexpr int kMaxLeases = 8;

ArtifactServing Serving() {
  const std::vector<std::pair<std::string, std::string>> files = {
      {"/cache/a.py", "print(1)\n"}, {"/cache/empty", ""}, {"/cache/sub/k.bin", "0123456789"}};
  ArtifactServing s;
  s.worker_id = "w1";
  s.source_root = "/cache";
  s.transfer_blob = "blob";
  s.region = 1;
  s.region_base_address = 0x1000;
  ferry::artifacts::Manifest& m = s.manifest;
  m.chunk_size = 4;
  uint64_t offset = 0;
  for (const auto& [path, data] : files) {
    const uint32_t index = static_cast<uint32_t>(m.files.size());
    m.files.push_back(
        {index, path, data.size(),
         ferry::artifacts::Crc32cHex(ferry::artifacts::Crc32c(data.data(), data.size()))});
    for (uint64_t at = 0; at < data.size(); at += 4) {
      const uint64_t length = std::min<uint64_t>(4, data.size() - at);
      m.chunks.push_back(
          {static_cast<uint32_t>(m.chunks.size()), index, at, length,
           ferry::artifacts::Crc32cHex(ferry::artifacts::Crc32c(data.data() + at, length))});
    }
    s.file_offsets.push_back(offset);
    offset += data.size();
  }
  s.region_bytes = offset;
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  auto state = ArtifactState::Create(Serving(), {absl::Seconds(300), kMaxLeases});
  if (!state.ok()) __builtin_trap();
  ArtifactState& s = **state;
  if (in.ConsumeBool()) s.SetMxSourceId("0123456789abcdef");
  const uint32_t chunks = static_cast<uint32_t>(s.serving().manifest.chunks.size());
  std::vector<std::string> leases;
  while (in.remaining_bytes() > 0) {
    const std::string sid = in.ConsumeBool() ? s.mx_source_id() : in.ConsumeRandomLengthString(20);
    switch (in.ConsumeIntegralInRange<int>(0, 3)) {
      case 0: {
        std::string now;
        (void)s.Check(sid, in.ConsumeRandomLengthString(70), &now);
        break;
      }
      case 1: {
        model_express::p2p::GetArtifactManifestChunksResponse page;
        const uint32_t start = in.ConsumeIntegral<uint32_t>() % (chunks + 3);
        if (s.FillChunks(sid, start, in.ConsumeIntegral<uint32_t>(), &page).ok()) {
          if (page.chunks_size() > 1024 || start + page.chunks_size() > chunks) __builtin_trap();
        }
        break;
      }
      case 2: {
        model_express::p2p::PrepareArtifactChunkResponse lease;
        if (s.Prepare(sid, in.ConsumeIntegral<uint32_t>() % (chunks + 3), &lease).ok()) {
          leases.push_back(lease.lease_id());
        }
        if (s.outstanding_leases() > kMaxLeases) __builtin_trap();
        break;
      }
      case 3: {
        model_express::p2p::ReleaseArtifactChunkResponse released;
        const std::string id = !leases.empty() && in.ConsumeBool()
                                   ? leases[in.ConsumeIntegralInRange<size_t>(0, leases.size() - 1)]
                                   : in.ConsumeRandomLengthString(40);
        (void)s.Release(sid, id, &released);
        break;
      }
    }
  }
  return 0;
}
