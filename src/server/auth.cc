#include "server/auth.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/bearer_token.h"
#include "common/logging.h"

namespace ferry::server {
namespace {

StatusOr<std::string> Stamp(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--auth-tokens: cannot read ", path, ": ", strerror(errno)));
  }
  return absl::StrCat(st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec, "/", st.st_size, "/", st.st_ino);
}

}  // namespace

StatusOr<std::vector<TokenAuthenticator::Entry>> TokenAuthenticator::Parse(
    const std::string& text, const std::string& source) {
  std::vector<Entry> entries;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (size_t hash = line.find('#'); hash != absl::string_view::npos) line = line.substr(0, hash);
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    std::vector<absl::string_view> parts =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (parts.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", line_no, ": expected 'TOKEN PRINCIPAL', found ", parts.size(),
                       " fields; one pair per line, '#' starts a comment"));
    }
    if (parts[0].size() < 16) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ":", line_no, ": token is shorter than 16 characters; use a long random token"));
    }
    entries.push_back({internal::TokenDigest(std::string_view(parts[0].data(), parts[0].size())),
                       std::string(parts[1])});
  }
  if (entries.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": no tokens; add 'TOKEN PRINCIPAL' lines"));
  }
  return entries;
}

StatusOr<std::unique_ptr<TokenAuthenticator>> TokenAuthenticator::Create(AuthOptions options,
                                                                         Metrics* metrics) {
  if (options.tokens_file.empty()) {
    return absl::InvalidArgumentError("--auth-tokens: no file given");
  }
  auto auth = std::unique_ptr<TokenAuthenticator>(new TokenAuthenticator(options, metrics));
  absl::MutexLock lock(&auth->mu_);
  FERRY_RETURN_IF_ERROR(auth->Load());
  return auth;
}

TokenAuthenticator::TokenAuthenticator(AuthOptions options, Metrics* metrics)
    : options_(std::move(options)),
      metrics_(metrics),
      admins_(options_.admin_principals.begin(), options_.admin_principals.end()) {}

Status TokenAuthenticator::Load() {
  FERRY_ASSIGN_OR_RETURN(std::string stamp, Stamp(options_.tokens_file));
  last_check_ = absl::Now();
  if (stamp == file_stamp_) return absl::OkStatus();
  std::ifstream in(options_.tokens_file);
  std::stringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--auth-tokens: cannot read ", options_.tokens_file));
  }
  FERRY_ASSIGN_OR_RETURN(entries_, Parse(text.str(), options_.tokens_file));
  file_stamp_ = stamp;
  spdlog::info("auth: loaded {} tokens from {}", entries_.size(), options_.tokens_file);
  return absl::OkStatus();
}

void TokenAuthenticator::MaybeReload() {
  absl::MutexLock lock(&mu_);
  if (absl::Now() - last_check_ < options_.reload_check) return;
  if (Status s = Load(); !s.ok()) {
    spdlog::error("auth: keeping the previous tokens: {}", s.message());
  }
}

StatusOr<Principal> TokenAuthenticator::Authenticate(const grpc::ServerContext& context) {
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return AuthenticateHeader({});
  return AuthenticateHeader(std::string_view(it->second.data(), it->second.size()));
}

StatusOr<Principal> TokenAuthenticator::AuthenticateHeader(std::string_view header) {
  auto fail = [&](const char* reason, const char* message) -> StatusOr<Principal> {
    if (metrics_ != nullptr) metrics_->CountAuthFailure(reason);
    return absl::UnauthenticatedError(message);
  };
  if (header.empty()) {
    return fail("missing", "missing 'authorization: Bearer <token>' header; configure a token");
  }
  const std::optional<std::string_view> token = internal::BearerTokenOf(header);
  if (!token.has_value()) {
    return fail("malformed", "authorization header is not 'Bearer <token>'");
  }
  MaybeReload();
  const internal::TokenDigest digest(*token);
  absl::MutexLock lock(&mu_);
  // Every entry is compared, with no early exit, so timing says nothing about which matched.
  const Entry* match = nullptr;
  for (const Entry& e : entries_) {
    if (e.digest.Matches(digest)) match = &e;
  }
  if (match == nullptr) return fail("unknown_token", "unknown bearer token");
  return Principal{match->principal, admins_.contains(match->principal)};
}

}  // namespace ferry::server
