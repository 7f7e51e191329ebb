// libFuzzer target: token files (ferry-server's --auth-tokens, "TOKEN PRINCIPAL" per line) and
// bearer tokens as clients read them from a file or a variable. Parse must accept or refuse with
// a message naming the line, never crash; a parsed principal is never empty.
#include <cstddef>
#include <cstdint>
#include <string>

#include "client/credentials.h"
#include "server/auth.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto entries = ferry::server::TokenAuthenticator::Parse(text, "fuzz.tokens");
  if (entries.ok()) {
    for (const auto& e : *entries) {
      if (e.principal.empty()) __builtin_trap();
    }
  }
  (void)ferry::internal::ValidateToken(text, "fuzz token");
  return 0;
}
