#!/usr/bin/env bash
# Creates (or refreshes) the virtual environment the interop tests run in and installs
# python/requirements-interop.txt into it, each package with --no-deps (every dependency the
# tests need is pinned in that file). Debian's packages stay visible (--system-site-packages:
# numpy, torch, pytest), and Debian's own Python is never changed.
#
#   scripts/interop-venv.sh VENV_DIR [REQUIREMENTS]
#
# Idempotent and quick when nothing changed: the venv records the SHA-256 of the requirements it
# was built from and is rebuilt only when they differ. ctest runs this as the setup of the
# interop tests (fixture interop_venv), so a fresh machine installs what it needs by itself.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:?usage: interop-venv.sh VENV_DIR [REQUIREMENTS]}"
req="${2:-$here/python/requirements-interop.txt}"
python="${FERRY_VENV_BASE_PYTHON:-/usr/bin/python3}"

[ -f "$req" ] || { echo "interop-venv: no requirements file $req" >&2; exit 1; }
want="$(sha256sum "$req" | cut -d' ' -f1)"
stamp="$venv/.ferry-requirements.sha256"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "interop-venv: $venv is up to date with $req"
  exit 0
fi

echo "interop-venv: building $venv from $req"
rm -rf "$venv"
"$python" -m venv --system-site-packages "$venv"
if ! "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --no-deps \
      --require-virtualenv -r "$req"; then
  echo "interop-venv: 'pip install --no-deps -r $req' failed (see above); the interop tests" \
       "need PyPI. Retry, or run this script by hand: $0 $venv" >&2
  rm -rf "$venv"
  exit 1
fi
echo "$want" >"$stamp"
echo "interop-venv: ready: $venv/bin/python"
