#include "store/redis_layout.h"

#include <openssl/evp.h>

#include <cmath>
#include <cstdio>
#include <limits>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace ferry::store::internal {
namespace {

// Shared by every script.
constexpr char kPrelude[] = R"lua(
-- Versions come from one counter. A fresh counter (a new or restarted Redis) starts at the clock
-- in microseconds, so a version handed out before a restart is never handed out again and a
-- compare-and-set token from before the restart cannot match a new record.
local function next_version(key)
  local v = redis.call('INCR', key)
  if v == 1 then
    local t = redis.call('TIME')
    v = tonumber(t[1]) * 1000000 + tonumber(t[2])
    redis.call('SET', key, string.format('%d', v))
  end
  return string.format('%d', v)
end
-- A worker summary as a table; nil when it is not one (then the script answers CORRUPT).
local function decode(text)
  local ok, sum = pcall(cjson.decode, text)
  if ok and type(sum) == 'table' and type(sum.r) == 'table' then return sum end
  return nil
end
-- An admin (override) or the owner may change a worker; anyone may change an unowned one.
local function may_change(sum, principal, override)
  return override == '1' or sum.o == nil or sum.o == '' or sum.o == principal
end
)lua";

constexpr char kPublish[] = R"lua(
local cur = redis.call('HGET', KEYS[2], ARGV[2])
local sum = cur and decode(cur)
if sum then
  if not may_change(sum, ARGV[6], ARGV[7]) then return {'DENIED', sum.o} end
elseif cur and ARGV[7] ~= '1' then
  return {'CORRUPT'}  -- its owner is unknown; an admin may replace it
end
-- The source belongs to the principal whose publish created it (none when that was '').
local source_owner = redis.call('HGET', KEYS[2], 'owner')
if ARGV[7] ~= '1' and ARGV[6] ~= '' and source_owner and source_owner ~= '' and
    source_owner ~= ARGV[6] then
  return {'SOURCE_DENIED', source_owner}
end
-- Workers per owner: a new worker, or one changing hands, counts against the new owner.
local previous = nil  -- nil: a new worker (or a corrupt one, whose owner is unknown)
if sum then previous = sum.o or '' end
if previous ~= ARGV[6] then
  local limit = tonumber(ARGV[11])
  local owned = tonumber(redis.call('HGET', KEYS[5], ARGV[6]) or '0')
  if limit and limit > 0 and owned >= limit then return {'OWNER_FULL'} end
  if previous ~= nil and redis.call('HINCRBY', KEYS[5], previous, -1) <= 0 then
    redis.call('HDEL', KEYS[5], previous)
  end
  redis.call('HINCRBY', KEYS[5], ARGV[6], 1)
end
if not sum then
  if cur then redis.call('DEL', KEYS[3]) end  -- an admin replaces a corrupt worker whole
  sum = {r = {}}
end
if redis.call('EXISTS', KEYS[2]) == 0 and ARGV[6] ~= '' then
  redis.call('HSET', KEYS[2], 'owner', ARGV[6])
end
local v = next_version(KEYS[4])
sum.v = v
sum.o = ARGV[6]
sum.i = ARGV[4]
local entry = {s = ARGV[8], u = ARGV[9], a = ARGV[10]}
if ARGV[12] ~= '' then entry.t = cjson.decode(ARGV[12]) end
sum.r[ARGV[4]] = entry
redis.call('HSET', KEYS[2], 'identity', ARGV[3], ARGV[2], cjson.encode(sum))
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
redis.call('SADD', KEYS[1], ARGV[1])
return {'OK', v}
)lua";

constexpr char kUpdateStatus[] = R"lua(
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NO_SOURCE'} end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return {'NO_WORKER'} end
local sum = decode(cur)
if not sum then return {'CORRUPT'} end
if not may_change(sum, ARGV[6], ARGV[7]) then return {'DENIED', sum.o} end
if ARGV[5] ~= '' and ARGV[5] ~= sum.v then return {'ABORTED', sum.v} end
if ARGV[2] ~= '' then
  local r = sum.r[ARGV[2]]
  if not r then return {'NO_RANK'} end
  r.s = ARGV[3]
  r.u = ARGV[4]
  if ARGV[8] ~= '' then r.l = ARGV[8] else r.l = nil end
