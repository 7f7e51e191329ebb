// Store selection: an explicit registry from a URL scheme to a factory. "memory" is always
// registered. Unknown schemes are InvalidArgument, listing what is registered.
#ifndef FERRY_STORE_STORE_REGISTRY_H_
#define FERRY_STORE_STORE_REGISTRY_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "store/metadata_store.h"

namespace ferry::store {

using StoreFactory = std::function<StatusOr<std::unique_ptr<MetadataStore>>(const std::string&)>;

struct StoreBackend {
  std::string scheme;   // "memory", "redis"
  std::string example;  // shown in errors and --help
  StoreFactory factory;
};

// The backends built into this binary.
const std::vector<StoreBackend>& RegisteredStores();

// Opens the store named by `spec` ("memory", or "SCHEME://..."). `flag` names the setting in
// error messages (e.g. "--store").
StatusOr<std::unique_ptr<MetadataStore>> OpenStore(const std::string& spec,
                                                   const std::string& flag = "--store");

}  // namespace ferry::store

#endif  // FERRY_STORE_STORE_REGISTRY_H_
