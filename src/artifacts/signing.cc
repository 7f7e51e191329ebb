// Ed25519 keys, signatures and the trusted-key decision, over OpenSSL 3's EVP API.
#include "artifacts/signing.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/fd.h"
#include "common/hashing.h"

namespace ferry::artifacts {
namespace {

using ::ferry::internal::ErrnoText;
using ::ferry::internal::Fd;

// Debian's abseil has its own string_view, which absl::StrCat requires.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

constexpr std::string_view kSignedMessagePrefix = "ferry artifact signature v1\n";
constexpr std::string_view kPrivateKeyFile = "signing.key";
constexpr std::string_view kPublicKeyFile = "signing.pub";
// A PEM Ed25519 key is about 120 bytes; anything past this is not a key, and the cap keeps a
// mistaken path (a model file) from being read into memory.
constexpr size_t kMaxKeyFileBytes = 64 * 1024;

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct PkeyCtxFree {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
struct BioFree {
  void operator()(BIO* p) const { BIO_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;
using BioPtr = std::unique_ptr<BIO, BioFree>;

// Wipes a buffer that held private key material when it goes out of scope.
class Wipe {
 public:
  explicit Wipe(std::string& s) : s_(s) {}
  ~Wipe() { OPENSSL_cleanse(s_.data(), s_.size()); }
  Wipe(const Wipe&) = delete;
  Wipe& operator=(const Wipe&) = delete;

 private:
  std::string& s_;
};

// Drains this thread's OpenSSL error queue; returns the text of its first two entries, so a
// failure does not leak stale errors into a later message.
std::string DrainOpenSslErrors() {
  std::string text;
  int n = 0;
  while (unsigned long err = ERR_get_error()) {
    if (n++ >= 2) continue;
    char buf[256];
    ERR_error_string_n(err, buf, sizeof(buf));
    if (!text.empty()) text += "; ";
    text += buf;
  }
  return text.empty() ? "no OpenSSL error recorded" : text;
}

// Internal error for a failed OpenSSL call that should not fail (allocation, keygen).
Status OpenSslError(std::string_view call, std::string_view what) {
  return absl::InternalError(
      absl::StrCat("OpenSSL ", Av(call), " failed ", Av(what), ": ", DrainOpenSslErrors()));
}

std::string OctalMode(mode_t mode) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// Status for an errno from opening or creating `path`; `what` says what the path is for.
Status PathError(int err, std::string_view call, const std::string& path, std::string_view what,
                 std::string_view next) {
  std::string msg =
      absl::StrCat(Av(what), " '", path, "': ", Av(call), ": ", ErrnoText(err), "; ", Av(next));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    case ENOTDIR:
    case EISDIR:
    case ELOOP:
      return absl::InvalidArgumentError(msg);
    case EEXIST:
      return absl::AlreadyExistsError(msg);
    default:
      return absl::InternalError(msg);
  }
}

// Reads the whole of the key file at `path` (`kind` is "private key" or "public key").
// If `private_key`, refuses a file that group or others may read or write, as ssh does.
// The result is read into one buffer that is never reallocated, so the caller can wipe it.
StatusOr<std::string> ReadKeyFile(const std::string& path, std::string_view kind, bool private_key,
                                  std::string_view how_to_make) {
  // O_NONBLOCK: a FIFO at `path` must not hang us; it has no effect on regular files.
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd.valid()) {
    int err = errno;
    return PathError(err, "open", path, absl::StrCat("cannot read ", Av(kind), " file"),
                     err == ENOENT ? how_to_make : "check the path and its permissions");
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    return PathError(errno, "fstat", path, absl::StrCat("cannot read ", Av(kind), " file"),
                     "check the path");
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(Av(kind), " file '", path, "' is not a regular file; ", Av(how_to_make)));
  }
  if (private_key && (st.st_mode & 077) != 0) {
    return absl::PermissionDeniedError(absl::StrCat(
        "private key file '", path, "' has mode ", OctalMode(st.st_mode),
        ", so group or others can read or change it; refusing a signing key that is not private: "
        "run `chmod 600 ",
        path, "`"));
  }
  std::string data(kMaxKeyFileBytes + 1, '\0');
  size_t used = 0;
  while (used < data.size()) {
    ssize_t n = ::read(fd.get(), data.data() + used, data.size() - used);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      OPENSSL_cleanse(data.data(), used);
      return PathError(err, "read", path, absl::StrCat("cannot read ", Av(kind), " file"),
                       "check the file");
    }
    if (n == 0) break;
    used += static_cast<size_t>(n);
  }
  if (used > kMaxKeyFileBytes) {
    OPENSSL_cleanse(data.data(), used);
    return absl::InvalidArgumentError(
        absl::StrCat(Av(kind), " file '", path, "' is larger than ", kMaxKeyFileBytes / 1024,
                     " KiB, so it is not an Ed25519 key; ", Av(how_to_make)));
  }
  data.resize(used);  // shrinking never reallocates
  return data;
}

// Refuses passphrase prompts: ferry reads only unencrypted keys and must never block on a tty.
int NoPassphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*u*/) { return -1; }

