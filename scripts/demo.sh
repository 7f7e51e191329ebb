#!/usr/bin/env bash
# ferry's main job, end to end on one machine: installs dependencies, builds, then starts an
# embedded ferry-server and shows a source publishing, a target discovering it and fetching
# its metadata, and the source leaving.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh ferry ferry-server
exec ./build/bin/ferry demo "$@"
