#include "store/store_registry.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "store/memory_store.h"

namespace ferry::store {

const std::vector<StoreBackend>& RegisteredStores() {
  static const auto* const kStores = new std::vector<StoreBackend>{
      {"memory", "memory",
       [](const std::string&) -> StatusOr<std::unique_ptr<MetadataStore>> {
         return std::unique_ptr<MetadataStore>(MemoryStore::Create());
       }},
  };
  return *kStores;
}

StatusOr<std::unique_ptr<MetadataStore>> OpenStore(const std::string& spec,
                                                   const std::string& flag) {
  const size_t sep = spec.find("://");
  const std::string scheme = sep == std::string::npos ? spec : spec.substr(0, sep);
  std::vector<std::string> examples;
  for (const StoreBackend& b : RegisteredStores()) {
    if (b.scheme == scheme) return b.factory(spec);
    examples.push_back(b.example);
  }
  return absl::InvalidArgumentError(
      absl::StrCat(flag, "='", spec,
                   "' names no known store; registered stores: ", absl::StrJoin(examples, ", ")));
}

}  // namespace ferry::store
