#include "worker/worker_client.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/credentials.h"
#include "ferry/v1/worker.grpc.pb.h"
#include "model_express/p2p.grpc.pb.h"
#include "weights/tensor_checksum.h"
#include "worker/artifact_state.h"
#include "worker/transfer_info_check.h"
#include "worker/worker_state.h"

namespace ferry::worker {

namespace p2p = ::model_express::p2p;

struct WorkerClient::Stubs {
  std::unique_ptr<p2p::WorkerService::Stub> manifest;
  std::unique_ptr<ferry::v1::FerryWorkerService::Stub> transfer;
};

namespace {

// The credentials in the form the metadata client's helpers take.
MetadataClientOptions AsMetadataOptions(const WorkerClientOptions& o) {
  MetadataClientOptions m;
  static_cast<ClientCredentials&>(m) = o;
  m.server_address = o.endpoint;
  return m;
}

}  // namespace

StatusOr<std::unique_ptr<WorkerClient>> WorkerClient::Create(const WorkerClientOptions& options) {
  FERRY_ASSIGN_OR_RETURN(
      ferry::internal::NormalizedAddress address,
      ferry::internal::NormalizeServerAddress(options.endpoint, "WorkerClientOptions.endpoint"));
  const MetadataClientOptions m = AsMetadataOptions(options);
  FERRY_RETURN_IF_ERROR(ferry::internal::ValidateCredentialOptions(m, address.https_prefix));
  if (options.token_source != nullptr && (!options.token.empty() || !options.token_file.empty())) {
    return absl::InvalidArgumentError(
        "WorkerClientOptions.token_source and token / token_file are both set; set one");
  }
  if (options.deadline <= absl::ZeroDuration() || options.deadline == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("WorkerClientOptions.deadline=", absl::FormatDuration(options.deadline),
                     " must be a positive, finite duration (default 5s)"));
  }
  if (options.max_receive_message_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WorkerClientOptions.max_receive_message_size=", options.max_receive_message_size,
        " must be a positive number of bytes"));
  }
  std::unique_ptr<ferry::internal::TokenSource> owned;
  if (!options.token_file.empty()) {
    FERRY_ASSIGN_OR_RETURN(owned, ferry::internal::TokenSource::FromFile(options.token_file));
  } else if (!options.token.empty()) {
    FERRY_ASSIGN_OR_RETURN(owned, ferry::internal::TokenSource::FromToken(options.token));
  }
  FERRY_ASSIGN_OR_RETURN(ferry::internal::ChannelSecurity security,
                         ferry::internal::MakeChannelSecurity(m, address.https_prefix));
  grpc::ChannelArguments args;
  if (!security.server_name.empty()) args.SetSslTargetNameOverride(security.server_name);
  args.SetMaxReceiveMessageSize(options.max_receive_message_size);
  // A target talks to many sources once each; its requests are two ids.
  args.SetMaxSendMessageSize(64 * 1024);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(address.target, security.credentials, args);
  if (channel == nullptr) {
    return absl::InternalError(absl::StrCat("could not create a gRPC channel to ", address.target));
  }
  return std::unique_ptr<WorkerClient>(new WorkerClient(options, address.target, std::move(channel),
                                                        security.tls, std::move(owned)));
}

WorkerClient::WorkerClient(const WorkerClientOptions& options, std::string endpoint,
                           std::shared_ptr<grpc::Channel> channel, bool tls,
                           std::unique_ptr<ferry::internal::TokenSource> owned_tokens)
    : options_(options),
      endpoint_(std::move(endpoint)),
      channel_(std::move(channel)),
      tls_(tls),
      owned_tokens_(std::move(owned_tokens)),
      tokens_(owned_tokens_ != nullptr ? owned_tokens_.get() : options.token_source),
      stubs_(std::make_unique<Stubs>()) {
  stubs_->manifest = p2p::WorkerService::NewStub(channel_);
  stubs_->transfer = ferry::v1::FerryWorkerService::NewStub(channel_);
}

WorkerClient::~WorkerClient() = default;

Status WorkerClient::RpcError(const char* rpc, int grpc_code, const std::string& details) const {
  const auto code = static_cast<absl::StatusCode>(grpc_code);
  std::string msg =
      absl::StrCat(rpc, " to ", endpoint_, " failed: ", absl::StatusCodeToString(code));
  if (!details.empty()) absl::StrAppend(&msg, ": ", details);
  switch (code) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      absl::StrAppend(&msg,
                      "; the source's worker endpoint is unreachable or slow (it may have "
                      "exited): try another source");
      if (code == absl::StatusCode::kUnavailable &&
          !absl::StrContains(details, "Connection refused")) {
        absl::StrAppend(&msg, tls_ ? "; with TLS, check --tls-ca/FERRY_TLS_CA and the client "
                                     "certificate"
                                   : "; if the source serves TLS, pass --tls-ca/FERRY_TLS_CA");
      }
      break;
    case absl::StatusCode::kUnauthenticated:
      if (tokens_ == nullptr) {
        absl::StrAppend(&msg,
                        "; this client sends no token: pass the deployment token with "
                        "--token-file or FERRY_TOKEN_FILE");
      } else {
        absl::StrAppend(&msg, "; the source did not accept ", tokens_->Origin(),
                        ": pass the deployment token with --token-file or FERRY_TOKEN_FILE");
      }
      break;
    case absl::StatusCode::kUnimplemented:
      absl::StrAppend(&msg,
                      "; this endpoint does not serve ferry's FerryWorkerService (a ModelExpress "
                      "worker in P2P metadata mode?): read it over NIXL, e.g. "
                      "ferry.torch.pull_into(backend='nixl'), or pull from a ferry source");
      break;
    case absl::StatusCode::kResourceExhausted:
      absl::StrAppend(&msg,
                      "; the source is busy or the answer is larger than "
                      "max_receive_message_size: try another source");
      break;
    default:
      break;
  }
  return Status(code, msg);
}

