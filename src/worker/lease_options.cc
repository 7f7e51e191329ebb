#include "worker/lease_options.h"

#include <openssl/rand.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/escaping.h"
#include "absl/time/clock.h"

namespace ferry::worker {

std::string NewLeaseId() {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    // RAND_bytes does not fail on Linux with a seeded pool; fall back to the clock anyway.
    const int64_t t = absl::ToUnixNanos(absl::Now());
    std::copy_n(reinterpret_cast<const unsigned char*>(&t), sizeof(t), bytes);
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
}

}  // namespace ferry::worker
