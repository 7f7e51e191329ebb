#include "store/redis_store.h"

#include <hiredis/hiredis.h>

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "ferry/source_identity.h"

namespace ferry::store {
namespace {

using internal::RedisReply;

// Views into replies; valid while the reply lives.
absl::string_view Text(const redisReply* r) {
  return r->str == nullptr ? absl::string_view() : absl::string_view(r->str, r->len);
}

bool IsText(const redisReply* r) {
  return r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS;
}

// The code a script put first in its reply array.
absl::string_view ScriptCode(const redisReply& r) { return Text(r.element[0]); }

// The script's element `i` as text; empty when absent or nil.
absl::string_view ScriptArg(const redisReply& r, size_t i) {
  return i < r.elements && IsText(r.element[i]) ? Text(r.element[i]) : absl::string_view();
}

// Debian's abseil has its own string_view; these convert between it and std::string_view.
std::string_view StdView(absl::string_view s) { return std::string_view(s.data(), s.size()); }
absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Error replies that mean "Redis cannot serve right now": retrying later may succeed.
constexpr std::string_view kNotServing[] = {"LOADING",  "BUSY",       "MASTERDOWN",
                                            "TRYAGAIN", "OOM",        "READONLY",
                                            "MISCONF",  "NOREPLICAS", "CLUSTERDOWN"};

Status OwnerDenied(absl::string_view owner, const std::string& source_id,
                   const std::string& worker_id) {
  return absl::PermissionDeniedError(absl::StrCat("worker '", worker_id, "' of source '", source_id,
                                                  "' belongs to principal '", owner,
                                                  "'; only it or an admin may change it"));
}

}  // namespace

Status RedisStore::Corrupt(const std::string& mx_source_id, const std::string& worker_id) const {
  return absl::DataLossError(
      absl::StrCat("redis store ", description_, ": the summary of worker '", worker_id,
                   "' of source '", mx_source_id, "' (", internal::SourceKey(mx_source_id),
                   " field ", internal::SummaryField(worker_id),
                   ") was not written by ferry; remove the worker, or re-publish it as an admin"));
}

StatusOr<std::unique_ptr<RedisStore>> RedisStore::Create(const RedisStoreOptions& options) {
  FERRY_ASSIGN_OR_RETURN(RedisEndpoint endpoint, ParseRedisUrl(options.url, options.flag));
  internal::RedisPoolOptions pool_options;
  pool_options.connect.endpoint = endpoint;
  pool_options.connect.flag = options.flag;
  pool_options.connect.connect_timeout = options.connect_timeout;
  pool_options.connect.command_timeout = options.command_timeout;
  pool_options.size = options.pool_size;
  FERRY_ASSIGN_OR_RETURN(auto pool, internal::RedisPool::Create(std::move(pool_options)));
  // Hash the scripts once, now, rather than inside the first request.
  (void)internal::PublishScript();
  (void)internal::UpdateStatusScript();
  (void)internal::RemoveScript();
  (void)internal::GetScript();
  std::unique_ptr<RedisStore> store(
      new RedisStore(endpoint.Describe(), std::move(pool), options.command_timeout));
  // Not fatal: the pool logs once that Redis is unreachable, and every call says so until it is.
  (void)store->Ping();
  return store;
}

StatusOr<internal::RedisPool::Lease> RedisStore::Acquire() {
  return pool_->Acquire(absl::Now() + acquire_timeout_);
}

Status RedisStore::ErrorReply(std::string_view what, std::string_view message) const {
  const std::string_view code = message.substr(0, message.find(' '));
  // NOAUTH, or a large command refused before AUTH ("Protocol error: unauthenticated ...").
  if (code == "NOAUTH" || message.find("unauthenticated") != std::string_view::npos) {
    return absl::UnavailableError(absl::StrCat(
        "redis store ", description_, " requires a password (", Absl(what), ": ", Absl(message),
        "); give it in ", pool_->connect_options().flag, " as redis://:PASSWORD@HOST:PORT/DB"));
  }
  for (std::string_view not_serving : kNotServing) {
    if (code == not_serving) {
      return absl::UnavailableError(absl::StrCat("redis store ", description_, " cannot serve ",
                                                 Absl(what), ": ", Absl(message),
                                                 "; retry later, or check Redis"));
    }
  }
  return absl::InternalError(
      absl::StrCat("redis store ", description_, ": ", Absl(what), " failed: ", Absl(message)));
}

StatusOr<RedisReply> RedisStore::RunScript(internal::RedisConnection& conn,
                                           const internal::LuaScript& script,
                                           const std::vector<std::string_view>& keys,
                                           const std::vector<std::string_view>& args) {
  const std::string num_keys = absl::StrCat(keys.size());
  std::vector<std::string_view> argv;
  argv.reserve(3 + keys.size() + args.size());
  argv.push_back("EVALSHA");
  argv.push_back(script.sha1);
  argv.push_back(num_keys);
  argv.insert(argv.end(), keys.begin(), keys.end());
  argv.insert(argv.end(), args.begin(), args.end());
  FERRY_ASSIGN_OR_RETURN(RedisReply reply, conn.Command(argv));
  if (reply->type == REDIS_REPLY_ERROR && absl::StartsWith(Text(reply.get()), "NOSCRIPT")) {
    // Redis restarted (or SCRIPT FLUSH): send the script itself, which also caches it again.
    script_reloads_.fetch_add(1);
    argv[0] = "EVAL";
    argv[1] = script.body;
    FERRY_ASSIGN_OR_RETURN(reply, conn.Command(argv));
  }
  if (reply->type == REDIS_REPLY_ERROR) {
    return ErrorReply(script.name, StdView(Text(reply.get())));
  }
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0 || !IsText(reply->element[0])) {
    return absl::InternalError(absl::StrCat("redis store ", description_,
                                            ": unexpected reply to script ", Absl(script.name),
                                            " (type ", reply->type, ")"));
  }
  return reply;
}