void WorkerClient::Prepare(grpc::ClientContext& context) const {
  context.set_deadline(std::chrono::system_clock::now() +
                       absl::ToChronoMilliseconds(options_.deadline));
  if (tokens_ != nullptr) context.AddMetadata("authorization", "Bearer " + tokens_->Get());
}

StatusOr<ferry::v1::GetTransferInfoResponse> WorkerClient::GetTransferInfo(
    const std::string& mx_source_id, const std::string& worker_id) {
  ferry::v1::GetTransferInfoRequest request;
  request.set_mx_source_id(mx_source_id);
  if (!worker_id.empty()) request.set_worker_id(worker_id);
  grpc::ClientContext context;
  Prepare(context);
  ferry::v1::GetTransferInfoResponse response;
  grpc::Status status = stubs_->transfer->GetTransferInfo(&context, request, &response);
  if (!status.ok()) return RpcError("GetTransferInfo", status.error_code(), status.error_message());

  FERRY_RETURN_IF_ERROR(
      CheckTransferInfo(response, worker_id, absl::StrCat("GetTransferInfo to ", endpoint_)));
  return response;
}

grpc::Status WorkerClient::CallGetHeldTensors(const std::string& mx_source_id,
                                              const std::string& worker_id,
                                              ferry::v1::GetHeldTensorsResponse* response) {
  ferry::v1::GetHeldTensorsRequest request;
  request.set_mx_source_id(mx_source_id);
  if (!worker_id.empty()) request.set_worker_id(worker_id);
  grpc::ClientContext context;
  Prepare(context);
  return stubs_->transfer->GetHeldTensors(&context, request, response);
}

StatusOr<bool> WorkerClient::ServesFerry(const std::string& mx_source_id,
                                         const std::string& worker_id) {
  ferry::v1::GetHeldTensorsResponse response;
  grpc::Status status = CallGetHeldTensors(mx_source_id, worker_id, &response);
  if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) return false;
  if (!status.ok()) return RpcError("GetHeldTensors", status.error_code(), status.error_message());
  return true;
}

StatusOr<WorkerClient::HeldState> WorkerClient::GetHeldTensors(const std::string& mx_source_id,
                                                               const std::string& worker_id,
                                                               size_t tensors) {
  ferry::v1::GetHeldTensorsResponse response;
  grpc::Status status = CallGetHeldTensors(mx_source_id, worker_id, &response);
  if (!status.ok()) return RpcError("GetHeldTensors", status.error_code(), status.error_message());
  if (response.tensor_count() != tensors) {
    return absl::FailedPreconditionError(absl::StrCat(
        "GetHeldTensors to ", endpoint_, ": the source counts ", response.tensor_count(),
        " tensors where its transfer info lists ", tensors, "; re-list sources"));
  }
  HeldState state;
  state.held.assign(tensors, response.complete());
  state.landing.assign(tensors, false);
  if (!response.complete()) {
    auto read_bits = [tensors](const std::string& bits, std::vector<bool>& flags) {
      for (size_t i = 0; i < tensors && i / 8 < bits.size(); ++i) {
        flags[i] = (static_cast<uint8_t>(bits[i / 8]) >> (i % 8)) & 1;
      }
    };
    read_bits(response.held(), state.held);
    read_bits(response.landing(), state.landing);
  }
  return state;
}

StatusOr<p2p::GetTensorManifestResponse> WorkerClient::GetTensorManifest(
    const std::string& mx_source_id, const std::string& worker_id) {
  p2p::GetTensorManifestRequest request;
  request.set_mx_source_id(mx_source_id);
  if (!worker_id.empty()) request.set_worker_id(worker_id);
  grpc::ClientContext context;
  Prepare(context);
  p2p::GetTensorManifestResponse response;
  grpc::Status status = stubs_->manifest->GetTensorManifest(&context, request, &response);
  if (!status.ok()) {
    return RpcError("GetTensorManifest", status.error_code(), status.error_message());
  }
  const std::string what = absl::StrCat("GetTensorManifest to ", endpoint_);
  if (response.has_worker_id()) {
    FERRY_RETURN_IF_ERROR(CheckWorkerId(response.worker_id(), worker_id, what));
  }
  FERRY_RETURN_IF_ERROR(CheckTensorNames(response.tensors(), what));
  return response;
}

