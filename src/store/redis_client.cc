#include "store/redis_client.h"

#include <hiredis/hiredis.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace ferry::store::internal {
namespace {

// hiredis writes with write(2), which raises SIGPIPE when writing to a connection whose reset was
// already reported; the default action kills the process. Connections are dropped at their first
// error, so this should not happen, but a server must not die of it: block SIGPIPE in this thread
// for the duration of one hiredis call and swallow the one it may have raised, leaving the
// process's signal handling alone. Costs a few cheap syscalls per round trip.
class ScopedSigpipeBlock {
 public:
  ScopedSigpipeBlock() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~ScopedSigpipeBlock() {
    if (!was_pending_) {
      sigset_t pending;
      sigpending(&pending);
      if (sigismember(&pending, SIGPIPE) == 1) {
        const timespec zero{0, 0};
        while (sigtimedwait(&pipe_, nullptr, &zero) == -1 && errno == EINTR) {
        }
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  ScopedSigpipeBlock(const ScopedSigpipeBlock&) = delete;
  ScopedSigpipeBlock& operator=(const ScopedSigpipeBlock&) = delete;

 private:
  sigset_t pipe_;
  sigset_t old_;
  bool was_pending_ = false;
};

bool IsTimeout(const redisContext* c) {
  return c->err == REDIS_ERR_IO && (std::strcmp(c->errstr, std::strerror(EAGAIN)) == 0 ||
                                    std::strcmp(c->errstr, std::strerror(EWOULDBLOCK)) == 0);
}

// Debian's abseil has its own string_view, which StrCat takes and std::string_view is not.
absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string ReplyText(const redisReply* r) {
  return r->str == nullptr ? std::string() : std::string(r->str, r->len);
}

}  // namespace

void RedisReplyDeleter::operator()(redisReply* reply) const {
  if (reply != nullptr) freeReplyObject(reply);
}

void RedisContextDeleter::operator()(redisContext* context) const {
  if (context != nullptr) redisFree(context);
}

Status RedisUnreachable(const RedisConnectOptions& options, std::string_view cause) {
  return absl::UnavailableError(absl::StrCat("redis store ", options.endpoint.Describe(),
                                             " unreachable: ", Absl(cause), "; check ",
                                             options.flag, " or start Redis"));
}

StatusOr<std::unique_ptr<RedisConnection>> RedisConnection::Connect(
    const RedisConnectOptions& options) {
  const RedisEndpoint& ep = options.endpoint;
  RedisContextPtr context(
      redisConnectWithTimeout(ep.host.c_str(), ep.port, absl::ToTimeval(options.connect_timeout)));
  if (context == nullptr) return RedisUnreachable(options, "cannot allocate a hiredis context");
  if (context->err != 0) {
    std::string cause = context->errstr;
    if (context->err == REDIS_ERR_IO && cause == std::strerror(ETIMEDOUT)) {
      absl::StrAppend(&cause, " (no answer within ", absl::FormatDuration(options.connect_timeout),
                      ")");
    }
    return RedisUnreachable(options, cause);
  }
  if (redisSetTimeout(context.get(), absl::ToTimeval(options.command_timeout)) != REDIS_OK) {
    return RedisUnreachable(options,
                            absl::StrCat("setting the command timeout: ", context->errstr));
  }
  std::unique_ptr<RedisConnection> conn(new RedisConnection(&options, std::move(context)));

  // Credentials and database: a refusal here is a configuration problem, said as such.
  auto refused = [&](const std::string& what, const redisReply* r) {
    return absl::UnavailableError(absl::StrCat("redis store ", ep.Describe(), " refused ", what,
                                               ": ", ReplyText(r), "; check ", options.flag));
  };
  if (!ep.password.empty()) {
    std::vector<std::string_view> auth = {"AUTH"};
    if (!ep.user.empty()) auth.push_back(ep.user);
    auth.push_back(ep.password);
    FERRY_ASSIGN_OR_RETURN(RedisReply reply, conn->Command(auth));
    if (reply->type == REDIS_REPLY_ERROR) return refused("AUTH", reply.get());
  }
  if (ep.db != 0) {
    const std::string db = absl::StrCat(ep.db);
    FERRY_ASSIGN_OR_RETURN(RedisReply reply, conn->Command({"SELECT", db}));
    if (reply->type == REDIS_REPLY_ERROR) return refused(absl::StrCat("SELECT ", db), reply.get());
  }
  return conn;
}

Status RedisConnection::TransportError(std::string_view what) {
  broken_ = true;
  const redisContext* c = context_.get();
  if (IsTimeout(c)) {
    return RedisUnreachable(*options_,
                            absl::StrCat("no reply to ", Absl(what), " within ",
                                         absl::FormatDuration(options_->command_timeout)));
  }
  if (c->err == REDIS_ERR_EOF) {
    return RedisUnreachable(*options_,
                            absl::StrCat("Redis closed the connection during ", Absl(what)));
  }
  return RedisUnreachable(
      *options_, absl::StrCat(Absl(what), ": ", c->err != 0 ? c->errstr : "unknown error"));
}

StatusOr<RedisReply> RedisConnection::Command(const std::vector<std::string_view>& argv) {
  if (broken_) return RedisUnreachable(*options_, "the connection failed earlier");
  std::vector<const char*> ptrs;
  std::vector<size_t> lens;
  ptrs.reserve(argv.size());
  lens.reserve(argv.size());
  for (std::string_view a : argv) {
    ptrs.push_back(a.data());
    lens.push_back(a.size());
  }
  void* raw;
  {
    ScopedSigpipeBlock no_sigpipe;
    raw = redisCommandArgv(context_.get(), static_cast<int>(argv.size()), ptrs.data(), lens.data());
  }
  if (raw == nullptr) return TransportError(argv.empty() ? "a command" : argv[0]);
  return RedisReply(static_cast<redisReply*>(raw));
}

StatusOr<std::vector<RedisReply>> RedisConnection::Pipeline(
    const std::vector<std::vector<std::string_view>>& commands) {
  if (broken_) return RedisUnreachable(*options_, "the connection failed earlier");
  const std::string what = absl::StrCat("a pipeline of ", commands.size(), " commands");
  std::vector<const char*> ptrs;
  std::vector<size_t> lens;
  for (const auto& argv : commands) {
    ptrs.clear();
    lens.clear();
    for (std::string_view a : argv) {
      ptrs.push_back(a.data());
      lens.push_back(a.size());
    }
    if (redisAppendCommandArgv(context_.get(), static_cast<int>(argv.size()), ptrs.data(),
                               lens.data()) != REDIS_OK) {
      return TransportError(what);
    }
  }
  std::vector<RedisReply> replies;
  replies.reserve(commands.size());
  ScopedSigpipeBlock no_sigpipe;
  for (size_t i = 0; i < commands.size(); ++i) {
    void* raw = nullptr;
    if (redisGetReply(context_.get(), &raw) != REDIS_OK || raw == nullptr) {
      return TransportError(what);
    }
    replies.emplace_back(static_cast<redisReply*>(raw));
  }
  return replies;
}

bool RedisConnection::PeerClosed() const {
  pollfd p{context_->fd, POLLIN, 0};
  const int n = poll(&p, 1, 0);
  return n != 0;  // readable (EOF, reset, or unasked data) or poll failed
}

StatusOr<std::unique_ptr<RedisPool>> RedisPool::Create(RedisPoolOptions options) {
  auto bad = [](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("redis store options: ", why));
  };
  if (options.size < 1 || options.size > 1024) {
    return bad(absl::StrCat("pool_size must be 1-1024, got ", options.size));
  }
  if (options.connect.connect_timeout <= absl::ZeroDuration()) {
    return bad("connect_timeout must be positive");
  }
  if (options.connect.command_timeout <= absl::ZeroDuration()) {
    return bad("command_timeout must be positive");
  }
  return std::unique_ptr<RedisPool>(new RedisPool(std::move(options)));
}

RedisPool::Lease::Lease(Lease&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)), connection_(std::move(other.connection_)) {}

RedisPool::Lease::~Lease() {
  if (pool_ != nullptr) pool_->Release(std::move(connection_));
}

bool RedisPool::CanAcquire() const {
  return !idle_.empty() || leased_ + static_cast<int>(idle_.size()) < options_.size;
}

StatusOr<RedisPool::Lease> RedisPool::Acquire(absl::Time deadline) {
  std::unique_ptr<RedisConnection> conn;
  {
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithDeadline(absl::Condition(this, &RedisPool::CanAcquire), deadline)) {
      return absl::UnavailableError(absl::StrCat(
          "redis store ", options_.connect.endpoint.Describe(), ": all ", options_.size,
          " connections stayed busy; the store is overloaded or Redis is slow, retry later"));
    }
    if (!idle_.empty()) {
      conn = std::move(idle_.back());
      idle_.pop_back();
    }
    ++leased_;
  }
  if (conn != nullptr && conn->PeerClosed()) conn.reset();  // e.g. Redis restarted meanwhile
  if (conn == nullptr) {
    auto connected = RedisConnection::Connect(options_.connect);
    if (!connected.ok()) {
      Release(nullptr);
      if (reachable_.exchange(false)) spdlog::warn("{}", connected.status().message());
      return connected.status();
    }
    if (!reachable_.exchange(true)) {
      spdlog::info("redis store {} reachable again", options_.connect.endpoint.Describe());
    }
    conn = *std::move(connected);
  }
  return Lease(this, std::move(conn));
}

void RedisPool::Release(std::unique_ptr<RedisConnection> connection) {
  absl::MutexLock lock(&mu_);
  --leased_;
  if (connection != nullptr && !connection->broken()) idle_.push_back(std::move(connection));
}

}  // namespace ferry::store::internal