StatusOr<std::string> RawPublicKey(EVP_PKEY* pkey) {
  std::string raw(kEd25519PublicKeyBytes, '\0');
  size_t len = raw.size();
  if (EVP_PKEY_get_raw_public_key(pkey, reinterpret_cast<unsigned char*>(raw.data()), &len) != 1 ||
      len != kEd25519PublicKeyBytes) {
    return OpenSslError("EVP_PKEY_get_raw_public_key", "on an Ed25519 key");
  }
  return raw;
}

StatusOr<PkeyPtr> GenerateKey() {
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr));
  if (!ctx) return OpenSslError("EVP_PKEY_CTX_new_id", "for Ed25519");
  if (EVP_PKEY_keygen_init(ctx.get()) != 1) {
    return OpenSslError("EVP_PKEY_keygen_init", "for Ed25519");
  }
  EVP_PKEY* raw = nullptr;
  if (EVP_PKEY_keygen(ctx.get(), &raw) != 1) {
    return OpenSslError("EVP_PKEY_keygen", "for Ed25519");
  }
  return PkeyPtr(raw);
}

// "a RSA key" etc., for messages about a key of the wrong type.
std::string KeyTypeName(EVP_PKEY* pkey) {
  const char* name = EVP_PKEY_get0_type_name(pkey);
  return name == nullptr ? std::string("an unknown key type") : absl::StrCat("a ", name, " key");
}

// Creates `path` with O_EXCL and exactly `mode`, writes `data`, fsyncs. On failure removes the
// file if it created it.
Status WriteNewFile(const std::string& path, const char* data, size_t size, mode_t mode) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode));
  if (!fd.valid()) {
    int err = errno;
    if (err == EEXIST) {
      return absl::AlreadyExistsError(
          absl::StrCat("key file '", path,
                       "' already exists; refusing to overwrite it: remove it or pick "
                       "another DIR"));
    }
    return PathError(err, "open", path, "cannot create key file",
                     "check the directory's permissions");
  }
  auto fail = [&](std::string_view call) {
    int err = errno;
    ::unlink(path.c_str());
    return PathError(err, call, path, "cannot write key file", "check the disk");
  };
  // The umask may have narrowed `mode`; the public key must stay world-readable.
  if (::fchmod(fd.get(), mode) != 0) return fail("fchmod");
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::write(fd.get(), data + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("write");
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return fail("fsync");
  return absl::OkStatus();
}

// mkdir -p with mode 0700 for each directory it creates.
Status MakeDirs(const std::string& dir) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    if (dir[pos - 1] == '/') continue;  // "a//b"
    const std::string prefix = dir.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0700) == 0) continue;
    int err = errno;
    if (err == EEXIST) {
      struct stat st;
      if (::stat(prefix.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) continue;
      return absl::InvalidArgumentError(
          absl::StrCat("key directory '", dir, "': '", prefix,
                       "' exists and is not a directory; pick another DIR"));
    }
    return PathError(err, "mkdir", prefix, "cannot create key directory",
                     "check the parent's permissions or pick another DIR");
  }
  return absl::OkStatus();
}

}  // namespace

std::string SignedMessage(std::string_view mx_source_id, std::string_view artifact_id) {
  std::string m;
  m.reserve(kSignedMessagePrefix.size() + mx_source_id.size() + 1 + artifact_id.size());
  m.append(kSignedMessagePrefix).append(mx_source_id).append("\n").append(artifact_id);
  return m;
}

std::string KeyFingerprint(std::string_view raw_public_key) {
  return "ed25519:" + ::ferry::internal::Sha256Hex(raw_public_key).substr(0, 16);
}

