// libFuzzer target: a SourceIdentity as it arrives on the wire (protobuf bytes) through every
// function the server and the clients apply to it: validation, canonical JSON, mx_source_id,
// and the derived ListSources fields read from extra_parameters. Also the flag/variable value
// grammars (byte sizes, durations, counts) on the same bytes as text.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/byte_size.h"
#include "common/env.h"
#include "ferry/source_identity.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  ferry::SourceIdentity identity;
  if (identity.ParseFromString(bytes)) {
    // Only what passes validation is hashed by the server; the rest must be refused cleanly.
    if (ferry::ValidateIdentity(identity).ok()) {
      auto json = ferry::CanonicalIdentityJson(identity);
      auto id = ferry::ComputeMxSourceId(identity);
      if (json.ok() != id.ok()) __builtin_trap();
      if (id.ok() && id->size() != 16) __builtin_trap();
    }
    (void)ferry::TrainingStepOf(identity);
    (void)ferry::LayoutSignatureOf(identity);
  }
  (void)ferry::ParseBackendFramework(bytes);
  (void)ferry::internal::ParseByteSize(bytes, "fuzz");
  (void)ferry::internal::ParsePositiveDuration(bytes, "fuzz");
  (void)ferry::internal::ParsePositiveCount(bytes, "fuzz");
  return 0;
}