else
  for _, r in pairs(sum.r) do
    r.s = ARGV[3]
    r.u = ARGV[4]
  end
end
local v = next_version(KEYS[2])
sum.v = v
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(sum))
return {'OK', v}
)lua";

constexpr char kRemove[] = R"lua(
if redis.call('EXISTS', KEYS[2]) == 0 then return {'NO_SOURCE'} end
local cur = redis.call('HGET', KEYS[2], ARGV[2])
if not cur then return {'NO_WORKER'} end
local sum = decode(cur)
if ARGV[3] ~= '' then
  if not sum then return {'CORRUPT'} end
  if ARGV[3] ~= sum.v then return {'ABORTED', sum.v} end
end
if sum then  -- a corrupt summary names no owner to uncount
  local owner = sum.o or ''
  if redis.call('HINCRBY', KEYS[4], owner, -1) <= 0 then redis.call('HDEL', KEYS[4], owner) end
end
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[2], ARGV[2])
-- The source goes away with its last worker: only its identity and owner fields are left.
if redis.call('HLEN', KEYS[2]) - redis.call('HEXISTS', KEYS[2], 'identity') -
    redis.call('HEXISTS', KEYS[2], 'owner') <= 0 then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[1], ARGV[1])
end
return {'OK'}
)lua";

constexpr char kGet[] = R"lua(
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {'NO_SOURCE'} end
  return {'NO_WORKER'}
end
local sum = decode(cur)
if not sum then return {'CORRUPT'} end
local low
for k, _ in pairs(sum.r) do
  if low == nil or tonumber(k) < tonumber(low) then low = k end
end
if low == nil then return {'NO_WORKER'} end
return {'OK', cur, low, redis.call('HGET', KEYS[2], low), redis.call('HGET', KEYS[1], 'identity')}
)lua";

std::string Sha1Hex(const std::string& text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(text.data(), text.size(), digest, &len, EVP_sha1(), nullptr);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), static_cast<size_t>(len)));
}

LuaScript MakeScript(std::string_view name, const char* body) {
  LuaScript s;
  s.name = name;
  s.body = absl::StrCat(kPrelude, body);
  s.sha1 = Sha1Hex(s.body);
  return s;
}

// Reads an integer stored as a JSON string (what the scripts write) or as an integral number.
template <typename T>
bool ReadInt(const nlohmann::json& obj, const char* key, T* out) {
  auto it = obj.find(key);
  if (it == obj.end()) return false;
  if (it->is_string()) return absl::SimpleAtoi(it->template get_ref<const std::string&>(), out);
  if (it->is_number_integer() || it->is_number_unsigned()) {
    if (it->is_number_unsigned()) {
      const uint64_t v = it->template get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<T>::max())) return false;
      *out = static_cast<T>(v);
      return true;
    }
    const int64_t v = it->template get<int64_t>();
    if (v < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
        (v > 0 &&
         static_cast<uint64_t>(v) > static_cast<uint64_t>(std::numeric_limits<T>::max()))) {
      return false;
    }
    *out = static_cast<T>(v);
    return true;
  }
  if (it->is_number_float()) {  // 1.7e+12 from a JSON encoder that used a double
    const double d = it->template get<double>();
    if (!std::isfinite(d) || d != std::floor(d) || d < -9007199254740992.0 ||
        d > 9007199254740992.0 || d < static_cast<double>(std::numeric_limits<T>::min()) ||
        d > static_cast<double>(std::numeric_limits<T>::max())) {
      return false;
    }
    *out = static_cast<T>(d);
    return true;
  }
  return false;
}

bool ReadString(const nlohmann::json& obj, const char* key, std::string* out) {
  auto it = obj.find(key);
  if (it == obj.end()) return true;  // absent: empty
  if (!it->is_string()) return false;
  *out = it->get<std::string>();
  return true;
}

// Reads a float stored as a JSON string (what the scripts write) or a JSON number. False when
// present but not a finite number.
bool ReadFloat(const nlohmann::json& obj, const char* key, std::optional<float>* out) {
  auto it = obj.find(key);
  if (it == obj.end()) return true;  // absent: no reading
  double d = 0;
  if (it->is_string()) {
    if (!absl::SimpleAtod(it->get_ref<const std::string&>(), &d)) return false;
  } else if (it->is_number()) {
    d = it->get<double>();
  } else {
    return false;
  }
  if (!std::isfinite(d)) return false;
  *out = static_cast<float>(d);
  return true;
}

