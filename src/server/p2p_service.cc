#include "server/p2p_service.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/clock.h"
#include "common/logging.h"
#include "ferry/source_identity.h"
#include "server/rpc_scope.h"

namespace ferry::server {
namespace {

namespace p2p = ::model_express::p2p;

// Store failures other than "not found" become a gRPC error that names the store, so a target
// can tell "no sources" from "the server cannot see its store" (contract 14.6).
grpc::Status StoreError(const store::MetadataStore& store, const char* what, const Status& s) {
  if (s.code() == absl::StatusCode::kPermissionDenied) return ToGrpc(s);
  const grpc::StatusCode code = s.code() == absl::StatusCode::kUnavailable
                                    ? grpc::StatusCode::UNAVAILABLE
                                    : grpc::StatusCode::INTERNAL;
  std::string msg = absl::StrCat("metadata store ", store.Describe(), " failed to ", what, ": ",
                                 s.message(), "; retry, and check the store if it persists");
  spdlog::error("{}", msg);
  return grpc::Status(code, msg);
}

std::string CheckLength(const std::string& value, size_t limit, const char* field) {
  if (value.size() <= limit) return "";
  return absl::StrFormat("%s is %d bytes; the limit is %d bytes", field, value.size(), limit);
}

// Size checks on the worker record; empty when it is acceptable.
std::string CheckWorker(const p2p::WorkerMetadata& w) {
  if (!p2p::SourceStatus_IsValid(w.status())) {
    return absl::StrCat("worker.status=", w.status(),
                        " is not a SourceStatus; use 0 (UNKNOWN) to 3 (STALE)");
  }
  const std::pair<const std::string*, const char*> fields[] = {
      {&w.metadata_endpoint(), "worker.metadata_endpoint"},
      {&w.agent_name(), "worker.agent_name"},
      {&w.worker_grpc_endpoint(), "worker.worker_grpc_endpoint"},
      {&w.accelerator(), "worker.accelerator"},
      {&w.transfer_engine_session_id(), "worker.transfer_engine_session_id"},
  };
  for (const auto& [value, name] : fields) {
    if (std::string e = CheckLength(*value, kMaxEndpointBytes, name); !e.empty()) return e;
  }
  if (static_cast<size_t>(w.topology_size()) > kMaxTopologyEntries) {
    return absl::StrFormat("worker.topology has %d entries; the limit is %d", w.topology_size(),
                           kMaxTopologyEntries);
  }
  for (const auto& [key, value] : w.topology()) {
    if (std::string e = CheckLength(key, kMaxTopologyBytes, "a worker.topology key"); !e.empty()) {
      return e;
    }
    if (std::string e = CheckLength(value, kMaxTopologyBytes, "a worker.topology value");
        !e.empty()) {
      return absl::StrCat(e, " (key '", key, "')");
    }
  }
  return "";
}

}  // namespace

P2pService::P2pService(store::MetadataStore* store, Metrics* metrics, P2pServiceOptions options)
    : store_(store), metrics_(metrics), options_(std::move(options)) {}

StatusOr<Principal> P2pService::Authenticate(const grpc::ServerContext& context) {
  if (options_.auth == nullptr) return Principal{};
  return options_.auth->Authenticate(context);
}

// Outcome label for a store failure.
static const char* StoreOutcome(const Status& s) {
  return s.code() == absl::StatusCode::kPermissionDenied ? "permission_denied" : "store_error";
}

grpc::Status P2pService::PublishMetadata(grpc::ServerContext* context,
                                         const p2p::PublishMetadataRequest* req,
                                         p2p::PublishMetadataResponse* resp) {
  RpcScope scope(metrics_, "PublishMetadata", context);
  auto principal = Authenticate(*context);
  if (!principal.ok()) return scope.Finish(ToGrpc(principal.status()), "unauthenticated");
  // success=false with the message, as ModelExpress answers; the code travels beside it.
  auto refuse = [&](absl::StatusCode code, const std::string& message) {
    resp->set_success(false);
    resp->set_message(message);
    return scope.Refused(code, "refused");
  };
  auto invalid = [&](const std::string& message) {
    return refuse(absl::StatusCode::kInvalidArgument, message);
  };
  // ModelExpress's checks, in its order and with its messages.
  if (!req->has_identity()) return invalid("identity is required");
  if (req->identity().model_name().empty()) return invalid("identity.model_name is required");
  if (req->worker_id().empty()) return invalid("worker_id is required");
  if (!req->has_worker()) return invalid("worker is required");
  // ferry's limits.
  if (Status s = ValidateIdentity(req->identity()); !s.ok()) {
    return refuse(s.code(), std::string(s.message()));
  }
  if (std::string e = CheckLength(req->worker_id(), kMaxIdBytes, "worker_id"); !e.empty()) {
    return invalid(e);
  }
  if (std::string e = CheckWorker(req->worker()); !e.empty()) return invalid(e);
  auto source_id = ComputeMxSourceId(req->identity());
  if (!source_id.ok()) {
    return refuse(source_id.status().code(), std::string(source_id.status().message()));
  }

  store::PublishRecord record;
  record.mx_source_id = *source_id;
  record.identity = req->identity();
  record.worker_id = req->worker_id();
  record.worker = req->worker();
  record.owner = principal->name;
  record.override_owner = principal->admin;
  record.max_owner_workers = options_.max_workers_per_principal;
  p2p::WorkerMetadata& w = record.worker;
  // One stored copy of the tensor list, in source_payload (contract 5.1); GetMetadata writes the
  // legacy copy back out.
  if (w.source_payload_case() == p2p::WorkerMetadata::SOURCE_PAYLOAD_NOT_SET) {
    w.mutable_tensor_source()->mutable_tensors()->Swap(w.mutable_tensors());
  }
  w.clear_tensors();
  const int tensor_count = w.has_tensor_source() ? w.tensor_source().tensors_size() : 0;
  // What the store keeps must be bounded per record, not only per message: a message's worth of
  // tiny tensors costs several times its size in memory (contract 14, docs/operations.md). Too
  // big a record is the request's fault (INVALID_ARGUMENT): the same publish never succeeds.
  if (static_cast<size_t>(tensor_count) > options_.max_record_tensors) {
    return invalid(absl::StrFormat(
        "worker has %d tensors; the limit is %d tensors per record (ferry-server "
        "--max-record-tensors); split the model over more workers or raise the limit",
        tensor_count, options_.max_record_tensors));
  }
  if (const size_t bytes = w.ByteSizeLong(); bytes > options_.max_record_bytes) {
    return invalid(absl::StrFormat(
        "worker record is %d bytes; the limit is %d bytes (ferry-server --max-record-bytes); "
        "split the model over more workers or raise the limit",
        bytes, options_.max_record_bytes));
  }
  // Server clock, and a record that is not READY yet is INITIALIZING, so the reaper can expire
  // it if its publisher dies before the first heartbeat (contract 14.2, 14.3).
  w.set_updated_at(options_.now_ms());
  if (w.status() == p2p::SOURCE_STATUS_UNKNOWN) w.set_status(p2p::SOURCE_STATUS_INITIALIZING);

  if (Status s = store_->Publish(record); !s.ok()) {
    // The principal's quota (RESOURCE_EXHAUSTED): the same publish succeeds once it owns fewer
    // workers.
    if (s.code() == absl::StatusCode::kResourceExhausted) {
      return refuse(absl::StatusCode::kResourceExhausted,
                    absl::StrCat(s.message(),
                                 " (ferry-server --max-workers-per-principal); stop unused "
                                 "publishers, let the reaper delete STALE records, or raise "
                                 "the limit"));
    }
    if (s.code() == absl::StatusCode::kPermissionDenied)
      metrics_->CountAuthFailure("permission_denied");
    return scope.Finish(StoreError(*store_, "publish", s), StoreOutcome(s));
  }
  resp->set_success(true);
  resp->set_mx_source_id(*source_id);
  resp->set_worker_id(req->worker_id());
  resp->set_message(absl::StrFormat(
      "Published metadata for '%s' (source_id=%s, worker_id=%s, worker_rank=%d, %d tensors)",
      req->identity().model_name(), *source_id, req->worker_id(), w.worker_rank(), tensor_count));
  return scope.Ok();
}

grpc::Status P2pService::ListSources(grpc::ServerContext* context,
                                     const p2p::ListSourcesRequest* req,
                                     p2p::ListSourcesResponse* resp) {
  RpcScope scope(metrics_, "ListSources", context);
  auto principal = Authenticate(*context);
  if (!principal.ok()) return scope.Finish(ToGrpc(principal.status()), "unauthenticated");
  store::ListQuery query;
  if (req->has_identity() && !req->identity().model_name().empty()) {
    Status valid = ValidateIdentity(req->identity());
    auto id = valid.ok() ? ComputeMxSourceId(req->identity()) : StatusOr<std::string>(valid);
    if (!id.ok()) {
      return scope.Finish(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(id.status().message())),
          "refused");
    }
    query.mx_source_id = *id;
  }
  // An unknown status number is an error, not "no filter" (contract 14.5).
  if (req->has_status_filter() && !p2p::SourceStatus_IsValid(req->status_filter())) {
    return scope.Finish(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrCat("status_filter=", req->status_filter(),
                                  " is not a SourceStatus; use 0 (UNKNOWN) to 3 (STALE)")),
        "refused");
  }
  auto workers = store_->ListWorkers(query);
  if (!workers.ok()) {
    return scope.Finish(StoreError(*store_, "list workers", workers.status()), "store_error");
  }
  const int64_t now = options_.now_ms();
  const int64_t timeout_ms = absl::ToInt64Milliseconds(options_.heartbeat_timeout);
  const bool ready_only =
      req->has_status_filter() && req->status_filter() == p2p::SOURCE_STATUS_READY;
  std::vector<store::WorkerSummary*> kept;
  kept.reserve(workers->size());
  for (store::WorkerSummary& w : *workers) {
    if (req->has_status_filter() && !(w.status_mask & (1u << req->status_filter()))) continue;
    if (req->has_model_name_filter() && w.model_name != req->model_name_filter()) continue;
    if (req->has_worker_rank_filter() && w.worker_rank != req->worker_rank_filter()) continue;
    if (req->has_min_training_step() &&
        (!w.training_step.has_value() || *w.training_step < req->min_training_step())) {
      continue;
    }
    if (req->has_min_updated_at() && w.updated_at < req->min_updated_at()) continue;
    // READY freshness before the limit, so `limit` counts only usable sources (contract 14.4).
    if (ready_only && (w.updated_at <= 0 || now - w.updated_at > timeout_ms)) continue;
    kept.push_back(&w);
  }
  // Newest first; ties in a fixed order (contract 14.20).
  std::sort(kept.begin(), kept.end(), [](const auto* a, const auto* b) {
    if (a->updated_at != b->updated_at) return a->updated_at > b->updated_at;
    if (a->mx_source_id != b->mx_source_id) return a->mx_source_id < b->mx_source_id;
    return a->worker_id < b->worker_id;
  });
  if (req->has_limit() && req->limit() > 0 && kept.size() > req->limit()) kept.resize(req->limit());
  resp->mutable_instances()->Reserve(static_cast<int>(kept.size()));
  for (store::WorkerSummary* w : kept) {
    p2p::SourceInstanceRef* ref = resp->add_instances();
    ref->set_mx_source_id(std::move(w->mx_source_id));
    ref->set_worker_id(std::move(w->worker_id));
    ref->set_model_name(std::move(w->model_name));
    ref->set_worker_rank(w->worker_rank);
    ref->set_accelerator(std::move(w->accelerator));
    ref->set_updated_at(w->updated_at);
    if (w->training_step.has_value()) ref->set_training_step(*w->training_step);
    if (w->layout_signature.has_value()) ref->set_layout_signature(*w->layout_signature);
    ref->mutable_topology()->insert(w->topology.begin(), w->topology.end());
    if (w->source_load.has_value()) ref->set_source_load(*w->source_load);
  }
  return scope.Ok(kept.empty() ? "empty" : "ok");
}

