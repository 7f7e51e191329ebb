// Flags shared by the `ferry artifact` subcommands: the cache kind and the artifact identity
// (contract section 10.3).
#ifndef FERRY_CLI_ARTIFACT_FLAGS_H_
#define FERRY_CLI_ARTIFACT_FLAGS_H_

#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "artifacts/kinds.h"
#include "cli/cli.h"
#include "cli/p2p_flags.h"
#include "ferry/source_identity.h"
#include "ferry/status.h"
#include "model_express/p2p.pb.h"

namespace ferry::cli {

using artifacts::ArtifactKind;
using artifacts::ArtifactKindNames;

// artifacts::ParseArtifactKind, its error naming --kind.
StatusOr<ArtifactKind> ParseArtifactKind(const std::string& name);

struct ArtifactIdentityFlags {
  IdentityFlags base;  // --model ... (mx_version stays empty for artifacts, as ModelExpress)
  std::string kind;
  artifacts::ArtifactCacheFields cache;  // --framework-version, --torch-version, ...
};

// --kind (required) and the identity flags, with the cache fields --framework-version,
// --torch-version, --cuda-version, --triton-version, --gpu-arch, --compile-config-digest.
void AddArtifactIdentityFlags(CLI::App* cmd, ArtifactIdentityFlags& flags);

// The artifact identity: the weights identity of the flags with the kind's mx_source_type and
// the cache fields. InvalidArgument naming the flag for a bad value.
StatusOr<SourceIdentity> BuildArtifactIdentity(const ArtifactIdentityFlags& flags);

// The chunk size: --chunk-size when given, else FERRY_ARTIFACT_CHUNK_SIZE (a byte size), else
// MX_ARTIFACT_TRANSFER_CHUNK_SIZE with ModelExpress's rule (not an integer or <= 0: 64 MiB with
// a warning), else 64 MiB. InvalidArgument naming the source outside 1 B..4 GiB.
StatusOr<int64_t> ResolveChunkSize(const std::string& flag);

void AddArtifactPublishCommand(CLI::App* artifact, Cli& cli);
void AddArtifactPullCommand(CLI::App* artifact, Cli& cli);

}  // namespace ferry::cli

#endif  // FERRY_CLI_ARTIFACT_FLAGS_H_
