#include "artifacts/signing.h"

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/testing/test_certs.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::artifacts {
namespace {

using ::ferry::testing::TempDir;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;

const std::string kSourceA = "5f3a9c0d1e2b4a68";
const std::string kSourceB = "0123456789abcdef";
const std::string kArtifact(64, 'a');

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

mode_t ModeOf(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return 0;
  return st.st_mode & 07777;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

// Runs `openssl ARGS` quietly; returns its exit status (0 = success).
int Openssl(const std::string& args) {
  const std::string cmd = "openssl " + args + " >/dev/null 2>&1 </dev/null";
  return std::system(cmd.c_str());
}

std::string FromHex(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

std::string FlipBit(std::string s, size_t byte) {
  s[byte] = static_cast<char>(s[byte] ^ 0x01);
  return s;
}

TEST(SignedMessageTest, BindsBothIdsAfterADomainPrefix) {
  EXPECT_EQ(SignedMessage("src", "art"), "ferry artifact signature v1\nsrc\nart");
  EXPECT_NE(SignedMessage(kSourceA, kArtifact), SignedMessage(kSourceB, kArtifact));
}

TEST(KeyFingerprintTest, IsPrefixOfSha256OfTheRawKey) {
  // SHA-256 of 32 zero bytes is 66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925.
  EXPECT_EQ(KeyFingerprint(std::string(32, '\0')), "ed25519:66687aadf862bd77");
}

TEST(SigningKeyTest, GenerateSignVerifyRoundTrip) {
  auto key = SigningKey::Generate();
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key->public_key().size(), kEd25519PublicKeyBytes);
  EXPECT_THAT(key->fingerprint(), MatchesRegex("ed25519:[0-9a-f]{16}"));
  EXPECT_EQ(key->fingerprint(), KeyFingerprint(key->public_key()));

  const std::string msg = SignedMessage(kSourceA, kArtifact);
  auto sig = key->Sign(msg);
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_EQ(sig->size(), kEd25519SignatureBytes);
  EXPECT_TRUE(VerifySignature(msg, *sig, key->public_key()).ok());
  // Ed25519 is deterministic.
  EXPECT_EQ(*key->Sign(msg), *sig);

  auto other = SigningKey::Generate();
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_NE(other->public_key(), key->public_key());
}

TEST(SigningKeyTest, MovedFromKeyRefusesToSign) {
  auto key = SigningKey::Generate();
  ASSERT_TRUE(key.ok()) << key.status();
  SigningKey moved = *std::move(key);
  EXPECT_TRUE(moved.Sign("x").ok());
  auto sig = key->Sign("x");  // NOLINT(bugprone-use-after-move): the contract under test
  EXPECT_EQ(sig.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(SigningKeyTest, SignIsThreadSafe) {
  auto key = SigningKey::Generate();
  ASSERT_TRUE(key.ok()) << key.status();
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const std::string msg = SignedMessage(std::to_string(t), std::to_string(i));
        auto sig = key->Sign(msg);
        if (!sig.ok() || !VerifySignature(msg, *sig, key->public_key()).ok()) ++failures[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures, std::vector<int>(4, 0));
}

// RFC 8032 section 7.1, TEST 1 (empty message), loaded through PKCS#8 PEM.
TEST(SigningKeyTest, MatchesRfc8032TestVector) {
  TempDir dir;
  const std::string der = dir.path() + "/rfc.der";
  const std::string pem = dir.path() + "/rfc.key";
  WriteAll(der, FromHex("302e020100300506032b657004220420"
                        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"));
  ASSERT_EQ(Openssl("pkey -inform DER -in " + der + " -out " + pem), 0);
  ASSERT_EQ(::chmod(pem.c_str(), 0600), 0);
  auto key = SigningKey::Load(pem);
  ASSERT_TRUE(key.ok()) << key.status();
  const std::string pub =
      FromHex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
  const std::string want = FromHex(
      "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
      "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b");
  EXPECT_EQ(key->public_key(), pub);
  auto sig = key->Sign("");
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_EQ(*sig, want);
  EXPECT_TRUE(VerifySignature("", want, pub).ok());
}

TEST(WriteKeyPairTest, WritesPrivateAndPublicPemWithExactModes) {
  TempDir dir;
  const std::string keys = dir.path() + "/nested/keys";
  const mode_t old_umask = ::umask(077);  // the .pub must still come out 0644
  auto files = WriteKeyPair(keys);
  ::umask(old_umask);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(files->private_key_path, keys + "/signing.key");
  EXPECT_EQ(files->public_key_path, keys + "/signing.pub");
  EXPECT_EQ(ModeOf(dir.path() + "/nested"), 0700);
  EXPECT_EQ(ModeOf(keys), 0700);
  EXPECT_EQ(ModeOf(files->private_key_path), 0600);
  EXPECT_EQ(ModeOf(files->public_key_path), 0644);
  const std::string priv = ReadAll(files->private_key_path);
  const std::string pub = ReadAll(files->public_key_path);
  EXPECT_EQ(priv.rfind("-----BEGIN PRIVATE KEY-----\n", 0), 0u) << priv;
  EXPECT_THAT(priv, HasSubstr("-----END PRIVATE KEY-----\n"));
  EXPECT_EQ(pub.rfind("-----BEGIN PUBLIC KEY-----\n", 0), 0u) << pub;
  EXPECT_THAT(pub, HasSubstr("-----END PUBLIC KEY-----\n"));

  auto loaded_pub = LoadPublicKey(files->public_key_path);
  ASSERT_TRUE(loaded_pub.ok()) << loaded_pub.status();
  EXPECT_EQ(files->fingerprint, KeyFingerprint(*loaded_pub));
}

TEST(WriteKeyPairTest, TrailingSlashAndExistingDirectory) {
  TempDir dir;
  auto files = WriteKeyPair(dir.path() + "/");
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(files->private_key_path, dir.path() + "/signing.key");
}

TEST(WriteKeyPairTest, RefusesToOverwriteAndLeavesTheOriginal) {
  TempDir dir;
  auto first = WriteKeyPair(dir.path());
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string priv = ReadAll(first->private_key_path);
  const std::string pub = ReadAll(first->public_key_path);

  auto second = WriteKeyPair(dir.path());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(second.status().message(), AllOf(HasSubstr(first->private_key_path),
                                               HasSubstr("remove it or pick another DIR")));
  EXPECT_EQ(ReadAll(first->private_key_path), priv);
  EXPECT_EQ(ReadAll(first->public_key_path), pub);
  EXPECT_EQ(ModeOf(first->private_key_path), 0600);
}

TEST(WriteKeyPairTest, ExistingPublicKeyAloneIsRefusedWithoutWritingAPrivateKey) {
  TempDir dir;
  const std::string pub = dir.Write("signing.pub", "someone else's key\n");
  auto files = WriteKeyPair(dir.path());
  EXPECT_EQ(files.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(files.status().message(), HasSubstr(pub));
  EXPECT_FALSE(Exists(dir.path() + "/signing.key"));
  EXPECT_EQ(ReadAll(pub), "someone else's key\n");
}

TEST(WriteKeyPairTest, DirectoryThatIsAFileIsInvalid) {
  TempDir dir;
  const std::string file = dir.Write("plain", "x");
  auto files = WriteKeyPair(file);
  EXPECT_EQ(files.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(files.status().message(), HasSubstr("is not a directory"));
  EXPECT_EQ(WriteKeyPair("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(KeyFilesTest, LoadRoundTripSignsVerifiably) {
  TempDir dir;
  auto files = WriteKeyPair(dir.path());
  ASSERT_TRUE(files.ok()) << files.status();
  auto key = SigningKey::Load(files->private_key_path);
  ASSERT_TRUE(key.ok()) << key.status();
  auto pub = LoadPublicKey(files->public_key_path);
  ASSERT_TRUE(pub.ok()) << pub.status();
  EXPECT_EQ(key->public_key(), *pub);
  EXPECT_EQ(key->fingerprint(), files->fingerprint);
  const std::string msg = SignedMessage(kSourceA, kArtifact);
  auto sig = key->Sign(msg);
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_TRUE(VerifySignature(msg, *sig, *pub).ok());
}

// The openssl command derives the same public key PEM from our private key file.
TEST(KeyFilesTest, OpensslDerivesTheSamePublicKey) {
  TempDir dir;
  auto files = WriteKeyPair(dir.path());
  ASSERT_TRUE(files.ok()) << files.status();
  const std::string out = dir.path() + "/openssl.pub";
  ASSERT_EQ(Openssl("pkey -in " + files->private_key_path + " -pubout -out " + out), 0);
  EXPECT_EQ(ReadAll(out), ReadAll(files->public_key_path));
}

// Signatures interoperate with `openssl pkeyutl` both ways.
TEST(KeyFilesTest, OpensslSignaturesInteroperate) {
  TempDir dir;
  auto files = WriteKeyPair(dir.path());
  ASSERT_TRUE(files.ok()) << files.status();
  auto key = SigningKey::Load(files->private_key_path);
  ASSERT_TRUE(key.ok()) << key.status();
  const std::string msg = SignedMessage(kSourceA, kArtifact);
  const std::string msg_file = dir.Write("msg", msg);
  const std::string sig_file = dir.path() + "/msg.sig";

  ASSERT_EQ(Openssl("pkeyutl -sign -rawin -inkey " + files->private_key_path + " -in " + msg_file +
                    " -out " + sig_file),
            0);
  const std::string openssl_sig = ReadAll(sig_file);
  ASSERT_EQ(openssl_sig.size(), kEd25519SignatureBytes);
  EXPECT_TRUE(VerifySignature(msg, openssl_sig, key->public_key()).ok());
  EXPECT_EQ(*key->Sign(msg), openssl_sig);  // deterministic, so identical

  const std::string ours = dir.path() + "/ours.sig";
  WriteAll(ours, *key->Sign(msg));
  EXPECT_EQ(Openssl("pkeyutl -verify -rawin -pubin -inkey " + files->public_key_path + " -in " +
                    msg_file + " -sigfile " + ours),
            0);
  WriteAll(ours, FlipBit(*key->Sign(msg), 5));
  EXPECT_NE(Openssl("pkeyutl -verify -rawin -pubin -inkey " + files->public_key_path + " -in " +
                    msg_file + " -sigfile " + ours),
            0);
}

TEST(KeyFilesTest, LoadsAKeyMadeByOpensslGenpkey) {
  TempDir dir;
  const std::string path = dir.path() + "/k.pem";
  ASSERT_EQ(Openssl("genpkey -algorithm ed25519 -out " + path), 0);
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  auto key = SigningKey::Load(path);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key->public_key().size(), kEd25519PublicKeyBytes);
}

TEST(VerifySignatureTest, AlteredSignatureMessageOrKeyIsDataLoss) {
  auto key = SigningKey::Generate();
  auto other = SigningKey::Generate();
  ASSERT_TRUE(key.ok() && other.ok());
  const std::string msg = SignedMessage(kSourceA, kArtifact);
  const std::string sig = *key->Sign(msg);
  for (size_t byte : {size_t{0}, size_t{31}, size_t{32}, size_t{63}}) {
    Status s = VerifySignature(msg, FlipBit(sig, byte), key->public_key());
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << byte;
    EXPECT_THAT(s.message(),
                AllOf(HasSubstr("signature does not verify"), HasSubstr(key->fingerprint())));
  }
  EXPECT_EQ(VerifySignature(FlipBit(msg, 10), sig, key->public_key()).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(VerifySignature(msg, sig, other->public_key()).code(), absl::StatusCode::kDataLoss);
  // A failed verification leaves no stale OpenSSL error behind for the next call.
  EXPECT_TRUE(VerifySignature(msg, sig, key->public_key()).ok());
}

TEST(VerifySignatureTest, WrongSizesAreInvalidArgument) {
  auto key = SigningKey::Generate();
  ASSERT_TRUE(key.ok()) << key.status();
  const std::string sig = *key->Sign("m");
  Status short_key = VerifySignature("m", sig, key->public_key().substr(0, 31));
  EXPECT_EQ(short_key.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(short_key.message(), HasSubstr("public key is 31 bytes; it must be 32"));
  Status long_sig = VerifySignature("m", sig + "x", key->public_key());
  EXPECT_EQ(long_sig.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(long_sig.message(), HasSubstr("signature is 65 bytes; it must be 64"));
  EXPECT_EQ(VerifySignature("m", "", key->public_key()).code(), absl::StatusCode::kInvalidArgument);
}

TEST(LoadErrorsTest, GroupOrWorldAccessibleKeyIsRefused) {
  TempDir dir;
  auto files = WriteKeyPair(dir.path());
  ASSERT_TRUE(files.ok()) << files.status();
  for (mode_t mode : {0644, 0640, 0604, 0620}) {
    ASSERT_EQ(::chmod(files->private_key_path.c_str(), mode), 0);
    auto key = SigningKey::Load(files->private_key_path);
    EXPECT_EQ(key.status().code(), absl::StatusCode::kPermissionDenied) << mode;
    EXPECT_THAT(key.status().message(), HasSubstr("chmod 600 " + files->private_key_path));
  }
  ASSERT_EQ(::chmod(files->private_key_path.c_str(), 0400), 0);
  EXPECT_TRUE(SigningKey::Load(files->private_key_path).ok());
}

TEST(LoadErrorsTest, NonKeysAreRefusedNamingTheFile) {
  TempDir dir;
  const std::string junk = dir.Write("junk.key", "not a key at all\n");
  ASSERT_EQ(::chmod(junk.c_str(), 0600), 0);
  auto key = SigningKey::Load(junk);
  EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(key.status().message(),
              AllOf(HasSubstr("'" + junk + "' is not an Ed25519 private key in PEM"),
                    HasSubstr("ferry artifact keygen DIR")));

  const std::string rsa = dir.path() + "/rsa.key";
  ASSERT_EQ(Openssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out " + rsa), 0);
  ASSERT_EQ(::chmod(rsa.c_str(), 0600), 0);
  key = SigningKey::Load(rsa);
  EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      key.status().message(),
      AllOf(HasSubstr("'" + rsa + "' is not an Ed25519 private key in PEM: it is a RSA key"),
            HasSubstr("ferry artifact keygen DIR")));

  auto missing = SigningKey::Load(dir.path() + "/missing.key");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(),
              AllOf(HasSubstr(dir.path() + "/missing.key"), HasSubstr("ferry artifact keygen")));

  auto directory = SigningKey::Load(dir.path());
  EXPECT_EQ(directory.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(directory.status().message(), HasSubstr("is not a regular file"));

  // A public key where the private key belongs.
  auto files = WriteKeyPair(dir.path() + "/pair");
  ASSERT_TRUE(files.ok()) << files.status();
  ASSERT_EQ(::chmod(files->public_key_path.c_str(), 0600), 0);
  EXPECT_EQ(SigningKey::Load(files->public_key_path).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// An encrypted key is refused at once, never by prompting for a passphrase.
TEST(LoadErrorsTest, PassphraseProtectedKeyIsRefusedWithoutPrompting) {
  TempDir dir;
  const std::string path = dir.path() + "/enc.key";
  ASSERT_EQ(Openssl("genpkey -algorithm ed25519 -aes-256-cbc -pass pass:secret -out " + path), 0);
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  auto key = SigningKey::Load(path);
  EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(key.status().message(), AllOf(HasSubstr(path), HasSubstr("passphrase-protected")));
}

TEST(LoadErrorsTest, LoadPublicKeyRefusesNonPublicKeysNamingTheFile) {
  TempDir dir;
  auto files = WriteKeyPair(dir.path());
  ASSERT_TRUE(files.ok()) << files.status();
  auto priv = LoadPublicKey(files->private_key_path);
  EXPECT_EQ(priv.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(priv.status().message(),
              AllOf(HasSubstr("'" + files->private_key_path + "' is not an Ed25519 public key"),
                    HasSubstr("PRIVATE key")));

  const std::string rsa = dir.path() + "/rsa.key";
  const std::string rsa_pub = dir.path() + "/rsa.pub";
  ASSERT_EQ(Openssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out " + rsa), 0);
  ASSERT_EQ(Openssl("pkey -in " + rsa + " -pubout -out " + rsa_pub), 0);
  auto r = LoadPublicKey(rsa_pub);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("'" + rsa_pub +
                                              "' is not an Ed25519 public key in "
                                              "PEM: it is a RSA key"));

  EXPECT_EQ(LoadPublicKey(dir.path() + "/nope.pub").status().code(), absl::StatusCode::kNotFound);
  const std::string big = dir.Write("big.pub", std::string(100 * 1024, 'A'));
  auto b = LoadPublicKey(big);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("larger than 64 KiB"));
}

class TrustedKeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto trusted_files = WriteKeyPair(dir_.path() + "/trusted");
    auto other_files = WriteKeyPair(dir_.path() + "/other");
    ASSERT_TRUE(trusted_files.ok()) << trusted_files.status();
    ASSERT_TRUE(other_files.ok()) << other_files.status();
    trusted_pub_path_ = trusted_files->public_key_path;
    auto key = SigningKey::Load(trusted_files->private_key_path);
    auto other = SigningKey::Load(other_files->private_key_path);
    ASSERT_TRUE(key.ok()) << key.status();
    ASSERT_TRUE(other.ok()) << other.status();
    key_.emplace(*std::move(key));
    other_.emplace(*std::move(other));
    auto trust = TrustedKeys::Load({trusted_pub_path_});
    ASSERT_TRUE(trust.ok()) << trust.status();
    trust_ = *std::move(trust);
    sig_ = *key_->Sign(SignedMessage(kSourceA, kArtifact));
  }

  StatusOr<TrustDecision> Check(std::string_view sig, std::string_view pub, bool allow_unsigned,
                                std::string_view mx_source_id = kSourceA) {
    return trust_.Check(mx_source_id, kArtifact, sig, pub, kWhere, allow_unsigned);
  }

  static constexpr std::string_view kWhere = "worker ab12 at 10.0.0.5:6555";
  TempDir dir_;
  std::string trusted_pub_path_;
  std::optional<SigningKey> key_;
  std::optional<SigningKey> other_;
  TrustedKeys trust_;
  std::string sig_;
};

TEST_F(TrustedKeysTest, LoadCountsKeysAndNamesBadFiles) {
  EXPECT_EQ(trust_.size(), 1u);
  EXPECT_FALSE(trust_.empty());
  EXPECT_TRUE(trust_.Contains(key_->public_key()));
  EXPECT_FALSE(trust_.Contains(other_->public_key()));
  EXPECT_FALSE(trust_.Contains(key_->public_key().substr(0, 31)));

  auto twice = TrustedKeys::Load({trusted_pub_path_, trusted_pub_path_});
  ASSERT_TRUE(twice.ok()) << twice.status();
  EXPECT_EQ(twice->size(), 1u);

  auto none = TrustedKeys::Load({});
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());

  const std::string junk = dir_.Write("junk.pub", "junk\n");
  auto bad = TrustedKeys::Load({trusted_pub_path_, junk});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), AllOf(HasSubstr("--trust"), HasSubstr(junk)));
  auto missing = TrustedKeys::Load({dir_.path() + "/gone.pub"});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(dir_.path() + "/gone.pub"));
}

TEST_F(TrustedKeysTest, TrustedSignatureIsAccepted) {
  auto d = Check(sig_, key_->public_key(), /*allow_unsigned=*/false);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, TrustDecision::kTrusted);
  EXPECT_EQ(TrustDecisionName(*d), "trusted");
  // allow_unsigned does not change how a good signature is classified.
  EXPECT_EQ(*Check(sig_, key_->public_key(), true), TrustDecision::kTrusted);
}

TEST_F(TrustedKeysTest, UnsignedIsRefusedUnlessAllowed) {
  auto d = Check("", "", false);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(d.status().message(),
            "artifact " + kArtifact + " from " + std::string(kWhere) +
                " is unsigned; pass --trust with the deployment's public key and have the source "
                "sign with --signing-key, or --allow-unsigned to accept it");
  auto ok = Check("", "", true);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, TrustDecision::kUnsignedAccepted);
  EXPECT_EQ(TrustDecisionName(*ok), "unsigned-accepted");
}

TEST_F(TrustedKeysTest, UntrustedKeyIsRefusedWithItsFingerprintUnlessAllowed) {
  const std::string other_sig = *other_->Sign(SignedMessage(kSourceA, kArtifact));
  auto d = Check(other_sig, other_->public_key(), false);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(d.status().message(),
              AllOf(HasSubstr(other_->fingerprint()), HasSubstr(std::string(kWhere)),
                    HasSubstr("--trust"), HasSubstr("--allow-unsigned"),
                    HasSubstr("(it trusts 1 key)"), Not(HasSubstr(key_->fingerprint()))));
  auto ok = Check(other_sig, other_->public_key(), true);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, TrustDecision::kUntrustedAccepted);

  TrustedKeys empty;
  auto e = empty.Check(kSourceA, kArtifact, sig_, key_->public_key(), kWhere, false);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(e.status().message(), HasSubstr("no --trust keys given"));
}

TEST_F(TrustedKeysTest, TamperedIsRefusedEvenWithAllowUnsigned) {
  for (bool allow_unsigned : {false, true}) {
    auto d = Check(FlipBit(sig_, 7), key_->public_key(), allow_unsigned);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kDataLoss) << allow_unsigned;
    EXPECT_THAT(d.status().message(),
                AllOf(HasSubstr(key_->fingerprint()), HasSubstr(trusted_pub_path_),
                      HasSubstr(std::string(kWhere)), HasSubstr("even with --allow-unsigned")));
    // A signature over another artifact id does not carry over.
    auto other_artifact = trust_.Check(kSourceA, std::string(64, 'b'), sig_, key_->public_key(),
                                       kWhere, allow_unsigned);
    EXPECT_EQ(other_artifact.status().code(), absl::StatusCode::kDataLoss);
  }
}

TEST_F(TrustedKeysTest, SignatureIsBoundToTheModel) {
  // Signed for source A; replayed under source B.
  for (bool allow_unsigned : {false, true}) {
    auto d = Check(sig_, key_->public_key(), allow_unsigned, kSourceB);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(d.status().message(), HasSubstr("for model " + kSourceB));
  }
  const std::string sig_b = *key_->Sign(SignedMessage(kSourceB, kArtifact));
  EXPECT_EQ(*Check(sig_b, key_->public_key(), false, kSourceB), TrustDecision::kTrusted);
  EXPECT_EQ(Check(sig_b, key_->public_key(), false, kSourceA).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST_F(TrustedKeysTest, MalformedSignaturesAreInvalidEvenWithAllowUnsigned) {
  for (bool allow_unsigned : {false, true}) {
    auto short_key = Check(sig_, key_->public_key().substr(1), allow_unsigned);
    EXPECT_EQ(short_key.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(short_key.status().message(),
                AllOf(HasSubstr("malformed signature"), HasSubstr("public key 31 bytes")));
    auto short_sig = Check(sig_.substr(1), key_->public_key(), allow_unsigned);
    EXPECT_EQ(short_sig.status().code(), absl::StatusCode::kInvalidArgument);
    auto no_key = Check(sig_, "", allow_unsigned);
    EXPECT_EQ(no_key.status().code(), absl::StatusCode::kInvalidArgument);
    auto newline = Check(sig_, key_->public_key(), allow_unsigned, "a\nb");
    EXPECT_EQ(newline.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(newline.status().message(), HasSubstr("newline"));
  }
}

}  // namespace
}  // namespace ferry::artifacts
