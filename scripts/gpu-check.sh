#!/usr/bin/env bash
# The GPU device check (issue 16), in two steps, because the lent GPU machine has no apt and no
# network (and so none of ferry's build dependencies):
#
#   scripts/gpu-check.sh bundle       here, after ./scripts/build.sh: builds the gpu-labelled
#                                     tests, the GPU benchmarks and ferry-server and collects
#                                     them, stripped, with every shared library they load (glibc
#                                     and its loader included, with libdl, libpthread and librt
#                                     for the driver's libcuda.so.1; never the driver, which the
#                                     machine provides) into build/gpu-bundle/ (under the 64 MiB
#                                     that may travel)
#   build/gpu-bundle/run.sh OUT       on the GPU machine (the device tool's command, with
#                                     carry=["build/gpu-bundle"] and a timeout_s at least 60 s
#                                     above the budget): writes an environment probe, builds the
#                                     Python module in the background while the GPU tests run,
#                                     then runs the benchmarks alone, then two torch round trips
#                                     (the second with expandable segments). Each step runs under
#                                     `timeout`, its cap trimmed to what is left of
#                                     FERRY_GPU_BUDGET (default 270 s). Writes 8 files: OUT/gpu.txt
#                                     (probe, each step's command, cap and rc, the benchmarks'
#                                     stderr), OUT/<test>.log (4), OUT/gpu_bench.jsonl,
#                                     OUT/torch.log (module build, round trips, tails of their
#                                     server and source logs) and OUT/summary.txt (name, rc,
#                                     seconds per step); exits non-zero when a step failed, timed
#                                     out or did not run, a GPU test skipped, or a benchmark
#                                     skipped a workload
#
# The binaries run under the bundled loader, so the machine's own glibc version does not matter;
# libcuda.so.1 comes from the machine (its loader cache and LD_LIBRARY_PATH).
#
# ferry.torch with CUDA tensors runs on the machine's own Python (3.12 there, 3.11 here), which a
# module built here cannot load. So the bundle carries what building the module there needs
# (py/: the third-party headers the binding includes, the ferry code it calls as one shared
# library, pybind11's headers from PyPI, Python 3.12's headers for a Python without its own) and
# run.sh builds it there with the machine's compiler (g++, else c++ or clang++) (py/build.sh,
# about a minute), then runs bench/torch_roundtrip.py.
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
  # pybind11's headers, pinned, from PyPI: downloaded (not installed) by the pip of a throwaway
  # virtual environment, so Debian's Python is never touched.
  if ! { python3 -m venv "$tmp/venv" &&
      "$tmp/venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: -d "$tmp" "pybind11==$PYBIND11_VERSION"; }; then
    echo "gpu-check.sh: cannot download pybind11==$PYBIND11_VERSION from PyPI (the module for" \
         "the GPU machine's Python is built with it); check that PyPI is reachable" >&2
    exit 1
  fi
  python3 -m zipfile -e "$tmp"/pybind11-"$PYBIND11_VERSION"-*.whl "$tmp/wheel"
  cp -r "$tmp/wheel/pybind11/include" "$py/pybind11/"
  rm -rf "$tmp"
  # Python 3.12's headers (2 MiB), for a GPU machine whose Python has none (no python3-dev, and
  # no apt there): from a 3.12 that keeps pyconfig.h beside Python.h (pyenv's; Debian's splits it).
  local inc312=""
  for dir in ${FERRY_PY312_INCLUDE:-} /usr/local/include/python3.12 \
             "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/include/python3.12; do
    if [ -f "$dir/Python.h" ] && [ -f "$dir/pyconfig.h" ]; then inc312="$dir"; break; fi
  done
  if [ -n "$inc312" ]; then
    cp -r "$inc312" "$py/python3.12-include"
  else
    echo "gpu-check.sh: warning: no Python 3.12 headers found here (FERRY_PY312_INCLUDE," \
         "pyenv's 3.12); the module builds on the GPU machine only if its Python has its own" >&2
  fi
  sed -e "s|@DEFINES@|$defines|" -e "s|@PYBIND11_VERSION@|$PYBIND11_VERSION|" > "$py/build.sh" <<'BUILD'
#!/usr/bin/env bash
# Builds ferry's Python module for a Python other than the one ferry was built with (the GPU
# machine's 3.12), from python/src in the working tree and what `scripts/gpu-check.sh bundle`
# collected beside this script. Needs a C++20 compiler (CXX, else g++, c++ or clang++), the
# Python's headers (its own, else the bundle's python<X.Y>-include/) and pybind11 (the bundle's,
# else the Python's own).
#   build.sh DEST [PYTHON]   DEST/ferry/ becomes the package (python/ferry/*.py and the module)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
dest="${1:?usage: build.sh DEST [PYTHON]}"
python="${2:-python3}"
cxx="${CXX:-}"
if [ -z "$cxx" ]; then
  for c in g++ c++ clang++; do
    if command -v "$c" > /dev/null; then cxx="$c"; break; fi
  done
fi
if [ -z "$cxx" ] || ! command -v "$cxx" > /dev/null; then
  what="none of g++, c++, clang++ is on PATH"
  [ -z "${CXX:-}" ] || what="CXX=$CXX is not on PATH"
  echo "build.sh: no C++ compiler: $what; install one or set CXX" >&2
  exit 1
fi
echo "build.sh: compiler $cxx: $("$cxx" --version | head -1)"
version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
inc="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
suffix="$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
if [ ! -f "$inc/Python.h" ]; then
  if [ -f "$here/python$version-include/Python.h" ]; then
    echo "build.sh: $inc/Python.h is missing ($python has no development headers); using the" \
         "bundle's Python $version headers"
    inc="$here/python$version-include"
  else
    # shellcheck disable=SC2012  # names the bundle chose
    carried="$(cd "$here" && { ls -d python*-include 2> /dev/null || true; } | paste -sd ' ')"
    echo "build.sh: $inc/Python.h is missing: $python (Python $version) has no development" \
         "headers, and the bundle has none for $version (it carries: ${carried:-none});" \
         "install them (Debian/Ubuntu: python3-dev) or pass a Python that has them" >&2
    exit 1
  fi
fi
pybind="$here/pybind11/include"
if [ ! -f "$pybind/pybind11/pybind11.h" ]; then
  if pybind="$("$python" -c 'import pybind11; print(pybind11.get_include())' 2> /dev/null)" &&
      [ -f "$pybind/pybind11/pybind11.h" ]; then
    echo "build.sh: the bundle has no pybind11; using $python's ($pybind)"
  else
    echo "build.sh: no pybind11: neither the bundle ($here/pybind11/include) nor $python has" \
         "it; rebuild the bundle (scripts/gpu-check.sh bundle), or install pybind11==@PYBIND11_VERSION@" \
         "into a virtual environment of that Python" >&2
    exit 1
  fi
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
    -isystem "$here/include" -isystem "$pybind" -isystem "$inc" \
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
    # libcuda.so.1, which ferry loads from the machine, needs these besides libc; no binary here
    # links them (glibc 2.34 merged them into libc), but they must come from the bundled glibc.
    for lib in libdl.so.2 libpthread.so.0 librt.so.1; do
      cp -L "/lib/x86_64-linux-gnu/$lib" "$out/lib/"
    done
    cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# The GPU device check on the lent machine (see scripts/gpu-check.sh). Usage: run.sh OUT
#
# Every step runs under `timeout -k 5 CAP`, its cap trimmed to what is left of the budget
# (FERRY_GPU_BUDGET seconds, default 270; give the device call at least 60 s more), so a hang
# costs only its own figures; a step the budget cannot start is "not run (budget spent)" and
# fails the check. The module build starts first, in the background beside the GPU tests, and is
# waited for before the benchmarks (which then run alone). Writes 8 files into OUT:
#   gpu.txt          the environment probe, then each step's command, cap, rc and seconds, and
#                    the benchmarks' stderr
#   <test>.log       gpu_test, cuda_gpu_test, cuda_device_test, transfer_staging_gpu_test
#   gpu_bench.jsonl  the benchmarks' JSON lines, then the torch round trips'
#   torch.log        the module build, both torch round trips, the tails of their ferry-server
#                    and source logs
#   summary.txt      one line per step: name, rc, seconds, verdict
# Exits 1 when a step failed, timed out or did not run, a GPU test skipped, or a benchmark
# skipped a workload. FERRY_GPU_PYTHON: the Python with torch (default python3);
# GPU_BENCH_ARGS: more gpu_bench flags.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: run.sh OUT}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
budget="${FERRY_GPU_BUDGET:-270}"
case "$budget" in
  ""|*[!0-9]*)
    echo "run.sh: FERRY_GPU_BUDGET=$budget is not a whole number of seconds" >&2
    exit 2 ;;
