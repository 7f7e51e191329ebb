// libFuzzer target: what a ferry client does with its credential files. The input becomes the
// contents of a file that the TLS options (tls_ca_file, tls_cert_file with tls_key_file) name,
// read by MakeChannelSecurity (ReadPemFile, then grpc::SslCredentials), and of a token file
// (TokenSource::FromFile), which is then rewritten with the input's second part and read again
// (TokenSource::Get, as after a rotation). The server address parser gets the same bytes.
//
// Ferry does not parse PEM itself: it checks for a "-----BEGIN " line and hands the bytes to
// gRPC, which parses them (through OpenSSL) only when a channel first connects. Invariants:
// the TLS settings are accepted exactly when every file named holds a BEGIN line (else
// InvalidArgument naming the field and the path); a token file is accepted exactly when it holds
// one printable token (whitespace around it ignored), which Get returns; a rewrite to a bad token
// keeps the old one in force, a good one takes over; an accepted address is non-empty.
//
// Input: byte 0 = which TLS files are set (bit 0 the CA, bit 1 cert and key, bit 2 tls), byte
// 1 = where the second part (the rewritten token file) starts, in units of 4 bytes.
#include <fcntl.h>
#include <grpc/grpc.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "client/credentials.h"
#include "ferry/metadata_client.h"
#include "spdlog/spdlog.h"

namespace {

using namespace ferry::internal;  // NOLINT: a fuzzer's one translation unit

const std::string& Dir() {
  static const std::string* dir = [] {
    spdlog::set_level(spdlog::level::off);  // a rotation to a bad token logs a warning
    grpc_init();  // for the whole run: else every input starts and stops gRPC's threads
    // tmpfs where there is one: truncating and rewriting a file there is cheap.
    char shm[] = "/dev/shm/ferry-credentials-fuzz-XXXXXX";
    char tmp[] = "/tmp/ferry-credentials-fuzz-XXXXXX";
    char* pattern = ::mkdtemp(shm) != nullptr ? shm : ::mkdtemp(tmp);
    if (pattern == nullptr) __builtin_trap();
    return new std::string(pattern);
  }();
  static const bool cleanup = [] {
    std::atexit([] {  // libFuzzer exits normally at the end of a run
      for (const char* f : {"/tls.pem", "/token"}) ::unlink((*dir + f).c_str());
      ::rmdir(dir->c_str());
    });
    return true;
  }();
  (void)cleanup;
  return *dir;
}

void WriteFile(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) __builtin_trap();
  if (!text.empty() && ::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    __builtin_trap();
  }
  ::close(fd);
}

// The token a file holding `text` gives, or "" when it holds none.
std::string ExpectedToken(const std::string& text) {
  const absl::string_view token = absl::StripAsciiWhitespace(text);
  return ValidateToken(token, "").ok() ? std::string(token) : std::string();
}

void CheckTls(uint8_t config, const std::string& path, const std::string& text) {
  ferry::MetadataClientOptions options;
  if ((config & 1) != 0) options.tls_ca_file = path;
  if ((config & 2) != 0) options.tls_cert_file = options.tls_key_file = path;
  options.tls = (config & 4) != 0;
  if (!ValidateCredentialOptions(options, false).ok()) __builtin_trap();
  const bool files = (config & 3) != 0;
  auto security = MakeChannelSecurity(options, /*https_prefix=*/false);
  const bool pem = text.find("-----BEGIN ") != std::string::npos;
  if (security.ok() != (pem || !files)) __builtin_trap();
  if (security.ok()) {
    if (security->credentials == nullptr || security->tls != (files || options.tls)) {
      __builtin_trap();
    }
    return;
  }
  if (security.status().code() != absl::StatusCode::kInvalidArgument ||
      !absl::StrContains(security.status().message(), path) ||
      !absl::StrContains(security.status().message(), "tls_")) {
    __builtin_trap();
  }
}

void CheckTokenFile(const std::string& path, const std::string& first, const std::string& second) {
  WriteFile(path, first);
  const std::string want = ExpectedToken(first);
  auto source = TokenSource::FromFile(path);
  if (source.ok() != !want.empty()) __builtin_trap();
  if (!source.ok()) {
    if (source.status().code() != absl::StatusCode::kInvalidArgument ||
        !absl::StrContains(source.status().message(), path)) {
      __builtin_trap();
    }
    return;
  }
  if ((*source)->Get() != want) __builtin_trap();
  // Just written, so its stamp is not trusted and Get reads it again (the rotation path).
  WriteFile(path, second);
  const std::string rotated = ExpectedToken(second);
  if ((*source)->Get() != (rotated.empty() ? want : rotated)) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const std::string body(reinterpret_cast<const char*>(data) + 2, size - 2);
  const std::string pem_path = Dir() + "/tls.pem";
  WriteFile(pem_path, body);
  CheckTls(data[0], pem_path, body);

  const size_t split = std::min<size_t>(data[1] * 4u, body.size());
  CheckTokenFile(Dir() + "/token", body.substr(0, split), body.substr(split));

  auto address = NormalizeServerAddress(body);
  if (address.ok() && address->target.empty()) __builtin_trap();
  return 0;
}
