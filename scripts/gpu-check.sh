#!/usr/bin/env bash
# The GPU device check (issue 16), in two steps, because the lent GPU machine has no apt and no
# network (and so none of ferry's build dependencies):
#
#   scripts/gpu-check.sh bundle       here, after ./scripts/build.sh: builds the gpu-labelled
#                                     tests and the GPU benchmarks and collects them, stripped,
#                                     with every shared
#                                     library they load (glibc and its loader included; never
#                                     the driver, which the machine provides) into
#                                     build/gpu-bundle/ (well under the 64 MiB that may travel)
#   build/gpu-bundle/run.sh OUT       on the GPU machine (the device tool's command, with
#                                     carry=["build/gpu-bundle"]): runs the GPU tests, then the
#                                     benchmarks, and writes OUT/<test>.log and
#                                     OUT/gpu_bench.jsonl; exits non-zero when a test failed
#
# The binaries run under the bundled loader, so the machine's own glibc version does not matter;
# libcuda.so.1 comes from the machine (its loader cache and LD_LIBRARY_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  bundle)
    tests=(gpu_test cuda_gpu_test cuda_device_test transfer_staging_gpu_test)
    benches=(gpu_bench gpu_checksum_bench transfer_bench)
    ninja -C build "${tests[@]}" "${benches[@]}"
    out=build/gpu-bundle
    rm -rf "$out"
    mkdir -p "$out/lib"
    bins=()
    for t in "${tests[@]}"; do bins+=("build/tests/$t"); done
    for b in "${benches[@]}"; do bins+=("build/bin/$b"); done
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
exit "$status"
RUN
    chmod +x "$out/run.sh"
    du -sh "$out"
    echo "run on the GPU machine: bash build/gpu-bundle/run.sh \$OUT (carry build/gpu-bundle)"
    ;;
  *)
    echo "usage: scripts/gpu-check.sh bundle   (then build/gpu-bundle/run.sh OUT on the GPU machine)" >&2
    exit 2
    ;;
esac