Status RedisStore::Publish(const PublishRecord& r) {
  if (!internal::IsValidUtf8(r.owner)) {
    return absl::InvalidArgumentError(
        absl::StrCat("publish: the owner of worker '", r.worker_id, "' is not valid UTF-8"));
  }
  if (!internal::IsValidUtf8(r.worker.accelerator())) {
    return absl::InvalidArgumentError(absl::StrCat("publish: worker.accelerator of worker '",
                                                   r.worker_id, "' is not valid UTF-8"));
  }
  const std::string identity = r.identity.SerializeAsString();
  const std::string record = r.worker.SerializeAsString();
  const std::string rank = absl::StrCat(r.worker.worker_rank());
  const std::string status = absl::StrCat(static_cast<int>(r.worker.status()));
  const std::string updated_at = absl::StrCat(r.worker.updated_at());
  const std::string source_key = internal::SourceKey(r.mx_source_id);
  const std::string record_key = internal::RecordKey(r.mx_source_id, r.worker_id);
  const std::string field = internal::SummaryField(r.worker_id);
  const std::string max_owner_workers = absl::StrCat(r.max_owner_workers);

  FERRY_ASSIGN_OR_RETURN(auto lease, Acquire());
  FERRY_ASSIGN_OR_RETURN(
      RedisReply reply,
      RunScript(*lease, internal::PublishScript(),
                {internal::kSourcesKey, source_key, record_key, internal::kVersionKey,
                 internal::kOwnersKey},
                {r.mx_source_id, field, identity, rank, record, r.owner,
                 r.override_owner ? "1" : "0", status, updated_at, r.worker.accelerator(),
                 max_owner_workers, internal::TopologyArg(r.worker.topology())}));
  const absl::string_view code = ScriptCode(*reply);
  if (code == "OK") return absl::OkStatus();
  if (code == "DENIED") return OwnerDenied(ScriptArg(*reply, 1), r.mx_source_id, r.worker_id);
  if (code == "SOURCE_DENIED") {
    return internal::SourceOwnerDenied(std::string(ScriptArg(*reply, 1)), r.owner, r.mx_source_id);
  }
  if (code == "OWNER_FULL") return internal::OwnerWorkersExhausted(r.owner, r.max_owner_workers);
  if (code == "CORRUPT") return Corrupt(r.mx_source_id, r.worker_id);
  return absl::InternalError(
      absl::StrCat("redis store ", description_, ": publish script answered '", code, "'"));
}

