#include "worker/request_gate.h"

#include <optional>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/credentials.h"
#include "common/bearer_token.h"

namespace ferry::worker::internal {
namespace {

constexpr char kTokenAdvice[] =
    "pass the deployment's token with --token-file or FERRY_TOKEN_FILE (the token ferry-server "
    "accepts)";

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
  const std::optional<std::string_view> token =
      ferry::internal::BearerTokenOf(std::string_view(it->second.data(), it->second.size()));
  if (!token.has_value()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        absl::StrCat("worker endpoint: the authorization header is not 'Bearer "
                                     "<token>'; ",
                                     kTokenAdvice));
  }
  // Compared as digests in constant time: timing says nothing about the token.
  if (!ferry::internal::TokenDigest(*token).Matches(ferry::internal::TokenDigest(tokens_->Get()))) {
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
