// libFuzzer target for ParseSafetensorsHeader. Input: 8 bytes of little-endian data-section
// size, then the header JSON. The parser must never crash, leak or hang, and a layout it
// accepts must satisfy the documented invariants (checked here; a violation aborts).
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "weights/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint64_t data_size = 0;
  for (int i = 7; i >= 0; --i) data_size = (data_size << 8) | data[i];
  const std::string_view header(reinterpret_cast<const char*>(data) + 8, size - 8);
  auto layout = ferry::weights::ParseSafetensorsHeader(header, data_size, "fuzz-input");
  if (!layout.ok()) {
    if (layout.status().message().find("fuzz-input") == std::string_view::npos) std::abort();
    return 0;
  }
  uint64_t covered = 0;
  for (const ferry::weights::TensorInfo& t : layout->tensors) {
    if (t.offset != covered || t.name.empty()) std::abort();
    covered += t.size;
  }
  if (covered != data_size || layout->data_offset != 8 + header.size()) std::abort();
  return 0;
}