std::string_view TrustDecisionName(TrustDecision decision) {
  switch (decision) {
    case TrustDecision::kTrusted:
      return "trusted";
    case TrustDecision::kUnsignedAccepted:
      return "unsigned-accepted";
    case TrustDecision::kUntrustedAccepted:
      return "untrusted-accepted";
  }
  return "unknown";
}

// ---- SigningKey ----

void SigningKey::PkeyFree::operator()(EVP_PKEY* pkey) const { EVP_PKEY_free(pkey); }

SigningKey::SigningKey(std::unique_ptr<EVP_PKEY, PkeyFree> pkey, std::string public_key)
    : pkey_(std::move(pkey)), public_key_(std::move(public_key)) {}
SigningKey::SigningKey(SigningKey&&) noexcept = default;
SigningKey& SigningKey::operator=(SigningKey&&) noexcept = default;
SigningKey::~SigningKey() = default;

StatusOr<SigningKey> SigningKey::Generate() {
  FERRY_ASSIGN_OR_RETURN(PkeyPtr pkey, GenerateKey());
  FERRY_ASSIGN_OR_RETURN(std::string pub, RawPublicKey(pkey.get()));
  return SigningKey(std::unique_ptr<EVP_PKEY, PkeyFree>(pkey.release()), std::move(pub));
}

StatusOr<SigningKey> SigningKey::Load(const std::string& path) {
  const std::string how_to_make = "create one with `ferry artifact keygen DIR`";
  FERRY_ASSIGN_OR_RETURN(std::string pem, ReadKeyFile(path, "private key", true, how_to_make));
  Wipe wipe(pem);
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return OpenSslError("BIO_new_mem_buf", absl::StrCat("for '", path, "'"));
  PkeyPtr pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  if (!pkey) {
    std::string cause = DrainOpenSslErrors();
    if (pem.find("ENCRYPTED PRIVATE KEY") != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", path, "' is a passphrase-protected private key; ferry needs an unencrypted one: ",
          "decrypt it with `openssl pkey -in ", path, " -out NEWFILE` or ", how_to_make));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "'", path, "' is not an Ed25519 private key in PEM (", cause, "); ", how_to_make));
  }
  if (EVP_PKEY_get_id(pkey.get()) != EVP_PKEY_ED25519) {
    return absl::InvalidArgumentError(absl::StrCat("'", path,
                                                   "' is not an Ed25519 private key in PEM: it is ",
                                                   KeyTypeName(pkey.get()), "; ", how_to_make));
  }
  FERRY_ASSIGN_OR_RETURN(std::string pub, RawPublicKey(pkey.get()));
  return SigningKey(std::unique_ptr<EVP_PKEY, PkeyFree>(pkey.release()), std::move(pub));
}

StatusOr<std::string> SigningKey::Sign(std::string_view message) const {
  if (!pkey_) {
    return absl::FailedPreconditionError("SigningKey::Sign called on a moved-from key");
  }
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx) return OpenSslError("EVP_MD_CTX_new", "while signing");
  // Ed25519 hashes internally (PureEdDSA): no digest is given.
  if (EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, pkey_.get()) != 1) {
    return OpenSslError("EVP_DigestSignInit", absl::StrCat("with key ", fingerprint()));
  }
  std::string sig(kEd25519SignatureBytes, '\0');
  size_t len = sig.size();
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1 ||
      len != kEd25519SignatureBytes) {
    return OpenSslError("EVP_DigestSign", absl::StrCat("with key ", fingerprint()));
  }
  return sig;
}

std::string SigningKey::fingerprint() const { return KeyFingerprint(public_key_); }

// ---- Key files ----