esac
deadline=$((SECONDS + budget))
min_cap=5  # a step with less left than this is not started
python="${FERRY_GPU_PYTHON:-python3}"
run_log="$out/gpu.txt"
summary="$out/summary.txt"
bench_out="$out/gpu_bench.jsonl"
torch_log="$out/torch.log"
: > "$run_log"
: > "$bench_out"
: > "$torch_log"
printf '# step                     rc     secs  verdict (budget %ss)\n' "$budget" > "$summary"
exec 3>&1  # the console: notes go there and to gpu.txt, whatever a step redirects
scratch="$(mktemp -d "${TMPDIR:-/tmp}/ferry-gpu-check.XXXXXX")"

# note MESSAGE: a timestamped line in gpu.txt and on the console.
note() { printf '[run.sh %4ss] %s\n' "$SECONDS" "$*" | tee -a "$run_log" >&3; }

# record NAME RC SECONDS [WHY]: the step's summary line; a RC other than 0 ("-": not run) or a
# WHY fails the check.
record() {
  local why="${4:-}"
  [ "$2" != - ] || why="${why:-not run (budget spent)}"
  case "$2" in
    0) ;;
    124|137) why="${why:-timed out (rc $2)}" ;;
    *) why="${why:-rc $2}" ;;
  esac
  printf '%-26s %-6s %4s  %s\n' "$1" "$2" "$3" "${why:+FAIL: }${why:-ok}" >> "$summary"
}

