// Prefaulter against a real engine region: residency checked with mincore.
#include "flows/prefaulter.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::weights {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kStep = Prefaulter::kStep;

std::unique_ptr<TransferEngine> Engine() {
  TransferEngineOptions o;
  o.name = "prefaulter-test";
  o.enable_shm = o.enable_ucx = false;
  o.tcp_listen = "127.0.0.1:0";
  return *TransferEngine::Create(o);
}

std::unique_ptr<Region> Lazy(TransferEngine& engine, uint64_t bytes) {
  AllocateOptions allocate;
  allocate.shareable = false;
  allocate.prefault = false;
  return *engine.AllocateRegion(bytes, allocate);
}

// Resident pages of [data, data+bytes).
uint64_t Resident(const void* data, uint64_t bytes) {
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((bytes + page - 1) / page);
  if (::mincore(const_cast<void*>(data), bytes, vec.data()) != 0) return ~0ull;
  uint64_t n = 0;
  for (unsigned char v : vec) n += v & 1;
  return n;
}

uint64_t Pages(uint64_t bytes) { return bytes / static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)); }

TEST(PrefaulterTest, PreparesEveryStepOfTheOpsAndNothingOutsideThem) {
  auto engine = Engine();
  auto region = Lazy(*engine, 6 * kStep);
  char* base = static_cast<char*>(region->data());
  ASSERT_EQ(Resident(base, 6 * kStep), 0u);
  std::atomic<bool> cancel{false};
  // Steps 1..3 (an op that starts and ends inside a step) and step 5.
  Prefaulter p(region.get(),
               {ReadOp{0, 0, base + kStep + 100, 2 * kStep}, ReadOp{0, 0, base + 5 * kStep, 1}},
               &cancel);
  ASSERT_TRUE(p.active());
  ASSERT_TRUE(p.Finish().ok());
  EXPECT_EQ(Resident(base, kStep), 0u);
  EXPECT_EQ(Resident(base + kStep, 3 * kStep), Pages(3 * kStep));
  EXPECT_EQ(Resident(base + 4 * kStep, kStep), 0u);
  EXPECT_EQ(Resident(base + 5 * kStep, kStep), Pages(kStep));
  EXPECT_FALSE(cancel.load());
}

// What the transports call before copying: on return the piece's steps are resident, whether
// this thread prepared them or waited for the one that was. Many callers at once, and the
// prefault thread beside them, each step prepared by exactly one of them.
TEST(PrefaulterTest, PrepareReturnsWithThePieceResidentFromManyThreadsAtOnce) {
  auto engine = Engine();
  constexpr uint64_t kSteps = 32;
  auto region = Lazy(*engine, kSteps * kStep);
  char* base = static_cast<char*>(region->data());
  std::atomic<bool> cancel{false};
  Prefaulter p(region.get(), {ReadOp{0, 0, base, kSteps * kStep}}, &cancel);
  std::atomic<bool> all_resident{true};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      // From the end backwards, where the prefault thread arrives last; 1 MiB pieces.
      for (uint64_t at = kSteps * kStep - (t + 1) * (1 << 20); at < kSteps * kStep; at -= 4 << 20) {
        p.Prepare(base + at, 1 << 20);
        if (Resident(base + at, 1 << 20) != Pages(1 << 20)) all_resident = false;
        if (at < (4 << 20)) break;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_TRUE(all_resident.load());
  ASSERT_TRUE(p.Finish().ok());
  EXPECT_EQ(Resident(base, kSteps * kStep), Pages(kSteps * kStep));
}

// Memory that cannot be faulted in for writing (here: read-only caller memory): the failure
// cancels the read, Finish names it, and Prepare never hangs on the step that failed.
TEST(PrefaulterTest, AFailureCancelsTheReadAndNoCallerWaitsForever) {
  auto engine = Engine();
  const uint64_t bytes = 2 * kStep;
  void* ro = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(ro, MAP_FAILED);
  {
    auto region = *engine->RegisterRegion(ro, bytes);
    std::atomic<bool> cancel{false};
    Prefaulter p(region.get(), {ReadOp{0, 0, ro, bytes}}, &cancel);
    p.Prepare(static_cast<char*>(ro) + kStep, 4096);
    p.Prepare(ro, 4096);
    const Status s = p.Finish();
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_THAT(s.message(), HasSubstr("not writable")) << s;
    EXPECT_TRUE(cancel.load());
  }
  ::munmap(ro, bytes);
}

TEST(PrefaulterTest, WithoutARegionItDoesNothing) {
  std::atomic<bool> cancel{false};
  Prefaulter p(nullptr, {}, &cancel);
  EXPECT_FALSE(p.active());
  EXPECT_TRUE(p.Finish().ok());
}

}  // namespace
}  // namespace ferry::weights
