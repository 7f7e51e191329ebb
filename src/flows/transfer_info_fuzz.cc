// libFuzzer target: a source's GetTransferInfo answer (protobuf bytes) as a target plans its
// pull from it. Invariants: when the plan is accepted, the local layout is contiguous and
// inside plan.total, and every read lands inside the local buffer.
#include <cstddef>
#include <cstdint>

#include "flows/transfer_plan.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ferry::v1::GetTransferInfoResponse info;
  if (!info.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto plan = ferry::weights::internal::MakePlan(info);
  if (!plan.ok()) return 0;
  uint64_t expect = 0;
  for (const auto& t : plan->local) {
    if (t.offset != expect || t.size > plan->total - t.offset) __builtin_trap();
    expect += t.size;
  }
  if (expect != plan->total) __builtin_trap();
  // A fake base: only the arithmetic is checked, nothing is written.
  uint8_t* base = reinterpret_cast<uint8_t*>(uintptr_t{1} << 40);
  for (const ferry::ReadOp& op : ferry::weights::internal::MakeOps(*plan, base)) {
    const uint64_t at = static_cast<uint64_t>(static_cast<uint8_t*>(op.local) - base);
    if (at > plan->total || op.length > plan->total - at) __builtin_trap();
  }
  return 0;
}