grpc::Status P2pService::GetMetadata(grpc::ServerContext* context,
                                     const p2p::GetMetadataRequest* req,
                                     p2p::GetMetadataResponse* resp) {
  RpcScope scope(metrics_, "GetMetadata", context);
  auto principal = Authenticate(*context);
  if (!principal.ok()) return scope.Finish(ToGrpc(principal.status()), "unauthenticated");
  if (req->mx_source_id().empty() || req->worker_id().empty()) {
    resp->set_found(false);
    return scope.Refused(absl::StatusCode::kInvalidArgument, "refused");
  }
  for (const auto& [value, name] : {std::pair{&req->mx_source_id(), "mx_source_id"},
                                    std::pair{&req->worker_id(), "worker_id"}}) {
    if (std::string e = CheckLength(*value, kMaxIdBytes, name); !e.empty()) {
      return scope.Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, e), "refused");
    }
  }
  auto detail = store_->GetWorker(req->mx_source_id(), req->worker_id());
  if (!detail.ok()) {
    if (detail.status().code() == absl::StatusCode::kNotFound) {
      resp->set_found(false);
      resp->set_mx_source_id(req->mx_source_id());
      resp->set_worker_id(req->worker_id());
      return scope.Refused(absl::StatusCode::kNotFound, "not_found");
    }
    return scope.Finish(StoreError(*store_, "get worker", detail.status()), "store_error");
  }
  resp->set_found(true);
  resp->set_mx_source_id(req->mx_source_id());
  resp->set_worker_id(req->worker_id());
  p2p::WorkerMetadata* w = resp->mutable_worker();
  *w = std::move(detail->worker);
  // source_payload is always set; tensor records also fill the legacy list (contract 5.4).
  if (!w->has_artifact_source()) {
    *w->mutable_tensors() = w->mutable_tensor_source()->tensors();
  }
  if (detail->identity.has_value()) *resp->mutable_identity() = std::move(*detail->identity);
  return scope.Ok();
}