# step NAME CAP STDOUT STDERR CMD...: runs CMD under `timeout -k 5 CAP`, CAP trimmed to the
# budget left, its output appended to STDOUT and STDERR, the command, cap and outcome noted in
# gpu.txt (and in STDERR). Sets step_rc (the exit status; 124 or 137: timed out; "-": not run)
# and step_s (seconds).
step() {
  local name="$1" cap="$2" stdout="$3" stderr="$4"
  shift 4
  local left=$((deadline - SECONDS)) t0=$SECONDS
  step_s=0
  if [ "$left" -lt "$min_cap" ]; then
    step_rc=-
    note "$name: not run (budget spent: ${left}s of ${budget}s left)"
    [ "$stderr" = "$run_log" ] || echo "run.sh: $name not run (budget spent)" >> "$stderr"
    return
  fi
  [ "$cap" -le "$left" ] || cap="$left"
  local shown="$*"
  shown="${shown//"$libs"/\$libs}"  # gpu.txt's probe shows its value
  note "$name: cap ${cap}s: $shown"
  [ "$stderr" = "$run_log" ] || echo "run.sh: $name, cap ${cap}s: $shown" >> "$stderr"
  timeout -k 5 "$cap" "$@" >> "$stdout" 2>> "$stderr"
  step_rc=$?
  step_s=$((SECONDS - t0))
  local what="rc $step_rc"
  case "$step_rc" in 124|137) what="timed out after ${cap}s (rc $step_rc)" ;; esac
  note "$name: $what, ${step_s}s"
  [ "$stderr" = "$run_log" ] || echo "run.sh: $name: $what, ${step_s}s" >> "$stderr"
}

loader="$here/lib/ld-linux-x86-64.so.2"
# A carried copy may lose the execute bit; where the bundle cannot be changed, run a copy.
chmod +x "$loader" 2>/dev/null
if [ ! -x "$loader" ]; then
  cp "$loader" "$scratch/" && chmod +x "$scratch/ld-linux-x86-64.so.2" &&
    loader="$scratch/ld-linux-x86-64.so.2"
fi
# The bundle's libraries first, then the machine's (for libcuda.so.1); no empty entry, which the
# loader would read as the current directory.
libs="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}:/usr/lib/x86_64-linux-gnu:/usr/lib64"
libs="$libs:/usr/local/nvidia/lib64:/usr/lib/wsl/lib"
# Source processes are started through the same loader (tests/gpu/gpu_source.cc).
export FERRY_GPU_LOADER="$loader" FERRY_GPU_LIBRARY_PATH="$libs"
export PYTHONUNBUFFERED=1

# ferry's module for this machine's Python (py/build.sh), in the background from the start.
pkg="$scratch/pkg"
(
  step module_build 150 "$torch_log" "$torch_log" bash "$here/py/build.sh" "$pkg" "$python"
  record module_build "$step_rc" "$step_s"
  [ "$step_rc" = 0 ]
) &
build_pid=$!

