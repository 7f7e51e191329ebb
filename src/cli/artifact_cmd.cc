// ferry artifact seal DIR: build the sealed manifest of a compile-cache tree (contract section
// 4) and print it with its artifact_id, exactly as ModelExpress computes them.
#include <iostream>

#include "absl/strings/str_cat.h"
#include "artifacts/manifest.h"
#include "cli/cli.h"
#include "cli/p2p_flags.h"
#include "nlohmann/json.hpp"

namespace ferry::cli {

namespace {

namespace p2p = ::model_express::p2p;

struct Kind {
  const char* name;
  p2p::MxSourceType type;
};

constexpr Kind kKinds[] = {
    {"torch-compile", p2p::MX_SOURCE_TYPE_TORCH_COMPILE_CACHE},
    {"triton", p2p::MX_SOURCE_TYPE_TRITON_CACHE},
    {"deep-gemm", p2p::MX_SOURCE_TYPE_DEEP_GEMM_CACHE},
    {"tilelang", p2p::MX_SOURCE_TYPE_TILELANG_CACHE},
    {"cute-dsl", p2p::MX_SOURCE_TYPE_CUTE_DSL_CACHE},
    {"flashinfer", p2p::MX_SOURCE_TYPE_FLASHINFER_CACHE},
    {"tvm-ffi", p2p::MX_SOURCE_TYPE_TVM_FFI_CACHE},
};

std::string KindNames() {
  std::string out;
  for (const Kind& k : kKinds) absl::StrAppend(&out, out.empty() ? "" : ", ", k.name);
  return out;
}

struct SealFlags {
  std::string dir;
  std::string chunk_size = "64MiB";
  std::string kind = "torch-compile";
  bool json = false;
};

Status RunSeal(const SealFlags& flags) {
  artifacts::SealOptions options;
  FERRY_ASSIGN_OR_RETURN(const uint64_t chunk, ParseByteSize(flags.chunk_size, "--chunk-size"));
  options.chunk_size = static_cast<int64_t>(chunk);
  const Kind* kind = nullptr;
  for (const Kind& k : kKinds) {
    if (flags.kind == k.name) kind = &k;
  }
  if (kind == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--kind: unknown cache kind '", flags.kind, "'; use one of ", KindNames()));
  }
  options.mx_source_type = kind->type;
  FERRY_ASSIGN_OR_RETURN(artifacts::Manifest manifest,
                         artifacts::SealDirectory(flags.dir, options));
  FERRY_ASSIGN_OR_RETURN(artifacts::SourceSummary summary, artifacts::SummarizeManifest(manifest));
  if (!flags.json) {
    std::cout << "artifact_id " << summary.artifact_id << "\nkind " << kind->name << " ("
              << kind->type << ")\nfiles " << summary.file_count << "\nchunks "
              << summary.chunk_count << " of " << FormatBytes(manifest.chunk_size) << "\nbytes "
              << summary.total_size << " (" << FormatBytes(summary.total_size) << ")\n";
    return absl::OkStatus();
  }
  nlohmann::ordered_json out;
  out["artifact_id"] = summary.artifact_id;
  out["kind"] = kind->name;
  out["total_size"] = summary.total_size;
  out["file_count"] = summary.file_count;
  out["chunk_count"] = summary.chunk_count;
  out["manifest"] = nlohmann::ordered_json::parse(artifacts::ArtifactIdJson(manifest));
  std::cout << out.dump(2) << "\n";
  return absl::OkStatus();
}

}  // namespace

void AddArtifactCommand(CLI::App& app, Cli& cli) {
  CLI::App* artifact =
      app.add_subcommand("artifact", "Compile-cache artifacts (torch.compile, Triton, ...).");
  artifact->require_subcommand(1);
  auto seal = std::make_shared<SealFlags>();
  CLI::App* cmd = artifact->add_subcommand(
      "seal",
      "Build the sealed manifest of a cache directory and print its artifact_id, as\n"
      "ModelExpress computes it: symlinks and special files skipped, canonical absolute paths\n"
      "in bytewise order, fixed-size chunks, CRC32C per chunk and per file.");
  cmd->add_option("DIR", seal->dir, "the cache directory")->required();
  cmd->add_option("--chunk-size", seal->chunk_size, "chunk size: bytes, or 64MiB, ... (1 B..4 GiB)")
      ->capture_default_str();
  cmd->add_option("--kind", seal->kind, "cache kind: " + KindNames())->capture_default_str();
  cmd->add_flag("--json", seal->json,
                "print the manifest (the JSON artifact_id is computed over) with the id");
  cmd->callback([&cli, seal] { cli.action = [seal] { return RunSeal(*seal); }; });
}

}  // namespace ferry::cli