// Reads a JSON object of strings; absent: empty.
bool ReadStringMap(const nlohmann::json& obj, const char* key,
                   std::map<std::string, std::string>* out) {
  auto it = obj.find(key);
  if (it == obj.end()) return true;
  if (it->is_array() && it->empty()) return true;  // Lua's cjson writes an empty table as []
  if (!it->is_object()) return false;
  for (const auto& [k, v] : it->items()) {
    if (!v.is_string()) return false;
    (*out)[k] = v.get<std::string>();
  }
  return true;
}

}  // namespace

std::string TopologyArg(const ::google::protobuf::Map<std::string, std::string>& topology) {
  if (topology.empty()) return "";
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : topology) j[k] = v;
  return j.dump();
}

std::string SourceLoadArg(std::optional<float> source_load) {
  if (!source_load.has_value() || !std::isfinite(*source_load)) return "";
  // Nine significant digits print every float exactly (it reads back as the same float).
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", static_cast<double>(*source_load));
  return buf;
}

std::string SourceKey(std::string_view mx_source_id) {
  return absl::StrCat("ferry:src:", absl::string_view(mx_source_id.data(), mx_source_id.size()));
}

std::string RecordKey(std::string_view mx_source_id, std::string_view worker_id) {
  std::string key = "ferry:rec:";
  key.reserve(key.size() + mx_source_id.size() + worker_id.size() + 1);
  for (char c : mx_source_id) {
    if (c == '%') {
      key += "%25";
    } else if (c == ':') {
      key += "%3A";
    } else {
      key += c;
    }
  }
  key += ':';
  key.append(worker_id);
  return key;
}

std::string SummaryField(std::string_view worker_id) {
  std::string field(kSummaryFieldPrefix);
  field.append(worker_id);
  return field;
}

StatusOr<StoredSummary> ParseSummary(std::string_view json) {
  auto bad = [](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("worker summary ", why));
  };
  const nlohmann::json j = nlohmann::json::parse(json.begin(), json.end(), nullptr,
                                                 /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("is not a JSON object");
  StoredSummary s;
  if (!ReadInt(j, "v", &s.version)) return bad("has no valid version \"v\"");
  if (!ReadInt(j, "i", &s.index_rank)) return bad("has no valid representative rank \"i\"");
  if (!ReadString(j, "o", &s.owner)) return bad("has an owner \"o\" that is not a string");
  auto ranks = j.find("r");
  if (ranks == j.end() || !ranks->is_object()) return bad("has no rank map \"r\"");
  for (const auto& [key, value] : ranks->items()) {
    uint32_t rank = 0;
    int status = 0;
    RankState state;
    if (!absl::SimpleAtoi(key, &rank) || !value.is_object() || !ReadInt(value, "s", &status) ||
        !ReadInt(value, "u", &state.updated_at) || !ReadString(value, "a", &state.accelerator) ||
        !ReadStringMap(value, "t", &state.topology) || !ReadFloat(value, "l", &state.source_load)) {
      return bad(absl::StrCat("has a bad entry for rank '", key, "'"));
    }
    // Never hand a status the protocol does not have to clients (found by redis_record_fuzz).
    if (!::model_express::p2p::SourceStatus_IsValid(status)) {
      return bad(absl::StrCat("has status ", status, " for rank '", key,
                              "', which is not a SourceStatus"));
    }
    state.status = static_cast<::model_express::p2p::SourceStatus>(status);
    s.ranks.emplace(rank, std::move(state));
  }
  return s;
}

const LuaScript& PublishScript() {
  static const auto* const kScript = new LuaScript(MakeScript("publish", kPublish));
  return *kScript;
}

const LuaScript& UpdateStatusScript() {
  static const auto* const kScript = new LuaScript(MakeScript("update_status", kUpdateStatus));
  return *kScript;
}

const LuaScript& RemoveScript() {
  static const auto* const kScript = new LuaScript(MakeScript("remove_worker", kRemove));
  return *kScript;
}

const LuaScript& GetScript() {
  static const auto* const kScript = new LuaScript(MakeScript("get_worker", kGet));
  return *kScript;
}

}  // namespace ferry::store::internal
