#include "worker/request_gate.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <array>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/credentials.h"

namespace ferry::worker::internal {
namespace {

constexpr char kTokenAdvice[] =
    "pass the deployment's token with --token-file or FERRY_TOKEN_FILE (the token ferry-server "
    "accepts)";

std::array<unsigned char, 32> Sha256(std::string_view text) {
  std::array<unsigned char, 32> out{};
  unsigned int len = 0;
  EVP_Digest(text.data(), text.size(), out.data(), &len, EVP_sha256(), nullptr);
  return out;
}

}  // namespace

RequestGate::RequestGate(ferry::internal::TokenSource* tokens, int max_in_flight,
                         std::function<void(std::string_view)> on_admitted)
    : tokens_(tokens), max_in_flight_(max_in_flight), on_admitted_(std::move(on_admitted)) {}

grpc::Status RequestGate::Authenticate(const grpc::ServerContext& context) const {
  if (tokens_ == nullptr) return grpc::Status::OK;
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return grpc::Status(
        grpc::StatusCode::UNAUTHENTICATED,
        absl::StrCat("worker endpoint requires a bearer token and the call carried no "
                     "'authorization: Bearer <token>' header; ",
                     kTokenAdvice));
  }
  const std::string_view header(it->second.data(), it->second.size());
  constexpr std::string_view kBearer = "bearer ";
  if (header.size() <= kBearer.size() ||
      !absl::EqualsIgnoreCase(absl::string_view(header.data(), kBearer.size()), "bearer ")) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        absl::StrCat("worker endpoint: the authorization header is not 'Bearer "
                                     "<token>'; ",
                                     kTokenAdvice));
  }
  // Digests of equal length, compared in constant time: timing says nothing about the token.
  const auto got = Sha256(header.substr(kBearer.size()));
  const auto want = Sha256(tokens_->Get());
  if (CRYPTO_memcmp(got.data(), want.data(), got.size()) != 0) {
    return grpc::Status(
        grpc::StatusCode::UNAUTHENTICATED,
        absl::StrCat("worker endpoint did not accept the bearer token; ", kTokenAdvice));
  }
  return grpc::Status::OK;
}

RequestGate::Admission::Admission(RequestGate* gate, const grpc::ServerContext& context,
                                  std::string_view method)
    : gate_(gate) {
  const int before = gate_->in_flight_.fetch_add(1, std::memory_order_acq_rel);
  status_ = gate_->Authenticate(context);
  if (!status_.ok()) return;
  if (before >= gate_->max_in_flight_) {
    status_ =
        grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                     absl::StrCat("worker endpoint busy: ", before, " requests in flight; retry"));
    return;
  }
  if (gate_->on_admitted_) gate_->on_admitted_(method);
}

RequestGate::Admission::~Admission() { gate_->in_flight_.fetch_sub(1, std::memory_order_acq_rel); }

}  // namespace ferry::worker::internal