StatusOr<KeyPairFiles> WriteKeyPair(const std::string& dir) {
  if (dir.empty()) {
    return absl::InvalidArgumentError("key directory is empty; pass the directory to write to");
  }
  std::string base = dir;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  FERRY_RETURN_IF_ERROR(MakeDirs(base));
  const std::string sep = base == "/" ? "" : "/";
  KeyPairFiles files;
  files.private_key_path = absl::StrCat(base, sep, Av(kPrivateKeyFile));
  files.public_key_path = absl::StrCat(base, sep, Av(kPublicKeyFile));
  // Check both before creating either, so an existing .pub does not cost a fresh .key.
  for (const std::string* p : {&files.private_key_path, &files.public_key_path}) {
    struct stat st;
    if (::lstat(p->c_str(), &st) == 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("key file '", *p,
                       "' already exists; refusing to overwrite it: remove it or pick another "
                       "DIR"));
    }
  }

  FERRY_ASSIGN_OR_RETURN(PkeyPtr pkey, GenerateKey());
  FERRY_ASSIGN_OR_RETURN(std::string pub, RawPublicKey(pkey.get()));
  files.fingerprint = KeyFingerprint(pub);

  // Secure-memory BIO: its buffer is wiped when freed.
  BioPtr priv_bio(BIO_new(BIO_s_secmem()));
  BioPtr pub_bio(BIO_new(BIO_s_mem()));
  if (!priv_bio || !pub_bio) return OpenSslError("BIO_new", "for the key PEM");
  // PKCS#8 PrivateKeyInfo, unencrypted ("BEGIN PRIVATE KEY").
  if (PEM_write_bio_PrivateKey(priv_bio.get(), pkey.get(), nullptr, nullptr, 0, nullptr, nullptr) !=
      1) {
    return OpenSslError("PEM_write_bio_PrivateKey", "for a new Ed25519 key");
  }
  if (PEM_write_bio_PUBKEY(pub_bio.get(), pkey.get()) != 1) {
    return OpenSslError("PEM_write_bio_PUBKEY", "for a new Ed25519 key");
  }
  char* priv_pem = nullptr;
  char* pub_pem = nullptr;
  long priv_len = BIO_get_mem_data(priv_bio.get(), &priv_pem);
  long pub_len = BIO_get_mem_data(pub_bio.get(), &pub_pem);
  if (priv_len <= 0 || pub_len <= 0) return OpenSslError("BIO_get_mem_data", "for the key PEM");

  FERRY_RETURN_IF_ERROR(
      WriteNewFile(files.private_key_path, priv_pem, static_cast<size_t>(priv_len), 0600));
  Status s = WriteNewFile(files.public_key_path, pub_pem, static_cast<size_t>(pub_len), 0644);
  if (s.ok()) {
    // Make the two new directory entries durable.
    Fd dfd(::open(base.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dfd.valid() || ::fsync(dfd.get()) != 0) {
      s = PathError(errno, "fsync", base, "cannot sync key directory", "check the disk");
      ::unlink(files.public_key_path.c_str());
    }
  }
  if (!s.ok()) {
    ::unlink(files.private_key_path.c_str());
    return s;
  }
  return files;
}

StatusOr<std::string> LoadPublicKey(const std::string& path) {
  const std::string how_to_make =
      "pass the deployment's signing.pub (made by `ferry artifact keygen DIR`)";
  FERRY_ASSIGN_OR_RETURN(std::string pem, ReadKeyFile(path, "public key", false, how_to_make));
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return OpenSslError("BIO_new_mem_buf", absl::StrCat("for '", path, "'"));
  PkeyPtr pkey(PEM_read_bio_PUBKEY(bio.get(), nullptr, NoPassphrase, nullptr));
  if (!pkey) {
    std::string cause = DrainOpenSslErrors();
    std::string hint;
    if (pem.find("PRIVATE KEY") != std::string::npos) {
      hint = " (it holds a PRIVATE key: never hand that to targets; use the .pub beside it)";
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "'", path, "' is not an Ed25519 public key in PEM", hint, " (", cause, "); ", how_to_make));
  }
  if (EVP_PKEY_get_id(pkey.get()) != EVP_PKEY_ED25519) {
    return absl::InvalidArgumentError(absl::StrCat("'", path,
                                                   "' is not an Ed25519 public key in PEM: it is ",
                                                   KeyTypeName(pkey.get()), "; ", how_to_make));
  }
  return RawPublicKey(pkey.get());
}

// ---- Verification ----

