#include "store/memory_store.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "ferry/source_identity.h"

namespace ferry::store {

std::unique_ptr<MemoryStore> MemoryStore::Create() {
  return std::unique_ptr<MemoryStore>(new MemoryStore());
}

namespace {

Status CheckOwner(const std::string& owner, const std::string& caller, bool override_owner,
                  const std::string& source_id, const std::string& worker_id) {
  if (override_owner || owner.empty() || owner == caller) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat("worker '", worker_id, "' of source '", source_id,
                                                  "' belongs to principal '", owner,
                                                  "'; only it or an admin may change it"));
}

}  // namespace

void MemoryStore::CountOwner(const std::string& owner, int delta) {
  uint64_t& n = owner_workers_[owner];
  n += delta;
  if (n == 0) owner_workers_.erase(owner);
}

Status MemoryStore::Publish(const PublishRecord& record) {
  absl::MutexLock lock(&mu_);
  const std::string* previous_owner = nullptr;  // of the worker, when it exists
  if (auto s = sources_.find(record.mx_source_id); s != sources_.end()) {
    auto w = s->second.workers.find(record.worker_id);
    if (w != s->second.workers.end()) {
      FERRY_RETURN_IF_ERROR(CheckOwner(w->second.owner, record.owner, record.override_owner,
                                       record.mx_source_id, record.worker_id));
      previous_owner = &w->second.owner;
    }
    const std::string& source_owner = s->second.owner;
    if (!record.override_owner && !record.owner.empty() && !source_owner.empty() &&
        source_owner != record.owner) {
      return internal::SourceOwnerDenied(source_owner, record.owner, record.mx_source_id);
    }
  }
  const bool counted = previous_owner != nullptr && *previous_owner == record.owner;
  if (!counted && record.max_owner_workers > 0) {
    auto n = owner_workers_.find(record.owner);
    if (n != owner_workers_.end() && n->second >= record.max_owner_workers) {
      return internal::OwnerWorkersExhausted(record.owner, record.max_owner_workers);
    }
  }
  if (!counted) {
    if (previous_owner != nullptr) CountOwner(*previous_owner, -1);
    CountOwner(record.owner, +1);
  }
  auto [it, created] = sources_.try_emplace(record.mx_source_id);
  Source& source = it->second;
  if (created) source.owner = record.owner;
  source.identity = record.identity;
  source.training_step = TrainingStepOf(record.identity);
  source.layout_signature = LayoutSignatureOf(record.identity);
  Worker& worker = source.workers[record.worker_id];
  const uint32_t rank = record.worker.worker_rank();
  worker.ranks[rank] = record.worker;
  worker.loads.erase(rank);  // a fresh record has no reading yet
  worker.index_rank = rank;
  worker.owner = record.owner;
  worker.version = next_version_++;
  return absl::OkStatus();
}

void MemoryStore::AppendSummaries(const std::string& source_id, const Source& source,
                                  std::vector<WorkerSummary>* out) const {
  for (const auto& [worker_id, worker] : source.workers) {
    auto index = worker.ranks.find(worker.index_rank);
    if (index == worker.ranks.end()) continue;  // cannot happen: Publish sets both together
    const WorkerMetadata& rep = index->second;
    WorkerSummary& s = out->emplace_back();
    s.mx_source_id = source_id;
    s.worker_id = worker_id;
    s.model_name = source.identity.model_name();
    s.worker_rank = worker.index_rank;
    s.status = rep.status();
    for (const auto& [rank, record] : worker.ranks) {
      s.status_mask |= 1u << (static_cast<uint32_t>(record.status()) & 31u);
    }
    s.accelerator = rep.accelerator();
    s.updated_at = rep.updated_at();
    s.topology.insert(rep.topology().begin(), rep.topology().end());
    if (auto load = worker.loads.find(worker.index_rank); load != worker.loads.end()) {
      s.source_load = load->second;
    }
    s.training_step = source.training_step;
    s.layout_signature = source.layout_signature;
    s.version = worker.version;
    s.owner = worker.owner;
  }
}

