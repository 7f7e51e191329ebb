#!/usr/bin/env bash
# Configures and builds ferry in build/ (CMake preset "default": RelWithDebInfo, Ninja).
# Extra arguments are passed to ninja (targets, -j).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f build/build.ninja ]; then
  cmake --preset default >/dev/null
fi
ninja -C build "$@"