Status RedisStore::AppendSummaries(const std::string& mx_source_id, const redisReply& hash,
                                   std::vector<WorkerSummary>* out) const {
  if (hash.type != REDIS_REPLY_ARRAY) {
    return absl::InternalError(absl::StrCat("redis store ", description_,
                                            ": unexpected reply to HGETALL of source '",
                                            mx_source_id, "'"));
  }
  SourceIdentity identity;
  std::vector<std::pair<absl::string_view, absl::string_view>> workers;  // worker_id, summary
  for (size_t i = 0; i + 1 < hash.elements; i += 2) {
    const absl::string_view field = Text(hash.element[i]);
    const absl::string_view value = Text(hash.element[i + 1]);
    if (field == Absl(internal::kIdentityField)) {
      if (!identity.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
        return absl::DataLossError(absl::StrCat("redis store ", description_, ": the identity in ",
                                                internal::SourceKey(mx_source_id),
                                                " does not parse; re-publish the source"));
      }
    } else if (absl::StartsWith(field, Absl(internal::kSummaryFieldPrefix))) {
      workers.emplace_back(field.substr(internal::kSummaryFieldPrefix.size()), value);
    }
  }
  const std::optional<uint64_t> training_step = TrainingStepOf(identity);
  const std::optional<std::string> layout_signature = LayoutSignatureOf(identity);
  for (const auto& [worker_id, json] : workers) {
    auto parsed = internal::ParseSummary(StdView(json));
    if (!parsed.ok()) {
      return absl::DataLossError(
          absl::StrCat("redis store ", description_, ": ", internal::SourceKey(mx_source_id),
                       " field ", internal::SummaryField(StdView(worker_id)), ": ",
                       parsed.status().message(), "; re-publish the worker"));
    }
    const internal::StoredSummary& stored = *parsed;
    auto rep = stored.ranks.find(stored.index_rank);
    if (rep == stored.ranks.end()) continue;  // cannot happen: Publish writes both together
    WorkerSummary& s = out->emplace_back();
    s.mx_source_id = mx_source_id;
    s.worker_id = std::string(worker_id);
    s.model_name = identity.model_name();
    s.worker_rank = stored.index_rank;
    s.status = rep->second.status;
    for (const auto& [rank, state] : stored.ranks) {
      s.status_mask |= 1u << (static_cast<uint32_t>(state.status) & 31u);
    }
    s.accelerator = rep->second.accelerator;
    s.updated_at = rep->second.updated_at;
    s.topology = rep->second.topology;
    s.source_load = rep->second.source_load;
    s.training_step = training_step;
    s.layout_signature = layout_signature;
    s.version = stored.version;
    s.owner = stored.owner;
  }
  return absl::OkStatus();
}

