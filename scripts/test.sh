#!/usr/bin/env bash
# Runs every test: installs dependencies, builds, checks formatting, runs ctest (unit,
# conformance, integration, Python interop, benchmark smoke runs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh -j"$(nproc)"

echo "== clang-format (Google style) =="
mapfile -t files < <(git ls-files '*.cc' '*.h' 2>/dev/null || find include src bench tests -name '*.cc' -o -name '*.h')
bad=()
for f in "${files[@]}"; do
  clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ ${#bad[@]} -gt 0 ]; then
  echo "clang-format: these files need 'clang-format -i': ${bad[*]}" >&2
  exit 1
fi
echo "clang-format: ${#files[@]} files clean"

echo "== ctest =="
ctest --test-dir build --output-on-failure -j2 "$@"
