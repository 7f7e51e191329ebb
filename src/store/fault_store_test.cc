#include "store/fault_store.h"

#include "gtest/gtest.h"
#include "store/memory_store.h"

namespace ferry::store {
namespace {

TEST(FaultStoreTest, InjectsFailureForOneOpAndClears) {
  auto inner = MemoryStore::Create();
  FaultStore store(inner.get());
  PublishRecord r;
  r.mx_source_id = "s";
  r.worker_id = "w";
  store.SetFailure(FaultStore::Op::kPublish, absl::UnavailableError("injected"));
  EXPECT_EQ(store.Publish(r).code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(store.ListWorkers({}).ok());  // other ops unaffected
  store.ClearFailure();
  EXPECT_TRUE(store.Publish(r).ok());
  EXPECT_EQ(store.ListWorkers({})->size(), 1u);
}

TEST(FaultStoreTest, AfterListHookRunsOnceBetweenReadAndReturn) {
  auto inner = MemoryStore::Create();
  FaultStore store(inner.get());
  int calls = 0;
  store.SetAfterListHook([&] { ++calls; });
  ASSERT_TRUE(store.ListWorkers({}).ok());
  ASSERT_TRUE(store.ListWorkers({}).ok());
  EXPECT_EQ(calls, 1);
}

}  // namespace
}  // namespace ferry::store
