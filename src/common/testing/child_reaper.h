// Test support: SIGKILLs and reaps a forked child however the test ends (an early ASSERT return
// included), so that no child outlives the test holding ctest's output pipe.
#ifndef FERRY_COMMON_TESTING_CHILD_REAPER_H_
#define FERRY_COMMON_TESTING_CHILD_REAPER_H_

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>

namespace ferry::testing {

class ChildReaper {
 public:
  explicit ChildReaper(pid_t pid) : pid_(pid) {}
  ~ChildReaper() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  ChildReaper(const ChildReaper&) = delete;
  ChildReaper& operator=(const ChildReaper&) = delete;

 private:
  const pid_t pid_;
};

}  // namespace ferry::testing

#endif  // FERRY_COMMON_TESTING_CHILD_REAPER_H_
