// The one way ferry talks to Redis: RAII wrappers over hiredis 0.14 (blocking API) and a small
// fixed-size connection pool. hiredis stays out of this header (its types are only declared), so
// targets that include it need no hiredis headers.
//
// Every call is bounded: connecting takes at most connect_timeout, and every socket read or write
// at most command_timeout (redisSetTimeout). A transport failure is Unavailable with a message
// naming the store and what to do, e.g.
//   redis store redis://127.0.0.1:6390/0 unreachable: Connection refused; check --store or start
//   Redis
// and the connection is dropped; the next Acquire connects again, so a Redis that comes back is
// used again without restarting anything.
#ifndef FERRY_STORE_REDIS_CLIENT_H_
#define FERRY_STORE_REDIS_CLIENT_H_

#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ferry/status.h"
#include "store/redis_url.h"

struct redisContext;
struct redisReply;

namespace ferry::store::internal {

struct RedisReplyDeleter {
  void operator()(redisReply* reply) const;
};
// One reply (with all its nested elements); freeReplyObject on destruction.
using RedisReply = std::unique_ptr<redisReply, RedisReplyDeleter>;

struct RedisContextDeleter {
  void operator()(redisContext* context) const;
};
using RedisContextPtr = std::unique_ptr<redisContext, RedisContextDeleter>;

struct RedisConnectOptions {
  RedisEndpoint endpoint;
  std::string flag = "--store";  // the setting named in error messages
  absl::Duration connect_timeout = absl::Seconds(1);
  absl::Duration command_timeout = absl::Seconds(2);  // per socket read or write
};

// "redis store redis://HOST:PORT/DB unreachable: <cause>; check <flag> or start Redis".
Status RedisUnreachable(const RedisConnectOptions& options, std::string_view cause);

// One connected hiredis context, AUTHed and SELECTed. Thread-compatible: one thread at a time
// (RedisPool hands each connection to one caller).
class RedisConnection {
 public:
  // Connects, sets the command timeout, sends AUTH and SELECT as the endpoint asks. Unavailable
  // on any failure. `options` is borrowed and must outlive the connection.
  static StatusOr<std::unique_ptr<RedisConnection>> Connect(const RedisConnectOptions& options);

  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  // Sends one command and waits for its reply. A Redis error reply (-ERR ...) comes back as a
  // reply of type REDIS_REPLY_ERROR, for the caller to judge; a transport failure is Unavailable
  // and marks the connection broken.
  StatusOr<RedisReply> Command(const std::vector<std::string_view>& argv);

  // Sends every command, then reads every reply: one round trip. Replies are in command order.
  // Same error rules as Command; one transport failure fails the whole batch.
  StatusOr<std::vector<RedisReply>> Pipeline(
      const std::vector<std::vector<std::string_view>>& commands);

  // True after a transport failure: the connection must not be used again.
  bool broken() const { return broken_; }

  // True when the server has closed the connection (or sent something unasked) while it sat
  // idle, e.g. because Redis restarted. One poll(2), no round trip.
  bool PeerClosed() const;

 private:
  RedisConnection(const RedisConnectOptions* options, RedisContextPtr context)
      : options_(options), context_(std::move(context)) {}
  // Marks the connection broken and returns Unavailable for the context's error during `what`.
  Status TransportError(std::string_view what);

  const RedisConnectOptions* const options_;
  RedisContextPtr context_;
  bool broken_ = false;
};

struct RedisPoolOptions {
  RedisConnectOptions connect;
  int size = 8;  // connections at most; callers beyond that wait for one to be released
};

// A fixed-size pool of lazily opened connections. Thread-safe. Connections are opened on demand
// and dropped after a transport failure or when Redis closed them while idle, so the pool heals
// by itself once Redis is back.
class RedisPool {
 public:
  // Validates the options (naming the field); does not connect.
  static StatusOr<std::unique_ptr<RedisPool>> Create(RedisPoolOptions options);

  RedisPool(const RedisPool&) = delete;
  RedisPool& operator=(const RedisPool&) = delete;

  // Exclusive use of one connection until destruction, when it goes back to the pool (or is
  // dropped if it broke). Must not outlive the pool.
  class Lease {
   public:
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&&) = delete;
    ~Lease();
    RedisConnection* operator->() const { return connection_.get(); }
    RedisConnection& operator*() const { return *connection_; }

   private:
    friend class RedisPool;
    Lease(RedisPool* pool, std::unique_ptr<RedisConnection> connection)
        : pool_(pool), connection_(std::move(connection)) {}
    RedisPool* pool_;
    std::unique_ptr<RedisConnection> connection_;
  };

  // A healthy connection: an idle one, or a new one when fewer than `size` exist. Waits until
  // `deadline` for one to be released when all are in use. Unavailable when Redis cannot be
  // reached or no connection came free in time.
  StatusOr<Lease> Acquire(absl::Time deadline);

  const RedisConnectOptions& connect_options() const { return options_.connect; }

 private:
  explicit RedisPool(RedisPoolOptions options) : options_(std::move(options)) {}
  void Release(std::unique_ptr<RedisConnection> connection);
  bool CanAcquire() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const RedisPoolOptions options_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<RedisConnection>> idle_ ABSL_GUARDED_BY(mu_);  // LIFO
  int leased_ ABSL_GUARDED_BY(mu_) = 0;  // handed out or being connected
  // Logged transitions only: a warning when Redis becomes unreachable, info when it is back.
  std::atomic<bool> reachable_{true};
};

}  // namespace ferry::store::internal

#endif  // FERRY_STORE_REDIS_CLIENT_H_
