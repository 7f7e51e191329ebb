#include "store/memory_store.h"

#include "store/store_conformance.h"

namespace ferry::store {
namespace {

INSTANTIATE_TEST_SUITE_P(Memory, StoreConformanceTest,
                         ::testing::Values(StoreFactoryParam{
                             "memory",
                             [] { return std::unique_ptr<MetadataStore>(MemoryStore::Create()); }}),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace ferry::store
