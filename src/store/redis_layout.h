// How RedisStore lays ferry's records out in Redis (docs/protocol.md, "Redis key layout"), and
// the Lua scripts that change them atomically. Pure functions; no I/O.
//
//   ferry:sources                SET   of mx_source_ids that have at least one worker
//   ferry:src:{sid}              HASH  identity -> serialized SourceIdentity (last writer wins)
//                                      owner -> principal whose publish created the source
//                                      (absent when that principal was "")
//                                      w:{worker_id} -> worker summary JSON (below)
//   ferry:rec:{sid'}:{worker_id} HASH  {rank} -> serialized WorkerMetadata, as published
//   ferry:version                STRING version counter shared by all workers
//   ferry:owners                 HASH  principal -> number of workers it owns ("" included)
//
// sid' is the mx_source_id with '%' and ':' %-escaped, so that no two (sid, worker_id) pairs
// share a record key (real mx_source_ids are hex and appear unchanged).
//
// The summary is small and kept by the scripts only:
//   {"v":"<version>","o":"<owner>","i":"<representative rank>",
//    "r":{"<rank>":{"s":"<status>","u":"<updated_at ms>","a":"<accelerator>",
//                   "t":{"<level>":"<domain>",...},"l":"<source_load>"}, ...}}
// "t" (the rank's WorkerMetadata.topology) is written only when non-empty, "l" (its last
// reported source_load, a decimal float as text) only while it has one; summaries written
// before ferry knew them have neither and read back as no topology and no load.
// Numbers are JSON strings so that 64-bit values never pass through a double. Heartbeats change
// only the summary; readers overlay its status and updated_at onto the published record.
#ifndef FERRY_STORE_REDIS_LAYOUT_H_
#define FERRY_STORE_REDIS_LAYOUT_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "common/utf8.h"
#include "ferry/status.h"
#include "model_express/p2p.pb.h"

namespace ferry::store::internal {

inline constexpr std::string_view kSourcesKey = "ferry:sources";
inline constexpr std::string_view kVersionKey = "ferry:version";
inline constexpr std::string_view kOwnersKey = "ferry:owners";
inline constexpr std::string_view kIdentityField = "identity";
inline constexpr std::string_view kSummaryFieldPrefix = "w:";

std::string SourceKey(std::string_view mx_source_id);
std::string RecordKey(std::string_view mx_source_id, std::string_view worker_id);
std::string SummaryField(std::string_view worker_id);

// The summary's text for a topology map ('' when empty) and for a source_load ('' when unset or
// not a finite number).
std::string TopologyArg(const ::google::protobuf::Map<std::string, std::string>& topology);
std::string SourceLoadArg(std::optional<float> source_load);

struct RankState {
  ::model_express::p2p::SourceStatus status = ::model_express::p2p::SOURCE_STATUS_UNKNOWN;
  int64_t updated_at = 0;  // unix ms
  std::string accelerator;
  std::map<std::string, std::string> topology;
  std::optional<float> source_load;
};

struct StoredSummary {
  uint64_t version = 0;
  std::string owner;
  uint32_t index_rank = 0;              // the rank of the latest Publish
  std::map<uint32_t, RankState> ranks;  // ordered: the first is the lowest rank
};

// Parses a summary written by the scripts. Numbers may be JSON strings or integral JSON numbers.
// DataLoss (saying what is wrong) when the text is not a summary.
StatusOr<StoredSummary> ParseSummary(std::string_view json);

// The summary JSON carries owner and accelerator as text: both must be UTF-8.
using ::ferry::internal::IsValidUtf8;

// One Lua script and its SHA-1, for EVALSHA.
struct LuaScript {
  std::string_view name;  // for error messages
  std::string body;
  std::string sha1;  // lowercase hex
};

// The scripts. Each runs atomically in Redis and checks everything before its first write, so it
// either changes nothing or all it means to. Replies are arrays whose first element is a code:
// OK, DENIED (owner follows), NO_SOURCE, NO_WORKER, NO_RANK, ABORTED (current version follows),
// CORRUPT (the worker's summary is not one the scripts wrote).
//
// Publish   KEYS sources, src, rec, version, owners; ARGV sid, summary field, identity bytes,
//           rank, record bytes, owner, override ('1'/'0'), status, updated_at, accelerator,
//           max workers per owner ('0' = no limit), topology (a JSON object; '' = none).
//           -> {OK, version} | {DENIED, owner} | {SOURCE_DENIED, source owner} | {OWNER_FULL}
//           | {CORRUPT} (an admin replaces a corrupt summary)
// Update    KEYS src, version; ARGV summary field, rank ('' = every rank), status, updated_at,
//           expected version ('' = none), caller, override ('1'/'0'), source_load (decimal
//           text; '' = none: cleared for that rank; ignored when every rank is updated).
//           -> {OK, version} | {NO_SOURCE} | {NO_WORKER} | {DENIED, owner} | {ABORTED, version}
//           | {NO_RANK} | {CORRUPT}
// Remove    KEYS sources, src, rec, owners; ARGV sid, summary field, expected version
//           ('' = none).
//           -> {OK} | {NO_SOURCE} | {NO_WORKER} | {ABORTED, version} | {CORRUPT} (only when
//           a version is expected: without one a corrupt worker can still be removed)
// Get       KEYS src, rec; ARGV summary field.
//           -> {OK, summary, lowest rank, record or nil, identity or nil} | {NO_SOURCE}
//           | {NO_WORKER} | {CORRUPT}
const LuaScript& PublishScript();
const LuaScript& UpdateStatusScript();
const LuaScript& RemoveScript();
const LuaScript& GetScript();

}  // namespace ferry::store::internal

#endif  // FERRY_STORE_REDIS_LAYOUT_H_
