#!/usr/bin/env bash
# The device check's Python path, here, with Debian's Python standing in for the GPU machine's:
# bundles BUILD_DIR (scripts/gpu-check.sh bundle), builds ferry's module from the bundle alone
# (py/build.sh: the bundle's headers, libferry_pycore.so and pybind11, this Python's headers),
# and runs bench/torch_roundtrip.py on CPU tensors with the bundled ferry-server under the
# bundled loader. Fails when any step does or a tensor differs.
#   bundle_python_test.sh BUILD_DIR_NAME WORK_DIR
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:?usage: bundle_python_test.sh BUILD_DIR_NAME WORK_DIR}"
work="${2:?usage: bundle_python_test.sh BUILD_DIR_NAME WORK_DIR}"
python=/usr/bin/python3
rm -rf "$work"
mkdir -p "$work"
FERRY_BUILD_DIR="$build" "$repo/scripts/gpu-check.sh" bundle
bundle="$repo/$build/gpu-bundle"
bash "$bundle/py/build.sh" "$work/pkg" "$python"
# The module must load the bundle's libraries, not this machine's (the GPU machine has none).
if ldd "$work"/pkg/ferry/_ferry*.so | grep '=> /' | grep -v "$bundle/py/lib" |
    grep -Ev 'lib(c|m|stdc\+\+|gcc_s)\.so'; then
  echo "bundle_python_test: the module above resolves libraries outside the bundle" >&2
  exit 1
fi
PYTHONPATH="$work/pkg" "$python" "$repo/bench/torch_roundtrip.py" \
  --server-bin "$bundle/ferry-server" --loader "$bundle/lib/ld-linux-x86-64.so.2" \
  --library-path "$bundle/lib" --device cpu --bytes 64MiB --tensors 24 --repeat 1 \
  > "$work/roundtrip.jsonl"
cat "$work/roundtrip.jsonl"
# One line per transport, each with every tensor equal.
test "$(grep -c '"equal": true' "$work/roundtrip.jsonl")" = 2
