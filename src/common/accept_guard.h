// What every accept loop needs so that a flood of connections, or running out of descriptors,
// neither spins a core nor floods the log: a log limiter and the errno values that mean "out of
// resources, back off" rather than "this one connection failed".
#ifndef FERRY_COMMON_ACCEPT_GUARD_H_
#define FERRY_COMMON_ACCEPT_GUARD_H_

#include <cerrno>
#include <cstdint>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ferry::internal {

// How long an accept loop stops accepting after the process ran out of descriptors (or memory
// for a socket): pending connections wait in the kernel's backlog meanwhile.
inline constexpr absl::Duration kAcceptBackoff = absl::Milliseconds(100);

// accept(2) errors that say the process or the system is out of resources.
inline bool IsResourceExhaustion(int err) {
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

// Lets one message through per `every`, counting the ones it held back.
// Thread-compatible (each accept loop owns its own).
class LogLimiter {
 public:
  explicit LogLimiter(absl::Duration every = absl::Seconds(10)) : every_(every) {}
  // True when a message may be logged now; then *suppressed is the number of messages held back
  // since the last one that went through.
  bool Allow(uint64_t* suppressed) {
    const absl::Time now = absl::Now();
    if (now - last_ < every_) {
      ++held_;
      return false;
    }
    last_ = now;
    *suppressed = held_;
    held_ = 0;
    return true;
  }

 private:
  const absl::Duration every_;
  absl::Time last_ = absl::InfinitePast();
  uint64_t held_ = 0;
};

}  // namespace ferry::internal

#endif  // FERRY_COMMON_ACCEPT_GUARD_H_
