// ferry artifact: the command group for compile-cache artifacts. This file holds the shared
// kind and identity flags, `seal` (print a tree's sealed manifest and artifact_id, exactly as
// ModelExpress computes them) and `keygen`; publish and pull have their own files.
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "artifacts/manifest.h"
#include "artifacts/signing.h"
#include "cli/artifact_flags.h"
#include "cli/cli.h"
#include "cli/p2p_flags.h"
#include "common/byte_size.h"
#include "common/env.h"
#include "common/logging.h"
#include "nlohmann/json.hpp"

namespace ferry::cli {

namespace p2p = ::model_express::p2p;

namespace {

struct SealFlags {
  std::string dir;
  std::string chunk_size;
  std::string kind = "torch-compile";
  bool json = false;
};

struct KeygenFlags {
  std::string dir;
  bool json = false;
};

Status RunSeal(const SealFlags& flags) {
  artifacts::SealOptions options;
  FERRY_ASSIGN_OR_RETURN(options.chunk_size, ResolveChunkSize(flags.chunk_size));
  FERRY_ASSIGN_OR_RETURN(const ArtifactKind k, ParseArtifactKind(flags.kind));
  const ArtifactKind* kind = &k;
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

Status RunKeygen(const KeygenFlags& flags) {
  FERRY_ASSIGN_OR_RETURN(artifacts::KeyPairFiles files, artifacts::WriteKeyPair(flags.dir));
  if (flags.json) {
    nlohmann::ordered_json out = {{"private_key", files.private_key_path},
                                  {"public_key", files.public_key_path},
                                  {"fingerprint", files.fingerprint}};
    std::cout << out.dump(2) << "\n";
  } else {
    std::cout << "wrote " << files.private_key_path << " (keep it secret: sources sign with "
              << "--signing-key)\nwrote " << files.public_key_path
              << " (give it to targets: --trust)\nfingerprint " << files.fingerprint << "\n";
  }
  return absl::OkStatus();
}

}  // namespace

StatusOr<ArtifactKind> ParseArtifactKind(const std::string& name) {
  StatusOr<ArtifactKind> kind = artifacts::ParseArtifactKind(name);
  if (!kind.ok())
    return absl::InvalidArgumentError(absl::StrCat("--kind: ", kind.status().message()));
  return kind;
}

void AddArtifactIdentityFlags(CLI::App* cmd, ArtifactIdentityFlags& flags) {
  cmd->add_option("--kind", flags.kind, "cache kind: " + ArtifactKindNames())
      ->required()
      ->group("Identity");
  AddIdentityFlags(cmd, flags.base);
  const std::string group = "Identity";
  cmd->add_option("--framework-version", flags.cache.framework_version,
                  "SourceIdentity.backend_framework_version (vLLM/SGLang/TRT-LLM version)")
      ->group(group);
  cmd->add_option("--torch-version", flags.cache.torch_version, "SourceIdentity.torch_version")
      ->group(group);
  cmd->add_option("--cuda-version", flags.cache.cuda_version, "SourceIdentity.cuda_version")
      ->group(group);
  cmd->add_option("--triton-version", flags.cache.triton_version, "SourceIdentity.triton_version")
      ->group(group);
  cmd->add_option("--gpu-arch", flags.cache.gpu_arch, "SourceIdentity.gpu_arch, e.g. sm90")
      ->group(group);
  cmd->add_option("--compile-config-digest", flags.cache.compile_config_digest,
                  "SourceIdentity.compile_config_digest (MX_ARTIFACT_COMPILE_CONFIG_DIGEST)")
      ->group(group);
}

StatusOr<SourceIdentity> BuildArtifactIdentity(const ArtifactIdentityFlags& flags) {
  FERRY_ASSIGN_OR_RETURN(SourceIdentity id, BuildIdentity(flags.base));
  FERRY_ASSIGN_OR_RETURN(const ArtifactKind kind, ParseArtifactKind(flags.kind));
  return artifacts::ArtifactIdentity(std::move(id), kind, flags.cache);
}

StatusOr<int64_t> ResolveChunkSize(const std::string& flag) {
  int64_t chunk = artifacts::kDefaultChunkSize;
  std::string from = "the default";
  if (flag == "0") {
    chunk = 0;  // refused below with the range, not as "not a byte size"
    from = "--chunk-size";
  } else if (!flag.empty()) {
    FERRY_ASSIGN_OR_RETURN(const uint64_t v, internal::ParseByteSize(flag, "--chunk-size"));
    chunk = static_cast<int64_t>(std::min<uint64_t>(v, uint64_t{1} << 62));
    from = "--chunk-size";
  } else if (std::optional<std::string> env = internal::GetEnv("FERRY_ARTIFACT_CHUNK_SIZE")) {
    from = internal::EnvSource("FERRY_ARTIFACT_CHUNK_SIZE");
    if (from == "FERRY_ARTIFACT_CHUNK_SIZE") {
      FERRY_ASSIGN_OR_RETURN(const uint64_t v, internal::ParseByteSize(*env, from));
      chunk = static_cast<int64_t>(std::min<uint64_t>(v, uint64_t{1} << 62));
    } else {
      // ModelExpress's rule for its variable: bad or non-positive values fall back to 64 MiB.
      chunk = artifacts::ChunkSizeFromEnvValue(env->c_str());
      int64_t parsed = 0;
      if (!absl::SimpleAtoi(*env, &parsed) || parsed <= 0) {
        spdlog::warn("{}='{}' is not a positive integer; using 64 MiB chunks", from, *env);
      }
    }
  }
  if (Status s = artifacts::ValidateChunkSize(chunk); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        from, ": chunk size ", chunk, " is outside 1 B..4 GiB; pick a size such as 64MiB"));
  }
  return chunk;
}

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
  cmd->add_option(
      "--chunk-size", seal->chunk_size,
      "chunk size: bytes, or 64MiB, ... (1 B..4 GiB; default FERRY_ARTIFACT_CHUNK_SIZE, "
      "else 64 MiB)");
  cmd->add_option("--kind", seal->kind, "cache kind: " + ArtifactKindNames())
      ->capture_default_str();
  cmd->add_flag("--json", seal->json,
                "print the manifest (the JSON artifact_id is computed over) with the id");
  cmd->callback([&cli, seal] { cli.action = [seal] { return RunSeal(*seal); }; });

  auto keygen = std::make_shared<KeygenFlags>();
  CLI::App* kg = artifact->add_subcommand(
      "keygen",
      "Create a deployment signing key pair: DIR/signing.key (Ed25519, PKCS#8 PEM, mode 0600)\n"
      "for sources (--signing-key) and DIR/signing.pub for targets (--trust). Never overwrites.");
  kg->add_option("DIR", keygen->dir, "directory for the key pair (created, mode 0700)")->required();
  kg->add_flag("--json", keygen->json, "print the paths and fingerprint as JSON");
  kg->callback([&cli, keygen] { cli.action = [keygen] { return RunKeygen(*keygen); }; });

  AddArtifactPublishCommand(artifact, cli);
  AddArtifactPullCommand(artifact, cli);
}

}  // namespace ferry::cli
