#!/usr/bin/env bash
# Builds abseil with ThreadSanitizer for the "tsan" preset: usage scripts/tsan-absl.sh PREFIX.
#
# Debian's libabsl is compiled without TSan, so TSan cannot see absl::Mutex's synchronization
# and reports every access it guards as a race. This builds the same abseil release Debian ships
# (20220623.1, from Debian's own archive, checksum pinned) with Debian's options.h (the inline
# namespace "debian3" and the non-std types), so every symbol matches the system library's:
# the test programs link it statically, export it, and Debian's libgrpc++ binds to it too.
# Idempotent: does nothing when PREFIX already holds this build.
set -euo pipefail
prefix=${1:?usage: scripts/tsan-absl.sh PREFIX (e.g. build-tsan-absl)}
version=20220623.1
sha256=abfe2897f3a30edaa74bc34365afe3c2a3cd012091a97dc7e008f7016adcd5fe
url=http://deb.debian.org/debian/pool/main/a/abseil/abseil_${version}.orig.tar.gz
stamp="$prefix/.ferry-tsan-absl-$version"
[ -f "$stamp" ] && exit 0

installed=$(dpkg-query -W -f='${Version}' libabsl-dev 2>/dev/null || true)
case "$installed" in
  "$version"-*) ;;
  *) echo "tsan-absl: Debian's libabsl-dev is '${installed:-not installed}', expected $version-*;" \
          "install it with scripts/install-deps.sh, or update version and sha256 here" >&2
     exit 1 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! curl -fsSL --retry 3 -o "$work/absl.tar.gz" "$url"; then
  echo "tsan-absl: could not download $url; check that deb.debian.org is reachable" \
       "(FERRY_SKIP_SANITIZERS=1 skips the sanitizer stages of scripts/test.sh)" >&2
  exit 1
fi
if ! echo "$sha256  $work/absl.tar.gz" | sha256sum -c --quiet - >/dev/null 2>&1; then
  echo "tsan-absl: $url does not have the pinned SHA-256 $sha256; not building it" >&2
  exit 1
fi
tar -xzf "$work/absl.tar.gz" -C "$work"
src="$work/abseil-$version"
cp /usr/include/absl/base/options.h "$src/absl/base/options.h"
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++ -DCMAKE_CXX_STANDARD=17 \
  -DABSL_PROPAGATE_CXX_STD=ON -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DBUILD_TESTING=OFF \
  -DCMAKE_C_FLAGS="-fsanitize=thread" -DCMAKE_CXX_FLAGS="-fsanitize=thread" \
  -DCMAKE_INSTALL_PREFIX="$prefix" >/dev/null
ninja -C "$work/build" install >/dev/null
touch "$stamp"
echo "tsan-absl: abseil $version with ThreadSanitizer in $prefix"
