// The bounds of a worker endpoint's leases (artifact chunk leases, tensor read leases).
#ifndef FERRY_WORKER_LEASE_OPTIONS_H_
#define FERRY_WORKER_LEASE_OPTIONS_H_

#include <functional>
#include <string>

#include "absl/time/time.h"

namespace ferry::worker {

struct LeaseOptions {
  absl::Duration ttl = absl::Seconds(300);  // ModelExpress's lease lifetime
  int max_leases = 64;                      // outstanding at once; more: RESOURCE_EXHAUSTED
  // Tests only: the clock leases expire by (null: absl::Now).
  std::function<absl::Time()> clock_for_test;
};

// A new lease id: 16 random bytes as 32 lowercase hex digits (ModelExpress's uuid4().hex form).
std::string NewLeaseId();

}  // namespace ferry::worker

#endif  // FERRY_WORKER_LEASE_OPTIONS_H_
