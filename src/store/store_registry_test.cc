#include "store/store_registry.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ferry::store {
namespace {

using ::testing::HasSubstr;

TEST(StoreRegistryTest, OpensMemory) {
  auto store = OpenStore("memory");
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->Describe(), "memory");
}

TEST(StoreRegistryTest, UnknownSchemeListsRegisteredStores) {
  auto store = OpenStore("etcd://localhost:2379", "--store");
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("--store='etcd://localhost:2379'"));
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("memory"));
}

}  // namespace
}  // namespace ferry::store