StatusOr<std::vector<WorkerSummary>> RedisStore::ListWorkers(const ListQuery& query) {
  FERRY_ASSIGN_OR_RETURN(auto lease, Acquire());
  std::vector<std::string> source_ids;
  if (query.mx_source_id.has_value()) {
    source_ids.push_back(*query.mx_source_id);
  } else {
    FERRY_ASSIGN_OR_RETURN(RedisReply members, lease->Command({"SMEMBERS", internal::kSourcesKey}));
    if (members->type == REDIS_REPLY_ERROR) {
      return ErrorReply("SMEMBERS", StdView(Text(members.get())));
    }
    if (members->type != REDIS_REPLY_ARRAY) {
      return absl::InternalError(
          absl::StrCat("redis store ", description_, ": unexpected reply to SMEMBERS"));
    }
    source_ids.reserve(members->elements);
    for (size_t i = 0; i < members->elements; ++i) {
      source_ids.emplace_back(Text(members->element[i]));
    }
  }

  // Every source hash in one round trip (batched, so that a huge listing does not build one
  // enormous request).
  constexpr size_t kBatch = 512;
  std::vector<WorkerSummary> out;
  for (size_t begin = 0; begin < source_ids.size(); begin += kBatch) {
    const size_t end = std::min(source_ids.size(), begin + kBatch);
    std::vector<std::string> keys;
    keys.reserve(end - begin);
    std::vector<std::vector<std::string_view>> commands;
    commands.reserve(end - begin);
    for (size_t i = begin; i < end; ++i) {
      keys.push_back(internal::SourceKey(source_ids[i]));
      commands.push_back({"HGETALL", keys.back()});
    }
    FERRY_ASSIGN_OR_RETURN(std::vector<RedisReply> replies, lease->Pipeline(commands));
    for (size_t i = begin; i < end; ++i) {
      const redisReply& hash = *replies[i - begin];
      if (hash.type == REDIS_REPLY_ERROR) return ErrorReply("HGETALL", StdView(Text(&hash)));
      FERRY_RETURN_IF_ERROR(AppendSummaries(source_ids[i], hash, &out));
    }
  }
  return out;
}

StatusOr<WorkerDetail> RedisStore::GetWorker(const std::string& mx_source_id,
                                             const std::string& worker_id) {
  const std::string source_key = internal::SourceKey(mx_source_id);
  const std::string record_key = internal::RecordKey(mx_source_id, worker_id);
  const std::string field = internal::SummaryField(worker_id);
  FERRY_ASSIGN_OR_RETURN(auto lease, Acquire());
  FERRY_ASSIGN_OR_RETURN(RedisReply reply, RunScript(*lease, internal::GetScript(),
                                                     {source_key, record_key}, {field}));
  const absl::string_view code = ScriptCode(*reply);
  if (code == "NO_SOURCE") {
    return absl::NotFoundError(absl::StrCat("source '", mx_source_id, "' not found"));
  }
  if (code == "NO_WORKER") {
    return absl::NotFoundError(
        absl::StrCat("worker '", worker_id, "' not found in source '", mx_source_id, "'"));
  }
  if (code == "CORRUPT") return Corrupt(mx_source_id, worker_id);
  if (code != "OK" || reply->elements < 5) {
    return absl::InternalError(
        absl::StrCat("redis store ", description_, ": get_worker script answered '", code, "'"));
  }
  auto corrupt = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("redis store ", description_, ": worker '", worker_id,
                                            "' of source '", mx_source_id, "' ", why,
                                            "; re-publish the worker"));
  };
  auto stored = internal::ParseSummary(StdView(ScriptArg(*reply, 1)));
  if (!stored.ok()) return corrupt(stored.status().message());
  uint32_t rank = 0;
  if (!absl::SimpleAtoi(ScriptArg(*reply, 2), &rank)) return corrupt("has a bad rank");
  const redisReply* record = reply->element[3];
  if (record->type != REDIS_REPLY_STRING) {
    return corrupt(absl::StrCat("has a summary but no record for rank ", rank,
                                " (were keys evicted? use maxmemory-policy noeviction)"));
  }
  WorkerDetail detail;
  if (!detail.worker.ParseFromArray(record->str, static_cast<int>(record->len))) {
    return corrupt(absl::StrCat("has a record for rank ", rank, " that does not parse"));
  }
  // Heartbeats change only the summary; it holds the current status and time.
  if (auto state = stored->ranks.find(rank); state != stored->ranks.end()) {
    detail.worker.set_status(state->second.status);
    detail.worker.set_updated_at(state->second.updated_at);
  }
  if (const redisReply* identity = reply->element[4]; identity->type == REDIS_REPLY_STRING) {
    detail.identity.emplace();
    if (!detail.identity->ParseFromArray(identity->str, static_cast<int>(identity->len))) {
      return corrupt("has a source identity that does not parse");
    }
  }
  detail.owner = stored->owner;
  detail.version = stored->version;
  return detail;
}