Status VerifySignature(std::string_view message, std::string_view signature,
                       std::string_view public_key) {
  if (public_key.size() != kEd25519PublicKeyBytes) {
    return absl::InvalidArgumentError(absl::StrCat("Ed25519 public key is ", public_key.size(),
                                                   " bytes; it must be ", kEd25519PublicKeyBytes));
  }
  if (signature.size() != kEd25519SignatureBytes) {
    return absl::InvalidArgumentError(absl::StrCat("Ed25519 signature is ", signature.size(),
                                                   " bytes; it must be ", kEd25519SignatureBytes));
  }
  PkeyPtr pkey(EVP_PKEY_new_raw_public_key(
      EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(public_key.data()),
      public_key.size()));
  if (!pkey) {
    return absl::InvalidArgumentError(
        absl::StrCat("Ed25519 public key ", KeyFingerprint(public_key),
                     " is not a valid key: EVP_PKEY_new_raw_public_key: ", DrainOpenSslErrors()));
  }
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx) return OpenSslError("EVP_MD_CTX_new", "while verifying");
  if (EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, pkey.get()) != 1) {
    return OpenSslError("EVP_DigestVerifyInit",
                        absl::StrCat("with key ", KeyFingerprint(public_key)));
  }
  int rc = EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                            signature.size(),
                            reinterpret_cast<const unsigned char*>(message.data()), message.size());
  if (rc == 1) return absl::OkStatus();
  if (rc == 0) {
    ERR_clear_error();
    return absl::DataLossError(absl::StrCat("Ed25519 signature does not verify under key ",
                                            KeyFingerprint(public_key),
                                            ": the signed data, the signature or the key was "
                                            "altered"));
  }
  return OpenSslError("EVP_DigestVerify", absl::StrCat("with key ", KeyFingerprint(public_key)));
}

// ---- TrustedKeys ----

StatusOr<TrustedKeys> TrustedKeys::Load(const std::vector<std::string>& public_key_paths) {
  TrustedKeys trusted;
  for (const std::string& path : public_key_paths) {
    StatusOr<std::string> key = LoadPublicKey(path);
    if (!key.ok()) {
      return Status(key.status().code(), absl::StrCat("--trust: ", key.status().message()));
    }
    trusted.keys_.emplace(*std::move(key), path);
  }
  return trusted;
}

bool TrustedKeys::Contains(std::string_view raw_public_key) const {
  return raw_public_key.size() == kEd25519PublicKeyBytes &&
         keys_.find(raw_public_key) != keys_.end();
}

StatusOr<TrustDecision> TrustedKeys::Check(std::string_view mx_source_id,
                                           std::string_view artifact_id, std::string_view signature,
                                           std::string_view public_key, std::string_view source,
                                           bool allow_unsigned) const {
  const std::string what = absl::StrCat("artifact ", Av(artifact_id), " from ", Av(source));
  if (signature.empty()) {
    if (allow_unsigned) return TrustDecision::kUnsignedAccepted;
    return absl::PermissionDeniedError(absl::StrCat(
        what,
        " is unsigned; pass --trust with the deployment's public key and have the source sign "
        "with --signing-key, or --allow-unsigned to accept it"));
  }
  if (public_key.size() != kEd25519PublicKeyBytes || signature.size() != kEd25519SignatureBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " carries a malformed signature (public key ", public_key.size(),
        " bytes, signature ", signature.size(), " bytes; Ed25519 needs ", kEd25519PublicKeyBytes,
        " and ", kEd25519SignatureBytes, "); refusing it: the source is broken or not ferry"));
  }
  if (mx_source_id.find('\n') != std::string_view::npos ||
      artifact_id.find('\n') != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": the model or artifact id contains a newline, so no signature can cover it"));
  }
  auto it = keys_.find(public_key);
  if (it == keys_.end()) {
    if (allow_unsigned) return TrustDecision::kUntrustedAccepted;
    return absl::PermissionDeniedError(absl::StrCat(
        what, " is signed by key ", KeyFingerprint(public_key),
        ", which this target does not trust (",
        keys_.empty()
            ? std::string("no --trust keys given")
            : absl::StrCat("it trusts ", keys_.size(), keys_.size() == 1 ? " key" : " keys"),
        "); add that key's .pub with --trust FILE, or pass --allow-unsigned to accept it "
        "unverified"));
  }
  Status s = VerifySignature(SignedMessage(mx_source_id, artifact_id), signature, public_key);
  if (s.ok()) return TrustDecision::kTrusted;
  if (s.code() != absl::StatusCode::kDataLoss) return s;
  return absl::DataLossError(absl::StrCat(
      what, " carries a signature by trusted key ", KeyFingerprint(public_key), " (", it->second,
      ") that does not verify for model ", Av(mx_source_id),
      ": the artifact was tampered with, or was signed for another model or artifact; refusing it "
      "even with --allow-unsigned; re-publish it from a trusted source"));
}

}  // namespace ferry::artifacts