StatusOr<std::vector<WorkerSummary>> MemoryStore::ListWorkers(const ListQuery& query) {
  std::vector<WorkerSummary> out;
  absl::ReaderMutexLock lock(&mu_);
  if (query.mx_source_id.has_value()) {
    auto it = sources_.find(*query.mx_source_id);
    if (it != sources_.end()) AppendSummaries(it->first, it->second, &out);
    return out;
  }
  for (const auto& [id, source] : sources_) AppendSummaries(id, source, &out);
  return out;
}

StatusOr<WorkerDetail> MemoryStore::GetWorker(const std::string& mx_source_id,
                                              const std::string& worker_id) {
  absl::ReaderMutexLock lock(&mu_);
  auto s = sources_.find(mx_source_id);
  if (s == sources_.end()) {
    return absl::NotFoundError(absl::StrCat("source '", mx_source_id, "' not found"));
  }
  auto w = s->second.workers.find(worker_id);
  if (w == s->second.workers.end() || w->second.ranks.empty()) {
    return absl::NotFoundError(
        absl::StrCat("worker '", worker_id, "' not found in source '", mx_source_id, "'"));
  }
  WorkerDetail detail;
  detail.worker = w->second.ranks.begin()->second;
  detail.identity = s->second.identity;
  detail.owner = w->second.owner;
  detail.version = w->second.version;
  return detail;
}

Status MemoryStore::UpdateStatus(const StatusUpdate& u) {
  absl::MutexLock lock(&mu_);
  auto s = sources_.find(u.mx_source_id);
  if (s == sources_.end()) {
    return absl::NotFoundError(
        absl::StrCat("update_status: source '", u.mx_source_id, "' not found"));
  }
  auto w = s->second.workers.find(u.worker_id);
  if (w == s->second.workers.end()) {
    return absl::NotFoundError(absl::StrCat("update_status: worker '", u.worker_id,
                                            "' not found in source '", u.mx_source_id, "'"));
  }
  Worker& worker = w->second;
  FERRY_RETURN_IF_ERROR(
      CheckOwner(worker.owner, u.caller, u.override_owner, u.mx_source_id, u.worker_id));
  if (u.expected_version.has_value() && *u.expected_version != worker.version) {
    return absl::AbortedError(absl::StrCat("update_status: worker '", u.worker_id,
                                           "' changed since version ", *u.expected_version));
  }
  if (u.worker_rank.has_value()) {
    auto r = worker.ranks.find(*u.worker_rank);
    if (r == worker.ranks.end()) {
      return absl::NotFoundError(absl::StrCat("update_status: rank ", *u.worker_rank,
                                              " not found in source '", u.mx_source_id,
                                              "' worker '", u.worker_id, "'"));
    }
    r->second.set_status(u.status);
    r->second.set_updated_at(u.updated_at);
    if (u.source_load.has_value() && std::isfinite(*u.source_load)) {
      worker.loads[*u.worker_rank] = *u.source_load;
    } else {
      worker.loads.erase(*u.worker_rank);
    }
  } else {
    for (auto& [rank, record] : worker.ranks) {
      record.set_status(u.status);
      record.set_updated_at(u.updated_at);
    }
  }
  worker.version = next_version_++;
  return absl::OkStatus();
}

Status MemoryStore::RemoveWorker(const std::string& mx_source_id, const std::string& worker_id,
                                 std::optional<uint64_t> expected_version) {
  absl::MutexLock lock(&mu_);
  auto s = sources_.find(mx_source_id);
  if (s == sources_.end()) {
    return absl::NotFoundError(absl::StrCat("source '", mx_source_id, "' not found"));
  }
  auto w = s->second.workers.find(worker_id);
  if (w == s->second.workers.end()) {
    return absl::NotFoundError(
        absl::StrCat("worker '", worker_id, "' not found in source '", mx_source_id, "'"));
  }
  if (expected_version.has_value() && *expected_version != w->second.version) {
    return absl::AbortedError(absl::StrCat("remove_worker: worker '", worker_id,
                                           "' changed since version ", *expected_version));
  }
  CountOwner(w->second.owner, -1);
  s->second.workers.erase(w);
  if (s->second.workers.empty()) sources_.erase(s);
  return absl::OkStatus();
}

}  // namespace ferry::store
