#!/usr/bin/env bash
# The GPU device check (issue 16), in two steps, because the lent GPU machine has no apt and no
# network (and so none of ferry's build dependencies):
#
#   scripts/gpu-check.sh bundle       here, after ./scripts/build.sh: builds the gpu-labelled
#                                     tests, the GPU benchmarks and ferry-server and collects
#                                     them, stripped, with every shared library they load (glibc
#                                     and its loader included; never the driver, which the
#                                     machine provides) into build/gpu-bundle/ (50 MiB: under the
#                                     64 MiB that may travel)
#   build/gpu-bundle/run.sh OUT       on the GPU machine (the device tool's command, with
#                                     carry=["build/gpu-bundle"]): runs the GPU tests, then the
#                                     benchmarks, then the torch round trip, and writes
#                                     OUT/<test>.log, OUT/torch.log and OUT/gpu_bench.jsonl;
#                                     exits non-zero when a test or the round trip failed
#
# The binaries run under the bundled loader, so the machine's own glibc version does not matter;
# libcuda.so.1 comes from the machine (its loader cache and LD_LIBRARY_PATH).
#
# ferry.torch with CUDA tensors runs on the machine's own Python (3.12 there, 3.11 here), which a
# module built here cannot load. So the bundle carries what building the module there needs
# (py/: the third-party headers the binding includes, the ferry code it calls as one shared
# library, pybind11's headers from PyPI) and run.sh builds it there with the machine's compiler
# and Python headers (py/build.sh, about a minute), then runs bench/torch_roundtrip.py.
set -euo pipefail
cd "$(dirname "$0")/.."

