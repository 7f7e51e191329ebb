// Faulting memory in ahead of use, in one place: an engine region before a pull copies into
// it, and UCX's own allocations.
#ifndef FERRY_COMMON_PAGES_H_
#define FERRY_COMMON_PAGES_H_

#include <cstdint>

#include "ferry/status.h"

namespace ferry {

// Faults every page that [data, data+size) touches in for writing, so that neither the first
// reader nor the first writer pays a fault per page (slow in VMs): one MADV_POPULATE_WRITE where
// the kernel has it (5.14+), else a write of one byte per page. FailedPrecondition when the
// memory is not writable (nothing is touched then), ResourceExhausted when memory ran out.
Status FaultInForWriting(void* data, uint64_t size);

}  // namespace ferry

#endif  // FERRY_COMMON_PAGES_H_
