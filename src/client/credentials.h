// Client credentials for MetadataClient: the bearer token (fixed, or read from a file that
// rotates) and the channel's transport security (plaintext, TLS, mutual TLS). Not part of the
// installed API.
#ifndef FERRY_CLIENT_CREDENTIALS_H_
#define FERRY_CLIENT_CREDENTIALS_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "ferry/metadata_client.h"
#include "ferry/status.h"

namespace grpc {
class ChannelCredentials;
}  // namespace grpc

namespace ferry::internal {

// How each credential option is named in errors: the field, then the ferry flag and variables
// that fill it, so that library users and command-line users both recognize it.
inline constexpr char kTokenField[] = "token (FERRY_TOKEN)";
inline constexpr char kTokenFileField[] =
    "token_file (--token-file, FERRY_TOKEN_FILE, MX_AUTH_TOKEN_PATH)";
inline constexpr char kTlsCaField[] = "tls_ca_file (--tls-ca, FERRY_TLS_CA)";
inline constexpr char kTlsCertField[] = "tls_cert_file (--tls-cert, FERRY_TLS_CLIENT_CERT)";
inline constexpr char kTlsKeyField[] = "tls_key_file (--tls-key, FERRY_TLS_CLIENT_KEY)";
inline constexpr char kTlsServerNameField[] = "tls_server_name (--tls-server-name)";

// OK if `token` can be sent as a bearer token: non-empty, printable ASCII without spaces.
// The error names `what` and the offending byte's position, never the token.
Status ValidateToken(absl::string_view token, absl::string_view what);

// The bearer token a client sends: a fixed string, or the contents of a file that is re-read
// when it changes. Thread-safe.
class TokenSource {
 public:
  // InvalidArgument (naming kTokenField) if `token` is not a valid token.
  static StatusOr<std::unique_ptr<TokenSource>> FromToken(std::string token);

  // Reads `path` now. InvalidArgument naming kTokenFileField and the path if the file cannot
  // be read, is larger than 64 KiB, or holds no valid token (surrounding whitespace removed).
  static StatusOr<std::unique_ptr<TokenSource>> FromFile(std::string path);

  ~TokenSource();
  TokenSource(const TokenSource&) = delete;
  TokenSource& operator=(const TokenSource&) = delete;

  // The token to send now. For a file: one stat() per call; when the file's modification
  // time, size or inode changed since the last good read, it is read again. A file that is
  // missing, unreadable or holds no valid token at that moment (half-way through a rewrite, or
  // removed) keeps the previous token in force; the problem is logged once, without the token.
  // Never fails: the file was good at creation.
  std::string Get();

  // Where the token comes from, for error messages: "the token in /path (--token-file, ...)"
  // or "the token in MetadataClientOptions.token (FERRY_TOKEN)". Never the token itself.
  std::string Origin() const;

 private:
  TokenSource(std::string token, std::string path);

  const std::string path_;  // empty for a fixed token

  absl::Mutex mu_;
  std::string token_ ABSL_GUARDED_BY(mu_);
  // Identity of the file version token_ came from; empty forces a re-read on the next call.
  std::string stamp_ ABSL_GUARDED_BY(mu_);
  std::string last_error_ ABSL_GUARDED_BY(mu_);  // last logged reload failure
};

// The transport security of a channel, from MetadataClientOptions.
struct ChannelSecurity {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  bool tls = false;         // TLS from the tls / tls_* fields or an https:// address
  std::string server_name;  // GRPC_SSL_TARGET_NAME_OVERRIDE_ARG; empty: none
};

// Builds the channel credentials: options.credentials if set; else TLS (reading the PEM files,
// errors naming the field and the path) when options.tls, a tls_* file or `https_prefix` asks
// for it; else plaintext. REQUIRES: ValidateClientOptions(options) is OK.
StatusOr<ChannelSecurity> MakeChannelSecurity(const MetadataClientOptions& options,
                                              bool https_prefix);

// Reads one variable of the table in common/env.cc (its fallback included); nullopt if unset.
using EnvLookup = std::function<std::optional<std::string>(std::string_view name)>;

// FillCredentialsFromEnv with the environment passed in, for tests.
Status FillCredentials(MetadataClientOptions* options, const EnvLookup& lookup);

// Channel setup shared by every ferry gRPC client (the metadata client and the worker client).

struct NormalizedAddress {
  std::string target;         // what grpc::CreateChannel gets
  bool https_prefix = false;  // the address said https://
};

// Strips surrounding whitespace, an http:// or https:// prefix and trailing '/'. A gRPC target
// URI (dns:, unix:, unix-abstract:, ipv4:, ipv6:) is passed through; anything else must be
// host:port or [v6addr]:port with a port in 1..65535. InvalidArgument names `what`.
StatusOr<NormalizedAddress> NormalizeServerAddress(absl::string_view address,
                                                   absl::string_view what = "server_address");

// The token and TLS fields: token and token_file exclusive, a valid literal token, credentials
// not combined with tls / tls_*, tls_cert_file and tls_key_file together, tls_server_name only
// with TLS (which `https_prefix`, from the address, also turns on).
Status ValidateCredentialOptions(const MetadataClientOptions& options, bool https_prefix);

}  // namespace ferry::internal

#endif  // FERRY_CLIENT_CREDENTIALS_H_
