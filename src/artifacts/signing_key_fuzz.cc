// libFuzzer target: artifact signing key files, as `ferry artifact publish --signing-key` and
// `ferry artifact pull --trust` read them. The input becomes a key file, loaded both as a
// private key (SigningKey::Load) and as a public key (LoadPublicKey, TrustedKeys::Load). Ferry
// reads the file (regular file, at most 64 KiB, private keys mode 0600) and checks the key type;
// OpenSSL parses the PEM. Invariants: a refused file is InvalidArgument naming it (or
// PermissionDenied for a private key others may read); a loaded private key has a 32-byte
// public key and signs a message that verifies under it, and not another; a loaded public key
// is 32 bytes and is what TrustedKeys trusts, once however often it is listed.
//
// Input: byte 0 bit 0 = make the file mode 0644 (a private key must then be refused); the rest
// is the file.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/match.h"
#include "artifacts/signing.h"

namespace {

using namespace ferry::artifacts;  // NOLINT: a fuzzer's one translation unit

const std::string& Path() {
  static const std::string* path = [] {
    // tmpfs where there is one: truncating and rewriting a file there is cheap.
    char shm[] = "/dev/shm/ferry-signing-key-fuzz-XXXXXX";
    char tmp[] = "/tmp/ferry-signing-key-fuzz-XXXXXX";
    char* pattern = ::mkdtemp(shm) != nullptr ? shm : ::mkdtemp(tmp);
    if (pattern == nullptr) __builtin_trap();
    return new std::string(std::string(pattern) + "/signing.key");
  }();
  static const bool cleanup = [] {
    std::atexit([] {  // libFuzzer exits normally at the end of a run
      ::unlink(path->c_str());
      ::rmdir(path->substr(0, path->rfind('/')).c_str());
    });
    return true;
  }();
  (void)cleanup;
  return *path;
}

void WriteFile(const std::string& path, const std::string& text, mode_t mode) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || ::fchmod(fd, mode) != 0) __builtin_trap();
  if (!text.empty() && ::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    __builtin_trap();
  }
  ::close(fd);
}

bool Names(const ferry::Status& status, const std::string& path) {
  return absl::StrContains(status.message(), path);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string& path = Path();
  const bool shared = (data[0] & 1) != 0;
  WriteFile(path, std::string(reinterpret_cast<const char*>(data) + 1, size - 1),
            shared ? 0644 : 0600);

  auto key = SigningKey::Load(path);
  if (shared && key.ok()) __builtin_trap();  // a private key others can read is refused
  if (!key.ok()) {
    const absl::StatusCode want =
        shared ? absl::StatusCode::kPermissionDenied : absl::StatusCode::kInvalidArgument;
    if (key.status().code() != want || !Names(key.status(), path)) __builtin_trap();
  } else {
    if (key->public_key().size() != kEd25519PublicKeyBytes) __builtin_trap();
    if (!absl::StartsWith(key->fingerprint(), "ed25519:")) __builtin_trap();
    const std::string message = SignedMessage("model", "artifact");
    auto signature = key->Sign(message);
    if (!signature.ok() || signature->size() != kEd25519SignatureBytes) __builtin_trap();
    if (!VerifySignature(message, *signature, key->public_key()).ok()) __builtin_trap();
    if (VerifySignature(SignedMessage("model", "other"), *signature, key->public_key()).code() !=
        absl::StatusCode::kDataLoss) {
      __builtin_trap();
    }
  }

  auto public_key = LoadPublicKey(path);
  if (!public_key.ok()) {
    if (public_key.status().code() != absl::StatusCode::kInvalidArgument ||
        !Names(public_key.status(), path)) {
      __builtin_trap();
    }
    return 0;
  }
  if (public_key->size() != kEd25519PublicKeyBytes) __builtin_trap();
  auto trusted = TrustedKeys::Load({path, path});
  if (!trusted.ok() || trusted->size() != 1 || !trusted->Contains(*public_key)) __builtin_trap();
  return 0;
}
