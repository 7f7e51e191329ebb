#include "client/credentials.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/env.h"
#include "common/fd.h"
#include "common/logging.h"
#include "common/pem_file.h"
#include "spdlog/spdlog.h"

namespace ferry {

namespace internal {

namespace {

// A token file holds one token; anything larger is a mistake (a wrong path), not a token.
constexpr off_t kMaxTokenFileBytes = 64 * 1024;

// A file modified less than this long before it was read may be rewritten again within the
// resolution of file timestamps (a kernel tick) without its stamp changing, as git's "racily
// clean" index entries; such a read is not trusted and the file is read again on the next call.
constexpr absl::Duration kStampSettleTime = absl::Seconds(1);

std::string Stamp(const struct stat& st) {
  return absl::StrCat(st.st_dev, ":", st.st_ino, ":", st.st_size, ":", st.st_mtim.tv_sec, ".",
                      st.st_mtim.tv_nsec);
}

struct TokenRead {
  std::string token;
  std::string stamp;  // empty when the file changed too recently to trust its stamp
};

StatusOr<TokenRead> ReadTokenFile(const std::string& path) {
  auto fail = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(kTokenFileField, ": ", path, " ", why));
  };
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return fail(absl::StrCat("cannot be read: ", std::strerror(errno)));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    return fail(absl::StrCat("cannot be read: fstat: ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) return fail("is not a regular file");
  if (st.st_size > kMaxTokenFileBytes) {
    return fail(absl::StrCat("is ", st.st_size, " bytes; a token file holds one token"));
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd.get(), text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(absl::StrCat("cannot be read: ", std::strerror(errno)));
    if (n == 0) break;  // truncated while we read; take what is there
    got += static_cast<size_t>(n);
  }
  text.resize(got);
  absl::string_view token = absl::StripAsciiWhitespace(text);
  if (token.empty()) return fail("holds no token (it is empty)");
  if (Status s = ValidateToken(token, ""); !s.ok()) return fail(s.message());
  TokenRead out;
  out.token = std::string(token);
  if (absl::Now() - absl::TimeFromTimespec(st.st_mtim) >= kStampSettleTime) out.stamp = Stamp(st);
  return out;
}

}  // namespace

Status ValidateToken(absl::string_view token, absl::string_view what) {
  const std::string prefix = what.empty() ? "" : absl::StrCat(what, ": ");
  if (token.empty()) return absl::InvalidArgumentError(absl::StrCat(prefix, "is empty"));
  for (size_t i = 0; i < token.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(token[i]);
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          absl::StrCat(prefix, "holds a character that cannot be sent in a header (byte ", i + 1,
                       " of the token); a token is printable ASCII without spaces"));
    }
  }
  return absl::OkStatus();
}

TokenSource::TokenSource(std::string token, std::string path) : path_(std::move(path)) {
  absl::MutexLock lock(&mu_);
  token_ = std::move(token);
}

TokenSource::~TokenSource() = default;

StatusOr<std::unique_ptr<TokenSource>> TokenSource::FromToken(std::string token) {
  FERRY_RETURN_IF_ERROR(ValidateToken(token, kTokenField));
  return std::unique_ptr<TokenSource>(new TokenSource(std::move(token), ""));
}

StatusOr<std::unique_ptr<TokenSource>> TokenSource::FromFile(std::string path) {
  FERRY_ASSIGN_OR_RETURN(TokenRead read, ReadTokenFile(path));
  auto source = std::unique_ptr<TokenSource>(new TokenSource(std::move(read.token), path));
  absl::MutexLock lock(&source->mu_);
  source->stamp_ = std::move(read.stamp);
  return source;
}

std::string TokenSource::Get() {
  absl::MutexLock lock(&mu_);
  if (path_.empty()) return token_;
  struct stat st;
  if (!stamp_.empty() && ::stat(path_.c_str(), &st) == 0 && Stamp(st) == stamp_) return token_;
  StatusOr<TokenRead> read = ReadTokenFile(path_);
  if (!read.ok()) {
    if (read.status().message() != last_error_) {
      last_error_ = std::string(read.status().message());
      spdlog::warn("{}; still sending the token read before", last_error_);
    }
    return token_;
  }
  if (!last_error_.empty()) {
    spdlog::info("token file {} holds a valid token again", path_);
    last_error_.clear();
  }
  if (read->token != token_) {
    spdlog::info("token file {} changed; sending its new token from now on", path_);
    token_ = std::move(read->token);
  }
  stamp_ = std::move(read->stamp);
  return token_;
}

std::string TokenSource::Origin() const {
  if (path_.empty()) return absl::StrCat("the token in MetadataClientOptions.", kTokenField);
  return absl::StrCat("the token in ", path_,
                      " (--token-file, FERRY_TOKEN_FILE or MX_AUTH_TOKEN_PATH)");
}

