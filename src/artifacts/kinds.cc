#include "artifacts/kinds.h"

#include "absl/strings/str_cat.h"

namespace ferry::artifacts {

namespace {

namespace p2p = ::model_express::p2p;

constexpr ArtifactKind kKinds[] = {
    {"torch-compile", p2p::MX_SOURCE_TYPE_TORCH_COMPILE_CACHE},
    {"triton", p2p::MX_SOURCE_TYPE_TRITON_CACHE},
    {"deep-gemm", p2p::MX_SOURCE_TYPE_DEEP_GEMM_CACHE},
    {"tilelang", p2p::MX_SOURCE_TYPE_TILELANG_CACHE},
    {"cute-dsl", p2p::MX_SOURCE_TYPE_CUTE_DSL_CACHE},
    {"flashinfer", p2p::MX_SOURCE_TYPE_FLASHINFER_CACHE},
    {"tvm-ffi", p2p::MX_SOURCE_TYPE_TVM_FFI_CACHE},
};

}  // namespace

std::string ArtifactKindNames() {
  std::string out;
  for (const ArtifactKind& k : kKinds) absl::StrAppend(&out, out.empty() ? "" : ", ", k.name);
  return out;
}

StatusOr<ArtifactKind> ParseArtifactKind(const std::string& name) {
  for (const ArtifactKind& k : kKinds) {
    if (name == k.name) return k;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown cache kind '", name, "'; use one of ", ArtifactKindNames()));
}

model_express::p2p::SourceIdentity ArtifactIdentity(model_express::p2p::SourceIdentity base,
                                                    const ArtifactKind& kind,
                                                    const ArtifactCacheFields& cache) {
  base.set_mx_source_type(kind.type);
  base.set_backend_framework_version(cache.framework_version);
  base.set_torch_version(cache.torch_version);
  base.set_cuda_version(cache.cuda_version);
  base.set_triton_version(cache.triton_version);
  base.set_gpu_arch(cache.gpu_arch);
  base.set_compile_config_digest(cache.compile_config_digest);
  return base;
}

}  // namespace ferry::artifacts
