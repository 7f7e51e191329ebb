#!/usr/bin/env bash
# The loader flow on one machine: a ferry-server, a source replica that loaded the checkpoint,
# and a target replica that pulls the post-processed weights from it, then the same target with
# the source gone, falling back to the checkpoint. Exit 0 when both targets produce the
# source's output digest.
#
#   examples/loader_flow/run.sh          # from the repository root, after ./scripts/build.sh
#
# FERRY_BUILD_DIR: the build folder (default: build, relative to the repository root).
# PYTHON: the interpreter the module was built for (default: /usr/bin/python3).
set -euo pipefail

usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
}
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="${FERRY_BUILD_DIR:-build}"
[[ "$build" = /* ]] || build="$root/$build"
python="${PYTHON:-/usr/bin/python3}"

for f in "$build/bin/ferry-server" "$build/bin/ferry"; do
  [[ -x "$f" ]] || { echo "run.sh: $f is missing; run ./scripts/build.sh first" >&2; exit 1; }
done
if ! compgen -G "$build/python/ferry/_ferry*.so" >/dev/null; then
  echo "run.sh: $build/python/ferry/_ferry*.so is missing; run ./scripts/build.sh" \
       "(or ninja -C $build ferry_python) first" >&2
  exit 1
fi
export PYTHONPATH="$build/python${PYTHONPATH:+:$PYTHONPATH}"
export FERRY_LOG_LEVEL="${FERRY_LOG_LEVEL:-warn}"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ferry-loader-flow.XXXXXX")"
server_pid=""
source_pid=""
cleanup() {
  local rc=$?
  for pid in $source_pid $server_pid; do  # the source first: it marks itself STALE
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ $rc -ne 0 ]]; then
    for log in "$tmp"/*.log; do
      [[ -s "$log" ]] && { echo "--- $(basename "$log")" >&2; tail -n 20 "$log" >&2; }
    done
  fi
  rm -rf "$tmp"
  exit $rc
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT
trap 'echo "run.sh: terminated" >&2; exit 143' TERM

# wait_for FILE PID WHAT: waits up to 60 s for FILE, failing early if PID exits.
wait_for() {
  local i
  for ((i = 0; i < 600; i++)); do
    [[ -s "$1" ]] && return 0
    if ! kill -0 "$2" 2>/dev/null; then
      echo "run.sh: $3 exited before it was ready" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "run.sh: $3 not ready after 60 s" >&2
  return 1
}

# json_field FILE KEY: one field of a JSON object.
json_field() {
  "$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

identity=(--model tiny-llama --dtype float32)

echo "== ferry-server (memory store, loopback)"
"$build/bin/ferry-server" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --ready-file "$tmp/server.json" --store memory >"$tmp/server.log" 2>&1 &
server_pid=$!
wait_for "$tmp/server.json" "$server_pid" ferry-server
server="127.0.0.1:$(json_field "$tmp/server.json" grpc_port)"
echo "   listening on $server"

echo "== checkpoint"
"$python" "$here/make_checkpoint.py" "$tmp/tiny-llama.pt"

echo "== source: load the checkpoint, post-process, publish"
"$python" "$here/source.py" --checkpoint "$tmp/tiny-llama.pt" --server "$server" \
  "${identity[@]}" --ready-file "$tmp/source.json" --worker-listen 127.0.0.1:0 \
  --data-listen 127.0.0.1:0 >"$tmp/source.log" 2>&1 &
source_pid=$!
wait_for "$tmp/source.json" "$source_pid" source.py
source_digest="$(json_field "$tmp/source.json" digest)"
echo "   READY as $(json_field "$tmp/source.json" mx_source_id)/$(json_field "$tmp/source.json" \
  worker_id) at $(json_field "$tmp/source.json" endpoint); output digest $source_digest"

check() {  # check JSON EXPECTED_WEIGHTS_FROM
  local from digest
  from="$(json_field "$1" weights_from)"
  digest="$(json_field "$1" digest)"
  if [[ "$from" != "$2" ]]; then
    echo "FAIL: weights came from '$from', expected '$2'" \
         "($(json_field "$1" outcome): $(json_field "$1" message))" >&2
    exit 1
  fi
  if [[ "$digest" != "$source_digest" ]]; then
    echo "FAIL: output digest $digest differs from the source's $source_digest" >&2
    exit 1
  fi
  echo "   OK: weights from $from, output digest $digest equals the source's"
}

echo "== target: dummy init, post-process, pull_into"
"$python" "$here/target.py" --checkpoint "$tmp/tiny-llama.pt" --server "$server" \
  "${identity[@]}" --json >"$tmp/target1.json" 2>"$tmp/target1.log"
sed 's/^/   /' "$tmp/target1.log"
check "$tmp/target1.json" ferry

echo "== source stopped (SIGTERM: marked STALE)"
kill -TERM "$source_pid"
source_rc=0
wait "$source_pid" || source_rc=$?
source_pid=""
if [[ $source_rc -ne 0 ]]; then
  echo "FAIL: source.py exited $source_rc after SIGTERM" >&2
  tail -n 20 "$tmp/source.log" >&2
  exit 1
fi
echo "   source.py exited 0"

echo "== target again: no source, falls back to the checkpoint"
"$python" "$here/target.py" --checkpoint "$tmp/tiny-llama.pt" --server "$server" \
  "${identity[@]}" --json >"$tmp/target2.json" 2>"$tmp/target2.log"
sed 's/^/   /' "$tmp/target2.log"
check "$tmp/target2.json" checkpoint
if [[ "$(json_field "$tmp/target2.json" outcome)" != no_source ]]; then
  echo "FAIL: expected outcome no_source, got $(json_field "$tmp/target2.json" outcome)" >&2
  exit 1
fi

echo "PASS: pulled weights and checkpoint fallback both match the source's output"