StatusOr<WorkerClient::FetchedManifest> WorkerClient::GetArtifactManifest(
    const std::string& mx_source_id, const std::string& artifact_id, uint64_t max_chunks) {
  p2p::GetArtifactManifestHeaderRequest header_request;
  header_request.set_mx_source_id(mx_source_id);
  header_request.set_artifact_id(artifact_id);
  p2p::GetArtifactManifestHeaderResponse header;
  {
    grpc::ClientContext context;
    Prepare(context);
    grpc::Status status =
        stubs_->manifest->GetArtifactManifestHeader(&context, header_request, &header);
    if (!status.ok()) {
      return RpcError("GetArtifactManifestHeader", status.error_code(), status.error_message());
    }
  }
  const std::string what = absl::StrCat("artifact manifest from ", endpoint_);
  if (!artifact_id.empty() && header.artifact_id() != artifact_id) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": the source answered for artifact ",
                                                      header.artifact_id(), ", not ", artifact_id,
                                                      "; re-list sources"));
  }
  if (header.chunk_count() > max_chunks) {
    return absl::DataLossError(absl::StrCat(what, ": chunk_count ", header.chunk_count(),
                                            " exceeds the limit of ", max_chunks,
                                            "; refusing the artifact"));
  }
  FetchedManifest out;
  out.mx_source_id = header.mx_source_id();
  out.worker_rank = header.worker_rank();
  out.header = artifacts::SourceSummary{header.artifact_id(), header.total_size(),
                                        header.file_count(), header.chunk_count()};
  artifacts::Manifest& m = out.manifest;
  m.manifest_version = header.manifest_version();
  m.mx_source_type = header.mx_source_type();
  m.chunk_size = header.chunk_size();
  m.files.reserve(static_cast<size_t>(header.files_size()));
  for (const p2p::ArtifactManifestFile& f : header.files()) {
    m.files.push_back(ManifestFileFromProto(f));
  }
  // Grown page by page: a claimed chunk_count is not trusted with an allocation.
  m.chunks.reserve(std::min<uint32_t>(header.chunk_count(), 1024));
  uint32_t start = 0;
  for (;;) {
    p2p::GetArtifactManifestChunksRequest request;
    request.set_mx_source_id(mx_source_id.empty() ? header.mx_source_id() : mx_source_id);
    request.set_artifact_id(header.artifact_id());
    request.set_start_chunk_index(start);
    p2p::GetArtifactManifestChunksResponse page;
    grpc::ClientContext context;
    Prepare(context);
    grpc::Status status = stubs_->manifest->GetArtifactManifestChunks(&context, request, &page);
    if (!status.ok()) {
      return RpcError("GetArtifactManifestChunks", status.error_code(), status.error_message());
    }
    if (page.start_chunk_index() != start) {
      return absl::DataLossError(absl::StrCat(what, ": asked for chunks from ", start,
                                              " but the page starts at ", page.start_chunk_index(),
                                              "; try another source"));
    }
    if (m.chunks.size() + static_cast<size_t>(page.chunks_size()) > header.chunk_count()) {
      return absl::DataLossError(absl::StrCat(what, ": the chunk pages hold more than chunk_count ",
                                              header.chunk_count(), " chunks; try another source"));
    }
    for (const p2p::ArtifactManifestChunk& c : page.chunks()) {
      m.chunks.push_back(ManifestChunkFromProto(c));
    }
    if (page.next_page_token().empty()) break;
    uint32_t next = 0;
    if (!absl::SimpleAtoi(page.next_page_token(), &next) || next <= start ||
        next != m.chunks.size()) {
      return absl::DataLossError(absl::StrCat(
          what, ": next_page_token '", page.next_page_token(), "' does not continue from the ",
          m.chunks.size(), " chunks received (page start ", start, "); try another source"));
    }
    start = next;
  }
  return out;
}

StatusOr<ferry::v1::GetArtifactTransferInfoResponse> WorkerClient::GetArtifactTransferInfo(
    const std::string& mx_source_id, const std::string& artifact_id) {
  ferry::v1::GetArtifactTransferInfoRequest request;
  request.set_mx_source_id(mx_source_id);
  request.set_artifact_id(artifact_id);
  grpc::ClientContext context;
  Prepare(context);
  ferry::v1::GetArtifactTransferInfoResponse response;
  grpc::Status status = stubs_->transfer->GetArtifactTransferInfo(&context, request, &response);
  if (!status.ok()) {
    return RpcError("GetArtifactTransferInfo", status.error_code(), status.error_message());
  }
  if (!artifact_id.empty() && response.artifact_id() != artifact_id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "GetArtifactTransferInfo to ", endpoint_, ": the source answered for artifact ",
        response.artifact_id(), ", not ", artifact_id, "; re-list sources"));
  }
  return response;
}

}  // namespace ferry::worker