# The environment, for reading every figure below.
{
  echo "== run.sh: budget ${budget}s, bundle $here, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "== nvidia-smi"
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  timeout 20 nvidia-smi
  echo "== kernel $(uname -r)"
  echo "== hostname (and whether it resolves)"
  hostname
  timeout 10 getent hosts "$(hostname)" || echo "(does not resolve)"
  echo "== libcuda.so.1 in the loader cache"
  timeout 10 ldconfig -p | grep libcuda.so.1 || echo "(not in the loader cache)"
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH-(unset)}"
  echo "the binaries' library path: $libs"
  echo "== compilers"
  for c in g++ c++ clang++; do
    if command -v "$c" > /dev/null; then echo "$c: $("$c" --version | head -1)"
    else echo "$c: none"; fi
  done
  echo "== $python: $(command -v "$python") $("$python" --version 2>&1)"
  timeout 60 "$python" -c 'import torch; print("torch", torch.__version__, "cuda",
    torch.version.cuda, "available", torch.cuda.is_available(), "devices",
    torch.cuda.device_count())' ||
    echo "(torch probe failed)"
  inc="$(timeout 20 "$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  if [ -f "$inc/Python.h" ]; then echo "include $inc: Python.h present"
  else echo "include $inc: Python.h MISSING (py/build.sh falls back to the bundle's headers)"; fi
  echo "== nproc $(nproc)"
  free -g
} >> "$run_log" 2>&1

# The GPU tests; a skipped test fails the check (it has no GPU to test).
for t in gpu_test:60 cuda_gpu_test:45 cuda_device_test:20 transfer_staging_gpu_test:45; do
  name="${t%%:*}"
  log="$out/$name.log"
  : > "$log"
  step "$name" "${t##*:}" "$log" "$log" \
    "$loader" --library-path "$libs" "$here/$name" --gtest_color=no
  why=""
  if [ "$step_rc" != - ] && grep -q '^\[  SKIPPED \]' "$log"; then
    why="tests skipped"
    note "$name: FAIL: a test skipped (see $name.log); the check needs every GPU test to run"
    echo "run.sh: $name FAILS: a test skipped; the check needs every GPU test to run" >> "$log"
  fi
  record "$name" "$step_rc" "$step_s" "$why"
done

note "waiting for module_build"
wait "$build_pid"
build_rc=$?

# The benchmarks, alone on the machine: stdout (JSON lines) to gpu_bench.jsonl, stderr to
# gpu.txt. A workload that skips fails the check (every figure is wanted).
bench() {
  local name="$1" cap="$2" before
  shift 2
  before="$(wc -l < "$bench_out")"
  step "$name" "$cap" "$bench_out" "$run_log" "$loader" --library-path "$libs" "$here/$name" "$@"
  local why=""
  if tail -n +"$((before + 1))" "$bench_out" | grep -q '"skipped"'; then
    why="a workload skipped"
    note "$name: FAIL: a workload printed \"skipped\" (gpu_bench.jsonl)"
  fi
  record "$name" "$step_rc" "$step_s" "$why"
}
# shellcheck disable=SC2086  # GPU_BENCH_ARGS is a list of flags
bench gpu_bench 90 ${GPU_BENCH_ARGS:-}
bench gpu_checksum_bench 40 --workload all --bytes 4294967296
# The raw socket pair beside ferry's TCP on this machine: the staged pull's wire baseline.
bench transfer_bench 30 --transport tcp --bytes 1073741824 --repeat 3

# ferry.torch with CUDA tensors on this machine's Python, loopback only: 2 GiB in 200 tensors,
# then 512 MiB in 48 with expandable segments in both processes. The tails of each round trip's
# ferry-server and source logs follow it in torch.log.
# roundtrip NAME CAP [VAR=VALUE...] -- [torch_roundtrip.py flags...]
roundtrip() {
  local name="$1" cap="$2" work="$scratch/$1" vars=()
  shift 2
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do vars+=("$1"); shift; done
  shift
  if [ "$build_rc" != 0 ]; then
    note "$name: not run (module_build failed: see torch.log)"
    record "$name" - 0 "not run (module_build failed)"
    return
  fi
  step "$name" "$cap" "$torch_log" "$torch_log" \
    env PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}" ${vars[@]+"${vars[@]}"} \
    "$python" "$here/../../bench/torch_roundtrip.py" --server-bin "$here/ferry-server" \
    --loader "$loader" --library-path "$libs" --device cuda --work-dir "$work" "$@"
  record "$name" "$step_rc" "$step_s"
  for f in server.log source.log; do
    [ -f "$work/$f" ] || continue
    echo "==== run.sh: $name: the last 20 kB of $f"
    tail -c 20000 "$work/$f"
    echo
  done >> "$torch_log"
}
roundtrip torch 120 --
roundtrip torch_expandable 60 PYTORCH_ALLOC_CONF=expandable_segments:True \
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True -- --bytes 512MiB --tensors 48 --repeat 1
grep '^{"workload": "torch_roundtrip"' "$torch_log" >> "$bench_out"

note "done in ${SECONDS}s"
cat "$summary" >&3
rm -rf "$scratch"
if grep -v '^#' "$summary" | grep -qv '  ok$'; then
  note "FAILED: see summary.txt"
  exit 1
fi
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
