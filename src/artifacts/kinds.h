// The compile-cache kinds and the contract's artifact source types they publish under
// (contract section 10.3): the names the CLI's --kind and the Python package accept.
#ifndef FERRY_ARTIFACTS_KINDS_H_
#define FERRY_ARTIFACTS_KINDS_H_

#include <string>

#include "ferry/status.h"
#include "model_express/p2p.pb.h"

namespace ferry::artifacts {

struct ArtifactKind {
  const char* name;  // "torch-compile", "triton", ...
  model_express::p2p::MxSourceType type;
};

// "torch-compile, triton, ..." for help and errors.
std::string ArtifactKindNames();

// InvalidArgument "unknown cache kind 'NAME'; use one of ..." for an unknown name.
StatusOr<ArtifactKind> ParseArtifactKind(const std::string& name);

// The fields a compile cache adds to a weights identity (contract section 10.3).
struct ArtifactCacheFields {
  std::string framework_version;
  std::string torch_version;
  std::string cuda_version;
  std::string triton_version;
  std::string gpu_arch;
  std::string compile_config_digest;
};

// The artifact identity: `base` (a weights identity) with the kind's mx_source_type and the
// cache fields. The CLI (`ferry artifact --kind ...`) and the Python package build it here.
model_express::p2p::SourceIdentity ArtifactIdentity(model_express::p2p::SourceIdentity base,
                                                    const ArtifactKind& kind,
                                                    const ArtifactCacheFields& cache);

}  // namespace ferry::artifacts

#endif  // FERRY_ARTIFACTS_KINDS_H_