Status RedisStore::UpdateStatus(const StatusUpdate& u) {
  const std::string source_key = internal::SourceKey(u.mx_source_id);
  const std::string field = internal::SummaryField(u.worker_id);
  const std::string rank = u.worker_rank.has_value() ? absl::StrCat(*u.worker_rank) : "";
  const std::string status = absl::StrCat(static_cast<int>(u.status));
  const std::string updated_at = absl::StrCat(u.updated_at);
  const std::string expected =
      u.expected_version.has_value() ? absl::StrCat(*u.expected_version) : "";
  FERRY_ASSIGN_OR_RETURN(auto lease, Acquire());
  FERRY_ASSIGN_OR_RETURN(
      RedisReply reply,
      RunScript(*lease, internal::UpdateStatusScript(), {source_key, internal::kVersionKey},
                {field, rank, status, updated_at, expected, u.caller, u.override_owner ? "1" : "0",
                 internal::SourceLoadArg(u.source_load)}));
  const absl::string_view code = ScriptCode(*reply);
  if (code == "OK") return absl::OkStatus();
  if (code == "NO_SOURCE") {
    return absl::NotFoundError(
        absl::StrCat("update_status: source '", u.mx_source_id, "' not found"));
  }
  if (code == "NO_WORKER") {
    return absl::NotFoundError(absl::StrCat("update_status: worker '", u.worker_id,
                                            "' not found in source '", u.mx_source_id, "'"));
  }
  if (code == "DENIED") return OwnerDenied(ScriptArg(*reply, 1), u.mx_source_id, u.worker_id);
  if (code == "CORRUPT") return Corrupt(u.mx_source_id, u.worker_id);
  if (code == "ABORTED") {
    return absl::AbortedError(
        absl::StrCat("update_status: worker '", u.worker_id, "' changed since version ", expected));
  }
  if (code == "NO_RANK") {
    return absl::NotFoundError(absl::StrCat("update_status: rank ", rank, " not found in source '",
                                            u.mx_source_id, "' worker '", u.worker_id, "'"));
  }
  return absl::InternalError(
      absl::StrCat("redis store ", description_, ": update_status script answered '", code, "'"));
}

Status RedisStore::RemoveWorker(const std::string& mx_source_id, const std::string& worker_id,
                                std::optional<uint64_t> expected_version) {
  const std::string source_key = internal::SourceKey(mx_source_id);
  const std::string record_key = internal::RecordKey(mx_source_id, worker_id);
  const std::string field = internal::SummaryField(worker_id);
  const std::string expected = expected_version.has_value() ? absl::StrCat(*expected_version) : "";
  FERRY_ASSIGN_OR_RETURN(auto lease, Acquire());
  FERRY_ASSIGN_OR_RETURN(RedisReply reply, RunScript(*lease, internal::RemoveScript(),
                                                     {internal::kSourcesKey, source_key, record_key,
                                                      internal::kOwnersKey},
                                                     {mx_source_id, field, expected}));
  const absl::string_view code = ScriptCode(*reply);
  if (code == "OK") return absl::OkStatus();
  if (code == "NO_SOURCE") {
    return absl::NotFoundError(absl::StrCat("source '", mx_source_id, "' not found"));
  }
  if (code == "NO_WORKER") {
    return absl::NotFoundError(
        absl::StrCat("worker '", worker_id, "' not found in source '", mx_source_id, "'"));
  }
  if (code == "ABORTED") {
    return absl::AbortedError(
        absl::StrCat("remove_worker: worker '", worker_id, "' changed since version ", expected));
  }
  if (code == "CORRUPT") return Corrupt(mx_source_id, worker_id);
  return absl::InternalError(
      absl::StrCat("redis store ", description_, ": remove_worker script answered '", code, "'"));
}

Status RedisStore::Ping() {
  FERRY_ASSIGN_OR_RETURN(auto lease, Acquire());
  FERRY_ASSIGN_OR_RETURN(RedisReply reply, lease->Command({"PING"}));
  if (reply->type == REDIS_REPLY_ERROR) return ErrorReply("PING", StdView(Text(reply.get())));
  return absl::OkStatus();
}

}  // namespace ferry::store
