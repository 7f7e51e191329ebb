// Ed25519 signatures over artifacts, and the target's decision whether to trust one.
//
// Compile caches hold executable code, so a target installs an artifact only when it is signed
// by a deployment key the target trusts (`ferry artifact pull --trust FILE`), unless the operator
// explicitly accepts unsigned ones (`--allow-unsigned`). A signature covers SignedMessage(), which
// binds the artifact to the model it was published for: a signed cache cannot be replayed under
// another model's mx_source_id.
//
// Key files are the standard OpenSSL PEM formats, so operators can inspect and make them with the
// openssl command:
//   signing.key  PKCS#8 "BEGIN PRIVATE KEY", unencrypted, mode 0600
//                (`openssl genpkey -algorithm ed25519 -out signing.key`)
//   signing.pub  SubjectPublicKeyInfo "BEGIN PUBLIC KEY", mode 0644
//                (`openssl pkey -in signing.key -pubout -out signing.pub`)
// Public keys and signatures travel as raw bytes (32 and 64, RFC 8032).
#ifndef FERRY_ARTIFACTS_SIGNING_H_
#define FERRY_ARTIFACTS_SIGNING_H_

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ferry/status.h"

// OpenSSL stays private to ferry_artifacts: only this forward declaration is visible here.
typedef struct evp_pkey_st EVP_PKEY;

namespace ferry::artifacts {

inline constexpr size_t kEd25519PublicKeyBytes = 32;
inline constexpr size_t kEd25519SignatureBytes = 64;

// The bytes a signature covers:
//   "ferry artifact signature v1\n" + mx_source_id + "\n" + artifact_id
// The fixed prefix separates these signatures from any other use of the key. The encoding is
// unambiguous as long as `artifact_id` holds no '\n' (it is 64 hex characters); TrustedKeys::Check
// refuses ids that hold one. Operators can reproduce it with
//   printf 'ferry artifact signature v1\n%s\n%s' "$MX_SOURCE_ID" "$ARTIFACT_ID"
std::string SignedMessage(std::string_view mx_source_id, std::string_view artifact_id);

// "ed25519:" + the first 16 lowercase hex characters of SHA-256(raw_public_key). Names a key in
// logs and error messages; it is not a security boundary (trust compares whole keys).
std::string KeyFingerprint(std::string_view raw_public_key);

// An Ed25519 private key. Movable, not copyable. Thread-safe: Sign may run concurrently from any
// number of threads (each call uses its own OpenSSL context; the key itself is read-only).
class SigningKey {
 public:
  // A fresh key from OpenSSL's CSPRNG. Internal error naming the OpenSSL call if keygen fails.
  static StatusOr<SigningKey> Generate();

  // Reads a PEM PKCS#8 Ed25519 private key (as WriteKeyPair or `openssl genpkey` writes it).
  // Errors, each naming `path`:
  //  - NotFound: no such file.
  //  - PermissionDenied: the file cannot be read, or it is readable or writable by group or
  //    others (like ssh, a shared private key is refused; the message says `chmod 600 FILE`).
  //  - InvalidArgument: not a regular file, or not an unencrypted Ed25519 private key in PEM
  //    (an RSA key, a public key, garbage, a passphrase-protected key); the message says how to
  //    make one with `ferry artifact keygen DIR`.
  static StatusOr<SigningKey> Load(const std::string& path);

  SigningKey(SigningKey&&) noexcept;
  SigningKey& operator=(SigningKey&&) noexcept;
  SigningKey(const SigningKey&) = delete;
  SigningKey& operator=(const SigningKey&) = delete;
  ~SigningKey();

  // The 64-byte raw Ed25519 signature of `message` (deterministic: the same message always gives
  // the same signature). Internal error naming the OpenSSL call on failure.
  // REQUIRES: *this was not moved from.
  StatusOr<std::string> Sign(std::string_view message) const;

  // The raw 32-byte public key.
  const std::string& public_key() const { return public_key_; }
  // KeyFingerprint(public_key()).
  std::string fingerprint() const;

 private:
  struct PkeyFree {
    void operator()(EVP_PKEY* pkey) const;
  };
  SigningKey(std::unique_ptr<EVP_PKEY, PkeyFree> pkey, std::string public_key);

