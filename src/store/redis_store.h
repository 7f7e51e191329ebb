// RedisStore: the MetadataStore on a Redis server (`--store redis://HOST:PORT[/DB]`), so that
// several ferry-server replicas share one view and records survive a server restart.
//
// Every state change is one Lua script run (EVALSHA, falling back to EVAL when Redis has lost its
// script cache after a restart), so Publish is all-or-nothing, UpdateStatus and RemoveWorker are
// compare-and-set on the worker's version, and ownership is checked in the same atomic step.
// Reads: GetWorker is one script run too (a consistent snapshot); ListWorkers reads the source
// set, then every source hash in one pipelined round trip. Nothing is cached in this process:
// writes through one RedisStore are seen at once through any other on the same Redis. The key
// layout is in store/redis_layout.h and docs/protocol.md.
//
// Every call is bounded (connect_timeout to connect, command_timeout per socket read or write);
// when Redis cannot be reached every method returns Unavailable naming the store, and the next
// call after Redis is back reconnects.
//
// Thread-safe: all methods may be called concurrently; they share a fixed pool of connections.
#ifndef FERRY_STORE_REDIS_STORE_H_
#define FERRY_STORE_REDIS_STORE_H_

#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "store/metadata_store.h"
#include "store/redis_client.h"
#include "store/redis_layout.h"

namespace ferry::store {

struct RedisStoreOptions {
  // redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]; port 6379 and DB 0 when left out.
  std::string url;
  std::string flag = "--store";  // the setting named in error messages
  int pool_size = 8;             // connections at most (1-1024)
  absl::Duration connect_timeout = absl::Seconds(1);
  absl::Duration command_timeout = absl::Seconds(2);  // per socket read or write
};

class RedisStore final : public MetadataStore {
 public:
  // Validates the options (InvalidArgument naming the flag or field). Does not need Redis to be
  // up: a store created while Redis is down answers Unavailable until it comes up.
  static StatusOr<std::unique_ptr<RedisStore>> Create(const RedisStoreOptions& options);

  RedisStore(const RedisStore&) = delete;
  RedisStore& operator=(const RedisStore&) = delete;

  std::string Describe() const override { return description_; }
  Status Publish(const PublishRecord& record) override;
  StatusOr<std::vector<WorkerSummary>> ListWorkers(const ListQuery& query) override;
  StatusOr<WorkerDetail> GetWorker(const std::string& mx_source_id,
                                   const std::string& worker_id) override;
  Status UpdateStatus(const StatusUpdate& update) override;
  Status RemoveWorker(const std::string& mx_source_id, const std::string& worker_id,
                      std::optional<uint64_t> expected_version) override;
  Status Ping() override;

  // How many times Redis did not have a script cached (NOSCRIPT: a restarted Redis, or SCRIPT
  // FLUSH) and the script was sent in full. For tests and metrics.
  uint64_t script_reloads() const { return script_reloads_.load(); }

 private:
  RedisStore(std::string description, std::unique_ptr<internal::RedisPool> pool,
             absl::Duration acquire_timeout)
      : description_(std::move(description)),
        pool_(std::move(pool)),
        acquire_timeout_(acquire_timeout) {}

  StatusOr<internal::RedisPool::Lease> Acquire();
  // Runs `script` (EVALSHA, then EVAL on NOSCRIPT) and returns its reply array; an error reply is
  // Unavailable (Redis cannot serve: loading, busy, out of memory, read-only) or Internal.
  StatusOr<internal::RedisReply> RunScript(internal::RedisConnection& conn,
                                           const internal::LuaScript& script,
                                           const std::vector<std::string_view>& keys,
                                           const std::vector<std::string_view>& args);
  // Error replies of plain commands, mapped as in RunScript.
  Status ErrorReply(std::string_view what, std::string_view message) const;
  // DataLoss for a worker whose summary the scripts cannot read.
  Status Corrupt(const std::string& mx_source_id, const std::string& worker_id) const;
  // Adds one summary per worker of a source hash (HGETALL reply) to `out`.
  Status AppendSummaries(const std::string& mx_source_id, const redisReply& hash,
                         std::vector<WorkerSummary>* out) const;

  const std::string description_;
  const std::unique_ptr<internal::RedisPool> pool_;
  const absl::Duration acquire_timeout_;
  std::atomic<uint64_t> script_reloads_{0};
};

}  // namespace ferry::store

#endif  // FERRY_STORE_REDIS_STORE_H_
