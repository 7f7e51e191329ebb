#include "store/store_registry.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "store/memory_store.h"
#include "store/redis_store.h"

namespace ferry::store {
namespace {

// A factory that also knows the name of the setting, for its error messages.
using FlagFactory = std::function<StatusOr<std::unique_ptr<MetadataStore>>(
    const std::string& spec, const std::string& flag)>;

struct Backend {
  std::string scheme;
  std::string example;  // empty: accepted but not advertised
  FlagFactory factory;
};

StatusOr<std::unique_ptr<MetadataStore>> OpenRedis(const std::string& spec,
                                                   const std::string& flag) {
  RedisStoreOptions options;
  options.url = spec;
  options.flag = flag;
  FERRY_ASSIGN_OR_RETURN(auto store, RedisStore::Create(options));
  return std::unique_ptr<MetadataStore>(std::move(store));
}

const std::vector<Backend>& Backends() {
  static const auto* const kBackends = new std::vector<Backend>{
      {"memory", "memory",
       [](const std::string&, const std::string&) -> StatusOr<std::unique_ptr<MetadataStore>> {
         return std::unique_ptr<MetadataStore>(MemoryStore::Create());
       }},
      {"redis", "redis://HOST:PORT[/DB]", OpenRedis},
      // Not advertised: RedisStore refuses it with the reason (no TLS in hiredis 0.14) rather
      // than the registry calling it an unknown store.
      {"rediss", "", OpenRedis},
  };
  return *kBackends;
}

}  // namespace

const std::vector<StoreBackend>& RegisteredStores() {
  static const auto* const kStores = [] {
    auto* stores = new std::vector<StoreBackend>;
    for (const Backend& b : Backends()) {
      if (b.example.empty()) continue;
      FlagFactory factory = b.factory;
      stores->push_back({b.scheme, b.example,
                         [factory](const std::string& spec) { return factory(spec, "--store"); }});
    }
    return stores;
  }();
  return *kStores;
}

StatusOr<std::unique_ptr<MetadataStore>> OpenStore(const std::string& spec,
                                                   const std::string& flag) {
  const size_t sep = spec.find("://");
  const std::string scheme = sep == std::string::npos ? spec : spec.substr(0, sep);
  std::vector<std::string> examples;
  for (const Backend& b : Backends()) {
    if (b.scheme == scheme) return b.factory(spec, flag);
    if (!b.example.empty()) examples.push_back(b.example);
  }
  return absl::InvalidArgumentError(
      absl::StrCat(flag, "='", spec,
                   "' names no known store; registered stores: ", absl::StrJoin(examples, ", ")));
}

}  // namespace ferry::store
