#!/usr/bin/env bash
# Creates (or reuses) the virtual environment the NIXL/TransferEngine interop tests
# (tests/python/wheels) and bench/nixl_bench.py run in:
# Debian's Python with --system-site-packages, plus the pinned PyPI packages of
# python/requirements-wheels.txt (NIXL, Mooncake's TransferEngine, ModelExpress 0.7.0) under
# python/constraints-wheels.txt. Never installs into Debian's Python.
#
#   scripts/wheels-venv.sh [VENV_DIR]        default: build/wheels-venv
#
# Idempotent: a venv whose stamp matches both files is reused as is (seconds); otherwise it is
# rebuilt from scratch. Needs PyPI (about 3 GiB of wheels the first time; pip's cache after).
# Prints the venv's python on the last line.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/build/wheels-venv}"
req="$root/python/requirements-wheels.txt"
con="$root/python/constraints-wheels.txt"
python=/usr/bin/python3

stamp="$(cat "$req" "$con" | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.ferry-stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$venv/bin/python"
  exit 0
fi

if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "wheels-venv: $python cannot create a virtual environment; apt-get install python3-venv" >&2
  exit 1
fi
rm -rf "$venv"
"$python" -m venv --system-site-packages "$venv"
if ! "$venv/bin/pip" install --disable-pip-version-check --no-input -q \
    -r "$req" -c "$con" >&2; then
  echo "wheels-venv: pip could not install $req into $venv (is PyPI reachable?)" >&2
  exit 1
fi
# What the tests need from it, checked once here so a broken wheel is named now.
"$venv/bin/python" - <<'PY' >&2
import importlib
for module in ("nixl._api", "mooncake.engine", "modelexpress.nixl_transfer", "torch"):
    importlib.import_module(module)
PY
echo "$stamp" > "$venv/.ferry-stamp"
echo "$venv/bin/python"