grpc::Status P2pService::UpdateStatus(grpc::ServerContext* context,
                                      const p2p::UpdateStatusRequest* req,
                                      p2p::UpdateStatusResponse* resp) {
  RpcScope scope(metrics_, "UpdateStatus", context);
  auto principal = Authenticate(*context);
  if (!principal.ok()) return scope.Finish(ToGrpc(principal.status()), "unauthenticated");
  auto refuse = [&](absl::StatusCode code, const std::string& message,
                    const char* outcome = "refused") {
    resp->set_success(false);
    resp->set_message(message);
    return scope.Refused(code, outcome);
  };
  constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  if (req->mx_source_id().empty()) return refuse(kInvalid, "mx_source_id is required");
  if (req->worker_id().empty()) return refuse(kInvalid, "worker_id is required");
  if (!p2p::SourceStatus_IsValid(req->status())) {
    return refuse(kInvalid, absl::StrCat("invalid status value: ", req->status()));
  }
  store::StatusUpdate update;
  update.mx_source_id = req->mx_source_id();
  update.worker_id = req->worker_id();
  update.worker_rank = req->worker_rank();
  update.status = req->status();
  update.updated_at = options_.now_ms();
  // Passed through as reported (contract 16); a value that is not a finite number is no reading
  // at all, so that one bad sample never fails the heartbeat that carries it.
  if (req->has_source_load() && std::isfinite(req->source_load())) {
    update.source_load = req->source_load();
  }
  update.caller = principal->name;
  update.override_owner = principal->admin;
  Status s = store_->UpdateStatus(update);
  if (s.code() == absl::StatusCode::kNotFound) {
    return refuse(absl::StatusCode::kNotFound,
                  absl::StrCat("Failed to update status: ", s.message()), "not_found");
  }
  if (s.code() == absl::StatusCode::kPermissionDenied)
    metrics_->CountAuthFailure("permission_denied");
  if (!s.ok()) return scope.Finish(StoreError(*store_, "update status", s), StoreOutcome(s));
  resp->set_success(true);
  resp->set_message(absl::StrFormat("Updated status for source '%s' worker_id '%s' rank %d",
                                    req->mx_source_id(), req->worker_id(), req->worker_rank()));
  return scope.Ok();
}

}  // namespace ferry::server