StatusOr<ChannelSecurity> MakeChannelSecurity(const MetadataClientOptions& options,
                                              bool https_prefix) {
  ChannelSecurity out;
  if (options.credentials != nullptr) {
    out.credentials = options.credentials;
    out.tls = https_prefix;  // a guess, used only for advice in error messages
    return out;
  }
  out.tls = options.tls || https_prefix || !options.tls_ca_file.empty() ||
            !options.tls_cert_file.empty() || !options.tls_key_file.empty();
  if (!out.tls) {
    out.credentials = grpc::InsecureChannelCredentials();
    return out;
  }
  grpc::SslCredentialsOptions ssl;  // empty pem_root_certs: gRPC's default roots
  if (!options.tls_ca_file.empty()) {
    FERRY_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPemFile(options.tls_ca_file, kTlsCaField));
  }
  if (!options.tls_cert_file.empty()) {
    FERRY_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadPemFile(options.tls_cert_file, kTlsCertField));
    FERRY_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadPemFile(options.tls_key_file, kTlsKeyField));
  }
  out.credentials = grpc::SslCredentials(ssl);
  if (out.credentials == nullptr) {
    return absl::InvalidArgumentError(
        "gRPC rejected the TLS settings (tls_ca_file, tls_cert_file, tls_key_file)");
  }
  out.server_name = options.tls_server_name;
  return out;
}

Status FillCredentials(MetadataClientOptions* options, const EnvLookup& lookup) {
  if (options->token.empty() && options->token_file.empty()) {
    std::optional<std::string> file = lookup("FERRY_TOKEN_FILE");
    std::optional<std::string> token = lookup("FERRY_TOKEN");
    if (file.has_value() && token.has_value()) {
      return absl::InvalidArgumentError(
          "both a token file (FERRY_TOKEN_FILE or MX_AUTH_TOKEN_PATH) and FERRY_TOKEN are set in "
          "the environment; unset one (a token file is preferred: it can rotate)");
    }
    if (file.has_value()) options->token_file = *file;
    if (token.has_value()) options->token = *token;
  }
  if (options->credentials == nullptr) {
    auto fill = [&](std::string* field, std::string_view name) {
      if (!field->empty()) return;
      if (std::optional<std::string> v = lookup(name)) *field = *v;
    };
    fill(&options->tls_ca_file, "FERRY_TLS_CA");
    fill(&options->tls_cert_file, "FERRY_TLS_CLIENT_CERT");
    fill(&options->tls_key_file, "FERRY_TLS_CLIENT_KEY");
  }
  return absl::OkStatus();
}

StatusOr<NormalizedAddress> NormalizeServerAddress(absl::string_view address,
                                                   absl::string_view what) {
  NormalizedAddress out;
  absl::string_view a = absl::StripAsciiWhitespace(address);
  if (absl::ConsumePrefix(&a, "https://")) {
    out.https_prefix = true;
  } else {
    absl::ConsumePrefix(&a, "http://");
  }
  while (absl::ConsumeSuffix(&a, "/")) {
  }
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, "='", address, "' ", why, "; use host:port, e.g. localhost:8001"));
  };
  if (a.empty()) return bad("is empty");
  for (absl::string_view scheme : {"dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:"}) {
    if (absl::StartsWith(a, scheme)) {
      out.target = std::string(a);
      return out;
    }
  }
  if (absl::StrContains(a, "/")) return bad("has a path");
  absl::string_view host;
  absl::string_view port;
  if (absl::StartsWith(a, "[")) {  // [v6addr]:port
    size_t close = a.find("]:");
    if (close == absl::string_view::npos) return bad("has no port");
    host = a.substr(1, close - 1);
    port = a.substr(close + 2);
  } else {
    size_t colon = a.rfind(':');
    if (colon == absl::string_view::npos) return bad("has no port");
    host = a.substr(0, colon);
    port = a.substr(colon + 1);
    if (absl::StrContains(host, ":")) {
      return bad("is an IPv6 address without brackets");
    }
  }
  int port_number = 0;
  if (host.empty()) return bad("has no host");
  if (!absl::SimpleAtoi(port, &port_number) || port_number < 1 || port_number > 65535) {
    return bad("has no valid port (1-65535)");
  }
  out.target = std::string(a);
  return out;
}

Status ValidateCredentialOptions(const MetadataClientOptions& options, bool https_prefix) {
  if (!options.token.empty() && !options.token_file.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kTokenField, " and ", kTokenFileField, " are both set; set one"));
  }
  if (!options.token.empty()) FERRY_RETURN_IF_ERROR(ValidateToken(options.token, kTokenField));
  // What turns TLS on (see MakeChannelSecurity); tls_server_name only modifies it.
  const bool tls_on = options.tls || !options.tls_ca_file.empty() ||
                      !options.tls_cert_file.empty() || !options.tls_key_file.empty();
  const bool tls_fields = tls_on || !options.tls_server_name.empty();
  if (options.credentials != nullptr && tls_fields) {
    return absl::InvalidArgumentError(
        "credentials and tls / tls_* are both set; build the TLS credentials either way, not "
        "both");
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.tls_cert_file.empty() ? kTlsKeyField : kTlsCertField, " is set but ",
                     options.tls_cert_file.empty() ? kTlsCertField : kTlsKeyField,
                     " is not; a client certificate needs both"));
  }
  if (!options.tls_server_name.empty() && !tls_on && !https_prefix) {
    return absl::InvalidArgumentError(
        absl::StrCat(kTlsServerNameField, "='", options.tls_server_name,
                     "' needs TLS; add tls (--tls) or tls_ca_file (--tls-ca, FERRY_TLS_CA)"));
  }
  return absl::OkStatus();
}

}  // namespace internal

Status FillCredentialsFromEnv(MetadataClientOptions* options) {
  return internal::FillCredentials(options,
                                   [](std::string_view name) { return internal::GetEnv(name); });
}

}  // namespace ferry
