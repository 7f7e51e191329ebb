// libFuzzer target: an artifact manifest as a hostile source could send it (header summary plus
// file and chunk tables) through the target's checks (contract 4.3) and, when they pass, the
// install path plan that must never let a file escape the install directory.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "artifacts/install.h"
#include "artifacts/manifest.h"

using ferry::artifacts::Manifest;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  Manifest m;
  m.manifest_version = in.ConsumeBool() ? 1 : in.ConsumeIntegral<uint32_t>();
  m.mx_source_type = in.ConsumeIntegral<int32_t>();
  m.chunk_size = in.ConsumeIntegralInRange<uint64_t>(0, uint64_t{8} << 30);
  const std::string root = in.ConsumeBool() ? "/cache" : "/" + in.ConsumeRandomLengthString(16);
  const size_t files = in.ConsumeIntegralInRange<size_t>(0, 16);
  for (size_t i = 0; i < files; ++i) {
    ferry::artifacts::ManifestFile f;
    f.file_index = in.ConsumeBool() ? static_cast<uint32_t>(i) : in.ConsumeIntegral<uint32_t>();
    f.path = in.ConsumeBool() ? root + "/" + in.ConsumeRandomLengthString(24)
                              : in.ConsumeRandomLengthString(32);
    f.size = in.ConsumeIntegralInRange<uint64_t>(0, uint64_t{1} << 34);
    f.checksum = in.ConsumeBytesAsString(8);
    m.files.push_back(std::move(f));
  }
  const size_t chunks = in.ConsumeIntegralInRange<size_t>(0, 32);
  for (size_t i = 0; i < chunks; ++i) {
    ferry::artifacts::ManifestChunk c;
    c.chunk_index = in.ConsumeBool() ? static_cast<uint32_t>(i) : in.ConsumeIntegral<uint32_t>();
    c.file_index = in.ConsumeIntegralInRange<uint32_t>(0, 20);
    c.file_offset = in.ConsumeIntegral<uint64_t>();
    c.length = in.ConsumeIntegral<uint64_t>();
    c.checksum = in.ConsumeBytesAsString(8);
    m.chunks.push_back(std::move(c));
  }
  ferry::artifacts::SourceSummary header;
  header.file_count = in.ConsumeIntegral<uint32_t>();
  header.chunk_count = in.ConsumeIntegral<uint32_t>();
  header.total_size = in.ConsumeIntegral<uint64_t>();
  header.artifact_id = in.ConsumeRandomLengthString(64);
  (void)ferry::artifacts::ValidateFetchedManifest(m, header, "");
  (void)ferry::artifacts::SummarizeManifest(m);
  auto paths = ferry::artifacts::PlanInstallPaths(m, root);
  if (paths.ok()) {
    for (const std::string& p : *paths) {
      // A planned path is relative and has no "." or ".." component.
      if (p.empty() || p[0] == '/') __builtin_trap();
      size_t start = 0;
      while (start <= p.size()) {
        const size_t end = std::min(p.find('/', start), p.size());
        const std::string part = p.substr(start, end - start);
        if (part.empty() || part == "." || part == "..") __builtin_trap();
        start = end + 1;
      }
    }
  }
  return 0;
}