  std::unique_ptr<EVP_PKEY, PkeyFree> pkey_;
  std::string public_key_;
};

// The files WriteKeyPair made.
struct KeyPairFiles {
  std::string private_key_path;  // DIR/signing.key, mode 0600
  std::string public_key_path;   // DIR/signing.pub, mode 0644
  std::string fingerprint;       // KeyFingerprint of the new key
};

// Generates a key pair and writes DIR/signing.key (PKCS#8 PEM, mode 0600, created with O_EXCL)
// and DIR/signing.pub (SubjectPublicKeyInfo PEM, mode 0644), both fsynced. Creates DIR and any
// missing parents with mode 0700. The modes are exact (set with fchmod, whatever the umask).
// Errors:
//  - AlreadyExists naming the file if either file exists ("remove it or pick another DIR"); the
//    existing file is left untouched.
//  - PermissionDenied / Internal naming the path and errno text if DIR cannot be made or written;
//    InvalidArgument if DIR (or a parent) exists and is not a directory.
// On any error no new signing.key or signing.pub is left behind (a directory it created stays).
StatusOr<KeyPairFiles> WriteKeyPair(const std::string& dir);

// Reads a PEM SubjectPublicKeyInfo Ed25519 public key (as WriteKeyPair or `openssl pkey -pubout`
// writes it) and returns its raw 32 bytes. NotFound / PermissionDenied if the file cannot be read;
// InvalidArgument naming the file if it is not such a key (a private key, an RSA key, garbage).
StatusOr<std::string> LoadPublicKey(const std::string& path);

// OK iff `signature` is a valid Ed25519 signature of `message` under the raw `public_key`.
// InvalidArgument if public_key is not 32 bytes or signature not 64 bytes; DataLoss
// ("signature does not verify", naming the key's fingerprint) when the signature, the message or
// the key was altered.
Status VerifySignature(std::string_view message, std::string_view signature,
                       std::string_view public_key);

// Which case of TrustedKeys::Check let an artifact through.
enum class TrustDecision {
  kTrusted,            // signed by a trusted key, and the signature verifies
  kUnsignedAccepted,   // no signature; accepted because allow_unsigned (caller logs a warning)
  kUntrustedAccepted,  // signed by a key not in the set; accepted because allow_unsigned
                       // (its signature was NOT checked; caller logs a warning with the source)
};

// "trusted", "unsigned-accepted", "untrusted-accepted": for logs.
std::string_view TrustDecisionName(TrustDecision decision);

// The target's set of trusted deployment public keys (`ferry artifact pull --trust FILE`,
// repeatable). Immutable after Load, so thread-safe.
class TrustedKeys {
 public:
  // Loads each file with LoadPublicKey; the first failure is returned (its message names the
  // file). An empty list gives an empty set (every signed artifact is then untrusted). The same
  // key listed twice counts once.
  static StatusOr<TrustedKeys> Load(const std::vector<std::string>& public_key_paths);

  TrustedKeys() = default;  // the empty set

  bool empty() const { return keys_.empty(); }
  size_t size() const { return keys_.size(); }
  // Whether `raw_public_key` (32 bytes) is in the set; false for any other size.
  bool Contains(std::string_view raw_public_key) const;

  // The whole decision for artifact `artifact_id` of model `mx_source_id`, which arrived from
  // `source` (words for messages, e.g. "worker ab12 at 10.0.0.5:6555") carrying `signature` and
  // the signer's raw `public_key` (both empty when unsigned). In order:
  //  1. signature empty (unsigned; public_key is ignored): OK kUnsignedAccepted if
  //     allow_unsigned, else PermissionDenied saying to pass --trust and sign with
  //     --signing-key, or --allow-unsigned.
  //  2. InvalidArgument, whatever allow_unsigned says, if public_key is not 32 bytes or signature
  //     not 64 bytes, or either id holds a '\n': the source sends malformed data.
  //  3. public_key not in the set: OK kUntrustedAccepted if allow_unsigned (treated like an
  //     unsigned artifact: the signature is not checked, as it proves nothing), else
  //     PermissionDenied naming the key's fingerprint and the source, saying to add the key's
  //     .pub with --trust (or --allow-unsigned).
  //  4. trusted key: OK kTrusted if the signature verifies over
  //     SignedMessage(mx_source_id, artifact_id); otherwise DataLoss (tampered, or signed for
  //     another model or artifact) ALWAYS, even with allow_unsigned.
  StatusOr<TrustDecision> Check(std::string_view mx_source_id, std::string_view artifact_id,
                                std::string_view signature, std::string_view public_key,
                                std::string_view source, bool allow_unsigned) const;

 private:
  // raw public key -> the file it came from (for messages).
  std::map<std::string, std::string, std::less<>> keys_;
};

}  // namespace ferry::artifacts

#endif  // FERRY_ARTIFACTS_SIGNING_H_
