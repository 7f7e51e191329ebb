// The conformance suite every MetadataStore backend must pass. A backend's test file
// instantiates it with a factory that returns a fresh, empty store:
//
//   INSTANTIATE_TEST_SUITE_P(Memory, StoreConformanceTest,
//       ::testing::Values(StoreFactoryParam{"memory", [] { return MakeMemoryStore(); }}));
#ifndef FERRY_STORE_STORE_CONFORMANCE_H_
#define FERRY_STORE_STORE_CONFORMANCE_H_

#include <functional>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "store/metadata_store.h"

namespace ferry::store {

struct StoreFactoryParam {
  std::string name;
  // Returns a fresh store with no records; the test owns it.
  std::function<std::unique_ptr<MetadataStore>()> make;
};

inline std::string PrintToString(const StoreFactoryParam& p) { return p.name; }

// A READY record of (source, worker_id, rank) with an endpoint and accelerator, model name
// "Org/Model-<source>": the record the suite uses, shared with backend-specific tests.
PublishRecord SampleRecord(const std::string& source, const std::string& worker_id, uint32_t rank,
                           SourceStatus status = ::model_express::p2p::SOURCE_STATUS_READY,
                           int64_t updated_at = 1000);

class StoreConformanceTest : public ::testing::TestWithParam<StoreFactoryParam> {
 protected:
  void SetUp() override {
    store_ = GetParam().make();
    ASSERT_NE(store_, nullptr);
  }
  std::unique_ptr<MetadataStore> store_;
};

}  // namespace ferry::store

#endif  // FERRY_STORE_STORE_CONFORMANCE_H_