# The build directory bundled, relative to the repository root and directly under it (the
# bundle finds the repository as ../.. from itself): FERRY_BUILD_DIR, default build.
build="${FERRY_BUILD_DIR:-build}"
case "$build" in
  */*|.|..|"") echo "gpu-check.sh: FERRY_BUILD_DIR=$build must name a directory directly under the repository root" >&2; exit 2 ;;
esac

# pybind11 for the module built on the GPU machine: a release that supports Python 3.12.
PYBIND11_VERSION=2.13.6

# The glibc and GCC runtime family: the GPU machine's Python has its own, and a module loaded
# into it must use those (the bundled ones serve only the binaries run under the bundled loader).
is_system_lib() {
  case "$1" in
    ld-linux*|libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libstdc++.so*|libgcc_s.so*|linux-vdso*) return 0 ;;
  esac
  return 1
}

# Fills $1/py/ (see the header) and writes $1/py/build.sh.
bundle_python() {
  local out="$1"
  local py="$out/py"
  local tmp
  tmp="$(mktemp -d)"
  mkdir -p "$py/include" "$py/lib" "$py/pybind11"
  # The module's link inputs, from the build that made the module for this machine's Python.
  local link
  link="$(grep -A4 '^build python/ferry/_ferry' "$build/build.ninja" | sed -n 's/^ *LINK_LIBRARIES = //p')"
  local archives=() shared=()
  for item in $link; do
    case "$item" in
      *.a) archives+=("$build/$item") ;;
      *) shared+=("$item") ;;
    esac
  done
  # The binding's -D flags (one source: the compile database).
  local defines
  defines="$(python3 - "$build/compile_commands.json" <<'PY'
import json, shlex, sys
for c in json.load(open(sys.argv[1])):
    if c["file"].endswith("python/src/module.cc"):
        print(" ".join(a for a in shlex.split(c["command"])
                       if a.startswith("-D") and not a.endswith("_EXPORTS")))
        break
PY
)"
  # libferry_pycore.so: the ferry code the binding's objects call (their undefined symbols that
  # ferry's archives define), and what that code calls in turn.
  local objs=("$build"/python/CMakeFiles/ferry_python_ext.dir/src/*.o)
  nm -u "${objs[@]}" | awk 'NF == 2 {print $2}' | sort -u > "$tmp/wanted"
  nm --defined-only "${archives[@]}" 2>/dev/null | awk 'NF == 3 && $2 ~ /[A-Z]/ {print $3}' |
    sort -u > "$tmp/defined"
  comm -12 "$tmp/wanted" "$tmp/defined" | sed 's/^/-Wl,-u,/' > "$tmp/undefined"
  g++ -shared -o "$py/lib/libferry_pycore.so" -Wl,-soname,libferry_pycore.so \
    @"$tmp/undefined" -Wl,--start-group "${archives[@]}" -Wl,--end-group "${shared[@]}"
  strip --strip-unneeded "$py/lib/libferry_pycore.so"
  # The shared libraries it and the binding need, beside the binaries' (lib/), linked from py/lib
  # by name; never the glibc family.
  ldd "$py/lib/libferry_pycore.so" | awk '/=>/ {print $3}' | while read -r lib; do
    local name
    name="$(basename "$lib")"
    is_system_lib "$name" && continue
    [ -f "$out/lib/$name" ] || cp -L "$lib" "$out/lib/"
    ln -sf "../../lib/$name" "$py/lib/$name"
  done
  # Headers: each /usr/include directory the binding's sources reach, whole (another compiler
  # may take other branches inside them), and the generated protobuf headers.
  local cflags=(-std=c++20 $defines -Iinclude -Isrc -isystem "$build/proto/gen"
                -isystem "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')")
  for src in python/src/*.cc; do g++ "${cflags[@]}" -M "$src"; done | tr ' \\' '\n\n' |
    sed -n 's|^/usr/include/\([^/]*\)/.*|\1|p' | sort -u | while read -r dir; do
      case "$dir" in
        c++|x86_64-linux-gnu|linux|asm|asm-generic|python3*|pybind11|sys|bits|gnu) continue ;;
      esac
      cp -r "/usr/include/$dir" "$py/include/"
    done
  (cd "$build/proto/gen" && find . -name '*.h' -exec cp --parents {} "../../../$py/include/" \;)
  # pybind11's headers, pinned, from PyPI.
  if ! python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" \
      "pybind11==$PYBIND11_VERSION"; then
    echo "gpu-check.sh: cannot download pybind11==$PYBIND11_VERSION from PyPI (the module for" \
         "the GPU machine's Python is built with it); check that PyPI is reachable" >&2
    exit 1
  fi
  python3 -m zipfile -e "$tmp"/pybind11-"$PYBIND11_VERSION"-*.whl "$tmp/wheel"
  cp -r "$tmp/wheel/pybind11/include" "$py/pybind11/"
  rm -rf "$tmp"
  sed "s|@DEFINES@|$defines|" > "$py/build.sh" <<'BUILD'
#!/usr/bin/env bash
# Builds ferry's Python module for a Python other than the one ferry was built with (the GPU
# machine's 3.12), from python/src in the working tree and what `scripts/gpu-check.sh bundle`
# collected beside this script. Needs a C++20 compiler and the Python's development headers.
#   build.sh DEST [PYTHON]   DEST/ferry/ becomes the package (python/ferry/*.py and the module)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
dest="${1:?usage: build.sh DEST [PYTHON]}"
python="${2:-python3}"
cxx="${CXX:-g++}"
inc="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
suffix="$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
if [ ! -f "$inc/Python.h" ]; then
  echo "build.sh: $inc/Python.h is missing: $python has no development headers; install" \
       "them (Debian/Ubuntu: python3-dev) or pass a Python that has them" >&2
  exit 1
fi
mkdir -p "$dest/ferry" "$dest/obj"
cp "$repo"/python/ferry/*.py "$dest/ferry/"
objs=()
pids=()
for src in "$repo"/python/src/*.cc; do
  obj="$dest/obj/$(basename "$src" .cc).o"
  objs+=("$obj")
  # -include cstdint: abseil 20220623's headers rely on it arriving indirectly, which GCC 13's
  # standard headers no longer do.
  "$cxx" -std=c++20 -O2 -fPIC -fvisibility=hidden -pthread -include cstdint \
    -Wno-deprecated-declarations @DEFINES@ -I"$repo/include" -I"$repo/src" \
    -isystem "$here/include" -isystem "$here/pybind11/include" -isystem "$inc" \
    -c "$src" -o "$obj" &
  pids+=("$!")
done
for pid in "${pids[@]}"; do wait "$pid"; done
# DT_RPATH (--disable-new-dtags), not DT_RUNPATH: it also applies to the libraries those
# libraries load, which the GPU machine does not have anywhere else.
"$cxx" -shared -o "$dest/ferry/_ferry$suffix" "${objs[@]}" -Wl,--as-needed "$here"/lib/*.so* \
  -Wl,--disable-new-dtags -Wl,-rpath,"$here/lib" -pthread
PYTHONPATH="$dest" "$python" -c 'import sys, ferry; print("ferry module built for Python",
  sys.version.split()[0], "at", ferry._ferry.__file__)'
BUILD
  chmod +x "$py/build.sh"
}

case "${1:-}" in
  bundle)
    tests=(gpu_test cuda_gpu_test cuda_device_test transfer_staging_gpu_test)
    benches=(gpu_bench gpu_checksum_bench transfer_bench ferry-server)
    ninja -C "$build" "${tests[@]}" "${benches[@]}" ferry_python
    out="$build/gpu-bundle"
    rm -rf "$out"
    mkdir -p "$out/lib"
    bins=()
    for t in "${tests[@]}"; do bins+=("$build/tests/$t"); done
    for b in "${benches[@]}"; do bins+=("$build/bin/$b"); done
    for bin in "${bins[@]}"; do
      cp "$bin" "$out/"
      strip "$out/$(basename "$bin")"
      ldd "$bin" | awk '/=>/ {print $3} /ld-linux/ {print $1}' | while read -r lib; do
        [ -f "$lib" ] && cp -L "$lib" "$out/lib/"
      done
    done
    cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the bundled GPU tests and benchmark (see scripts/gpu-check.sh). Usage: run.sh OUT
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: run.sh OUT}"
mkdir -p "$out"
loader="$here/lib/ld-linux-x86-64.so.2"
# The bundle's libraries first, then the machine's (for libcuda.so.1).
libs="$here/lib:${LD_LIBRARY_PATH:-}:/usr/lib/x86_64-linux-gnu:/usr/lib64:/usr/local/nvidia/lib64:/usr/lib/wsl/lib"
# Source processes are started through the same loader (tests/gpu/gpu_source.cc).
export FERRY_GPU_LOADER="$loader" FERRY_GPU_LIBRARY_PATH="$libs"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1
status=0
for t in gpu_test cuda_gpu_test cuda_device_test transfer_staging_gpu_test; do
  "$loader" --library-path "$libs" "$here/$t" --gtest_color=no 2>&1 | tee "$out/$t.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
done
{
  "$loader" --library-path "$libs" "$here/gpu_bench" ${GPU_BENCH_ARGS:-}
  "$loader" --library-path "$libs" "$here/gpu_checksum_bench" --workload all --bytes 4294967296
  # The raw socket pair beside ferry's TCP on this machine: the staged pull's wire baseline.
  "$loader" --library-path "$libs" "$here/transfer_bench" --transport tcp --bytes 1073741824 --repeat 3
} 2>&1 | tee "$out/gpu_bench.jsonl"
# ferry.torch with CUDA tensors on this machine's Python: the module is built here first.
{
  bash "$here/py/build.sh" /tmp/ferry-py python3 &&
    PYTHONPATH=/tmp/ferry-py python3 "$here/../../bench/torch_roundtrip.py" \
      --server-bin "$here/ferry-server" --loader "$loader" --library-path "$libs" --device cuda
} > "$out/torch.log" 2>&1
torch_status=$?
cat "$out/torch.log"
grep '^{' "$out/torch.log" >> "$out/gpu_bench.jsonl" || true
[ "$torch_status" = 0 ] || status=1
exit "$status"
RUN
    chmod +x "$out/run.sh"
    bundle_python "$out"
    du -sh "$out"
    echo "run on the GPU machine: bash $out/run.sh \$OUT (carry $out)"
    ;;
  *)
    echo "usage: scripts/gpu-check.sh bundle   (then build/gpu-bundle/run.sh OUT on the GPU machine)" >&2
    exit 2
    ;;
esac
