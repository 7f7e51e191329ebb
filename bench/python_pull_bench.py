#!/usr/bin/env python3
"""python_pull_bench: pulling weights from Python into torch tensors (ferry.torch.pull_into),
against the C++ pull of the same bytes (`ferry pull`) and a memcpy, all in the same run.

Setup (once): a real `ferry-server` on loopback (memory store), a Llama-shaped bf16 safetensors
model of --size (random bytes; the shape rule of src/weights/llama_model.cc) in a temp directory
(/dev/shm when it has room), and a `ferry publish FILE --transport auto` child serving it.

Then --repeat times, for each transport of --transports in turn (so the measurements alternate):

  memcpy   baseline: one single-threaded copy (numpy.copyto) of the model's byte count between
           two pre-faulted buffers (allocated for it and freed after it). gbps = bytes /
           seconds; the summary's ratios use the best copy of the run (as pull_bench does), and
           it also gives the median.
  prefault what the C++ pull spends preparing its destination, measured alone: mmap of the
           model's size with MAP_POPULATE (as PullWeights does), then munmap. Context for the
           C++ setup time only (page faults vary a lot on a VM).
  cpp      `ferry pull --transport T -o OUT --json` in a child process. Its JSON `seconds` is
           PullWeights: list sources, GetMetadata, GetTransferInfo, prepare the destination
           (mmap MAP_POPULATE of the whole model: allocation and page faults), connect, transfer,
           verify (xxh3-64 per tensor). It excludes the process start, the client and engine
           creation and writing OUT. OUT is compared with the model file's tensor bytes the
           first time per transport, then deleted.
  python   ferry.torch.pull_into(tensors, {"model_name": ..., "dtype": "bfloat16"},
           server=ADDR, transport=T) into tensors allocated and pre-faulted once, before any
           timing, and zeroed (untimed) before each pull. Two layouts:
             tensors  one torch.empty per tensor (one storage each: one region and one read
                      per tensor)
             arena    every tensor a view into one bf16 storage, in the file's order (one
                      region; the reads coalesce into one)
           report.seconds is the same PullWeights span as the C++ `seconds` minus the
           destination preparation, plus registering the tensors' storages with the engine;
           `wall` is time.perf_counter() around the whole pull_into call (also client and
           engine creation and teardown, the per-tensor checks in Python). After every pull the
           tensors are compared byte for byte with the model file.

gbps is always bytes / the named seconds (10^9 bytes per second). The summary gives per
transport and layout the median GB/s of each, python / cpp ratios and ratios to memcpy, for
the whole pull and for the transfer alone (the like-for-like data path: both read into
memory faulted in before the transfer clock starts).
Exits 1 if any pull fails or any byte differs.

Output: with --json one JSON object per measurement on stdout (then one "summary" object per
transport and layout, and a "machine" object: how busy the machine was over the measurements
and how much of it was this bench and its children) and the table on stderr; without --json
the table on stdout. Progress goes to stderr.

Memory: about 8x --size at peak (the model file and `ferry pull`'s OUT in the temp directory,
the source's copy, the C++ pull's destination, both Python layouts, the memcpy buffers).

  python_pull_bench.py [--build-dir build] [--size 1GiB] [--repeat 3] [--transports shm,tcp]
                       [--layouts tensors,arena] [--dir DIR] [--seed 1] [--json]

Import path: <build-dir>/python is put first on sys.path (PYTHONPATH works too).
Smoke test: --size 64MiB --repeat 1 (a few seconds).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from harness import HarnessError, die_with_parent, parse_size, resolve_build_dir, tail, wait_ready_file  # noqa: E402

MODEL = "bench-model"
DTYPE_LABEL = "bfloat16"
_JSON_OUT = False


# ---------------------------------------------------------------------------------------------
# Arguments


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Pull throughput from Python (ferry.torch.pull_into) vs `ferry pull` and "
                    "memcpy, same run.")
    p.add_argument("--build-dir", default="build",
                   help="ferry build tree holding bin/ and python/ (relative: to the current "
                        "directory, else to the repository root; default build)")
    p.add_argument("--size", type=parse_size, default=1 << 30,
                   help="approximate model size: bytes, or 64MiB, 1GiB, ... (default 1GiB)")
    p.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--transports", default="shm,tcp", help="comma-separated (default shm,tcp)")
    p.add_argument("--layouts", default="tensors,arena",
                   help="Python destination layouts: tensors, arena (default both)")
    p.add_argument("--dir", default=None,
                   help="temp directory for the model and `ferry pull -o` (default: /dev/shm "
                        "when it has room, else the system temp directory)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true",
                   help="JSON lines on stdout, the table on stderr")
    a = p.parse_args(argv)
    a.build_dir = resolve_build_dir(a.build_dir)
    a.transports = [t for t in a.transports.split(",") if t]
    a.layouts = [v for v in a.layouts.split(",") if v]
    for t in a.transports:
        if t not in ("shm", "tcp", "ucx", "auto"):
            p.error(f"--transports: unknown transport {t!r}")
    for v in a.layouts:
        if v not in ("tensors", "arena"):
            p.error(f"--layouts: unknown layout {v!r}")
    if a.repeat < 1:
        p.error("--repeat must be >= 1")
    return a


def log(msg: str) -> None:
    print(f"python_pull_bench: {msg}", file=sys.stderr, flush=True)


def emit(obj: Dict) -> None:
    if _JSON_OUT:
        print(json.dumps(obj), flush=True)


class BenchError(HarnessError):
    pass


# ---------------------------------------------------------------------------------------------
# The model: Llama-shaped bf16 tensors (the shape rule of src/weights/llama_model.cc).


def _llama_shape(h: int) -> Dict[str, int]:
    heads = 32 if h >= 2048 else (16 if h >= 1024 else 8)
    return dict(h=h, inter=h * 7 // 2, layers=max(1, (h + 64) // 128), heads=heads,
                head_dim=h // heads, kv_heads=8)


def _body_params(c: Dict[str, int]) -> int:
    h, kv = c["h"], c["kv_heads"] * c["head_dim"]
    return c["layers"] * (2 * h * h + 2 * h * kv + 3 * h * c["inter"] + 2 * h) + h


def llama_layout(approx_bytes: int) -> Tuple[Dict[str, int], List[Tuple[str, List[int]]]]:
    """(config, [(name, shape)]) of the largest Llama-shaped bf16 model of at most approx_bytes."""
    total = lambda c, vocab: 2 * (_body_params(c) + 2 * vocab * c["h"])  # noqa: E731
    if approx_bytes < total(_llama_shape(64), 16 * 64):
        raise BenchError(f"--size {approx_bytes} is below the smallest model "
                         f"({total(_llama_shape(64), 16 * 64)} bytes)")
    h = 64
    while h + 64 <= 1 << 16 and total(_llama_shape(h + 64), 16 * (h + 64)) <= approx_bytes:
        h += 64
    c = _llama_shape(h)
    c["vocab"] = (approx_bytes // 2 - _body_params(c)) // (2 * h)
    kv = c["kv_heads"] * c["head_dim"]
    tensors = [("model.embed_tokens.weight", [c["vocab"], h])]
    for i in range(c["layers"]):
        p = f"model.layers.{i}."
        tensors += [
            (p + "self_attn.q_proj.weight", [h, h]),
            (p + "self_attn.k_proj.weight", [kv, h]),
            (p + "self_attn.v_proj.weight", [kv, h]),
            (p + "self_attn.o_proj.weight", [h, h]),
            (p + "mlp.gate_proj.weight", [c["inter"], h]),
            (p + "mlp.up_proj.weight", [c["inter"], h]),
            (p + "mlp.down_proj.weight", [h, c["inter"]]),
            (p + "input_layernorm.weight", [h]),
            (p + "post_attention_layernorm.weight", [h]),
        ]
    tensors += [("model.norm.weight", [h]), ("lm_head.weight", [c["vocab"], h])]
    return c, tensors


def nbytes_of(shape: List[int]) -> int:
    n = 2
    for d in shape:
        n *= d
    return n


def write_safetensors(path: str, tensors: List[Tuple[str, List[int]]], seed: int) -> int:
    """Writes the model with random bytes; returns the data section's size."""
    import numpy as np

    header: Dict[str, object] = {"__metadata__": {"format": "pt",
                                                  "generator": "python_pull_bench"}}
    offset = 0
    for name, shape in tensors:
        size = nbytes_of(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data section 8-byte aligned
    rng = np.random.default_rng(seed)
    chunk = 64 << 20
    with open(path + ".tmp", "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        left = offset
        while left:
            n = min(chunk, left)
            f.write(rng.bytes(n))
            left -= n
    os.replace(path + ".tmp", path)
    return offset


def read_safetensors(path: str):
    """(header dict, numpy uint8 memmap of the data section)."""
    import numpy as np

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    return header, data


# ---------------------------------------------------------------------------------------------
# Child processes


class Children:
    """Long-lived children (server, publisher), stopped in reverse order on exit."""

    def __init__(self) -> None:
        self.procs: List[Tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: List[str], log_path: str) -> subprocess.Popen:
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=die_with_parent(signal.SIGTERM))
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> None:
        while self.procs:
            name, proc = self.procs.pop()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    log(f"{name} (pid {proc.pid}) ignored SIGTERM for 15 s; killing it")
                    proc.kill()
                    proc.wait()


def measure_memcpy(nbytes: int) -> float:
    """Seconds of one single-threaded copy (numpy.copyto: one memcpy) of `nbytes` between two
    buffers pre-faulted before the clock starts. The buffers are freed afterwards, so that the
    pulls measured next run with the same memory in use as without the baseline (in a VM, the
    copy rate into fresh memory depends on what else is resident)."""
    import numpy as np

    src = np.full(nbytes, 7, dtype=np.uint8)
    dst = np.zeros(nbytes, dtype=np.uint8)
    np.copyto(dst, src)  # warm-up
    t0 = time.perf_counter()
    np.copyto(dst, src)
    s = time.perf_counter() - t0
    del src, dst
    return s


def measure_prefault(nbytes: int) -> float:
    """Seconds to map `nbytes` of fresh anonymous memory with MAP_POPULATE, as PullWeights
    prepares the C++ pull's destination (allocation and page faults), and unmap it."""
    import mmap

    t0 = time.perf_counter()
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    s = time.perf_counter() - t0
    m.close()
    return s


def cpp_pull(ferry_bin: str, addr: str, transport: str, out: str) -> Dict:
    argv = [ferry_bin, "--server", addr, "--log-level", "warn", "pull", "--model", MODEL,
            "--dtype", DTYPE_LABEL, "--transport", transport, "-o", out, "--json",
            "--progress", "none"]
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` exited {r.returncode}:\n"
                         f"{r.stderr.decode(errors='replace')[-4000:]}")
    summary = json.loads(r.stdout)
    summary["process_wall_seconds"] = wall
    return summary


def compare_file(out: str, header: Dict, data) -> Optional[str]:
    """None if OUT's tensors hold the model's bytes, else what differs."""
    import numpy as np

    got_header, got = read_safetensors(out)
    extra = set(got_header) - set(header) - {"__metadata__"}
    if extra:
        return f"{out} has tensors the model lacks: {sorted(extra)[:5]}"
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        g = got_header.get(name)
        if g is None:
            return f"{name} missing from {out}"
        if g["dtype"] != entry["dtype"] or g["shape"] != entry["shape"]:
            return f"{name}: {g['dtype']} {g['shape']} in {out}, {entry['dtype']} {entry['shape']}"
        b, e = entry["data_offsets"]
        gb, ge = g["data_offsets"]
        if not np.array_equal(got[gb:ge], data[b:e]):
            return f"{name}: bytes differ"
    del got
    return None


class Destinations:
    """The Python destinations, allocated and pre-faulted once."""

    def __init__(self, layout: str, tensors: List[Tuple[str, List[int]]]):
        import torch

        self.layout = layout
        self.state: Dict[str, "torch.Tensor"] = {}
        if layout == "tensors":
            for name, shape in tensors:
                self.state[name] = torch.empty(shape, dtype=torch.bfloat16)
        else:
            total = sum(nbytes_of(s) for _, s in tensors) // 2
            self.arena = torch.empty(total, dtype=torch.bfloat16)
            at = 0
            for name, shape in tensors:
                n = nbytes_of(shape) // 2
                self.state[name] = self.arena[at:at + n].view(shape)
                at += n
        self.clear()  # pre-faults every page

    def clear(self) -> None:
        for t in self.state.values():
            t.zero_()

    def compare(self, header: Dict, data) -> Optional[str]:
        import numpy as np
        import torch

        for name, t in self.state.items():
            b, e = header[name]["data_offsets"]
            got = t.view(torch.uint8).reshape(-1).numpy()
            if not np.array_equal(got, data[b:e]):
                return f"{name}: bytes differ"
        return None


def python_pull(ferry_torch, dest: Destinations, addr: str, transport: str):
    t0 = time.perf_counter()
    report = ferry_torch.pull_into(dest.state, {"model_name": MODEL, "dtype": DTYPE_LABEL},
                                   server=addr, transport=transport)
    wall = time.perf_counter() - t0
    return report, wall


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# The run


def run(args: argparse.Namespace, children: Children) -> int:
    bin_dir = os.path.join(args.build_dir, "bin")
    server_bin = os.path.join(bin_dir, "ferry-server")
    ferry_bin = os.path.join(bin_dir, "ferry")
    for b in (server_bin, ferry_bin):
        if not os.access(b, os.X_OK):
            raise BenchError(f"{b} not found; build ferry and ferry-server in {args.build_dir}")
    package = os.path.join(args.build_dir, "python", "ferry")
    if not glob.glob(os.path.join(package, "_ferry*.so")):
        raise BenchError(f"no ferry Python module in {package}; build it: "
                         f"ninja -C {args.build_dir} ferry_python")

    _, tensors = llama_layout(args.size)
    model_bytes = sum(nbytes_of(s) for _, s in tensors)
    base = args.dir
    if base is None:
        shm = "/dev/shm"
        if os.path.isdir(shm) and shutil.disk_usage(shm).free > 3 * model_bytes + (256 << 20):
            base = shm
    work = tempfile.mkdtemp(prefix="ferry-python-pull-bench-", dir=base)
    try:
        return _run_in(args, children, work, server_bin, ferry_bin, tensors, model_bytes)
    finally:
        children.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def _run_in(args, children, work, server_bin, ferry_bin, tensors, model_bytes) -> int:
    model_path = os.path.join(work, "model.safetensors")
    t0 = time.perf_counter()
    write_safetensors(model_path, tensors, args.seed)
    log(f"wrote {model_path}: {len(tensors)} bf16 tensors, {model_bytes} bytes "
        f"({time.perf_counter() - t0:.1f} s)")

    # ferry-server on loopback.
    server_ready = os.path.join(work, "server.ready")
    server_log = os.path.join(work, "server.log")
    server = children.start("ferry-server", [
        server_bin, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
        "--ready-file", server_ready, "--store", "memory", "--log-level", "warn"], server_log)
    addr = f"127.0.0.1:{wait_ready_file(server_ready, server, 'ferry-server', server_log)['grpc_port']}"

    # The C++ source.
    pub_ready = os.path.join(work, "publish.ready")
    pub_log = os.path.join(work, "publish.log")
    t0 = time.perf_counter()
    publisher = children.start("ferry publish", [
        ferry_bin, "--server", addr, "--log-level", "warn", "publish", model_path,
        "--model", MODEL, "--dtype", DTYPE_LABEL, "--ready-file", pub_ready,
        "--transport", "auto", "--worker-listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0",
        "--advertise-host", "127.0.0.1"], pub_log)
    wait_ready_file(pub_ready, publisher, "ferry publish", pub_log, timeout=300)
    log(f"ferry-server at {addr}; ferry publish ready in {time.perf_counter() - t0:.1f} s")

    # Python side, imported once the children that run a preexec_fn have started (so that no
    # torch or gRPC thread exists when they fork).
    os.environ.setdefault("FERRY_LOG_LEVEL", "warn")
    sys.path.insert(0, os.path.join(args.build_dir, "python"))
    import torch

    import ferry
    import ferry.torch as ferry_torch

    header, data = read_safetensors(model_path)
    dests = {v: Destinations(v, tensors) for v in args.layouts}
    emit({"workload": "setup", "bytes": model_bytes, "tensors": len(tensors),
          "dir": work, "build_dir": args.build_dir, "server": addr,
          "ferry_module": ferry._ferry.__file__, "torch": torch.__version__,
          "python": sys.version.split()[0], "cpus": os.cpu_count(),
          "size_arg": args.size, "repeat": args.repeat})

    rows: List[Dict] = []
    load = MachineLoad([server.pid, publisher.pid])
    failures: List[str] = []
    cpp_checked = set()
    out = os.path.join(work, "pulled.safetensors")
    for rep in range(args.repeat):
        for transport in args.transports:
            for name, proc, path in (("ferry-server", server, server_log),
                                     ("ferry publish", publisher, pub_log)):
                if proc.poll() is not None:
                    raise BenchError(f"{name} exited with {proc.returncode} during the run; "
                                     f"its log:\n{tail(path)}")
            # memcpy baseline.
            s = measure_memcpy(model_bytes)
            row = {"workload": "memcpy", "transport": transport, "repeat": rep,
                   "bytes": model_bytes, "seconds": s, "gbps": gbps(model_bytes, s)}
            rows.append(row)
            emit(row)
            s = measure_prefault(model_bytes)
            row = {"workload": "prefault", "transport": transport, "repeat": rep,
                   "bytes": model_bytes, "seconds": s, "gbps": gbps(model_bytes, s)}
            rows.append(row)
            emit(row)

            # C++ pull.
            try:
                r = cpp_pull(ferry_bin, addr, transport, out)
                if r.get("bytes") != model_bytes or not r.get("verified"):
                    raise BenchError(f"ferry pull moved {r.get('bytes')} of {model_bytes} bytes")
                if transport not in cpp_checked:
                    diff = compare_file(out, header, data)
                    if diff:
                        raise BenchError(f"ferry pull over {transport}: {diff}")
                    cpp_checked.add(transport)
                row = {"workload": "cpp", "transport": transport, "repeat": rep,
                       "bytes": r["bytes"], "tensors": r["tensors"], "ok": True,
                       "transport_used": r["transport"], "seconds": r["seconds"],
                       "transfer_seconds": r["transfer_seconds"],
                       "verify_seconds": r["verify_seconds"],
                       "setup_seconds": r["seconds"] - r["transfer_seconds"] - r["verify_seconds"],
                       "process_wall_seconds": r["process_wall_seconds"],
                       "gbps": gbps(r["bytes"], r["seconds"]),
                       "transfer_gbps": gbps(r["bytes"], r["transfer_seconds"])}
            except (BenchError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
                failures.append(f"cpp {transport} repeat {rep}: {e}")
                row = {"workload": "cpp", "transport": transport, "repeat": rep, "ok": False,
                       "error": str(e)}
            finally:
                if os.path.exists(out):
                    os.unlink(out)
            rows.append(row)
            emit(row)

            # Python pulls.
            for layout, dest in dests.items():
                dest.clear()  # untimed; keeps the pages faulted
                try:
                    report, wall = python_pull(ferry_torch, dest, addr, transport)
                    if not report.ok:
                        raise BenchError(f"{report.outcome}: {report.message}")
                    if report.bytes != model_bytes:
                        raise BenchError(f"moved {report.bytes} of {model_bytes} bytes")
                    diff = dest.compare(header, data)
                    if diff:
                        raise BenchError(diff)
                    row = {"workload": "python", "layout": layout, "transport": transport,
                           "repeat": rep, "bytes": report.bytes, "tensors": report.tensors,
                           "ok": True, "transport_used": report.transport,
                           "seconds": report.seconds,
                           "transfer_seconds": report.transfer_seconds,
                           "verify_seconds": report.verify_seconds,
                           "setup_seconds": report.seconds - report.transfer_seconds
                           - report.verify_seconds,
                           "wall_seconds": wall,
                           "gbps": gbps(report.bytes, report.seconds),
                           "wall_gbps": gbps(report.bytes, wall),
                           "transfer_gbps": gbps(report.bytes, report.transfer_seconds),
                           "bytes_checked": True}
                except (BenchError, ferry.Error) as e:
                    failures.append(f"python {layout} {transport} repeat {rep}: {e}")
                    row = {"workload": "python", "layout": layout, "transport": transport,
                           "repeat": rep, "ok": False, "error": f"{type(e).__name__}: {e}"}
                rows.append(row)
                emit(row)
            log(f"repeat {rep + 1}/{args.repeat} {transport} done")

    machine = load.report()
    summarize(args, rows, model_bytes, len(tensors))
    emit(machine)
    print(f"machine: {machine['cpus']} CPUs = {100 * machine['cpus']}%; busy "
          f"{machine['busy_percent']:.0f}% over the measurements ({machine['seconds']:.0f} s), "
          f"of which this bench and its children {machine['bench_percent']:.0f}%, other "
          f"processes {machine['other_percent']:.0f}% (in % of one core)",
          file=sys.stderr if _JSON_OUT else sys.stdout, flush=True)
    for f in failures:
        log(f"FAILED: {f}")
    return 1 if failures else 0


class MachineLoad:
    """How busy the machine was over the measurements (from /proc/stat), and how much of that
    was this bench and its children (os.times for this process and the reaped `ferry pull`s,
    /proc/PID/stat for ferry-server and ferry publish), in % of one core."""

    def __init__(self, pids: List[int]):
        self.pids = pids
        self.hz = os.sysconf("SC_CLK_TCK")
        self.start = self._sample()

    def _sample(self) -> Tuple[float, float, float, float]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        total, idle = sum(fields[:8]), fields[3] + fields[4]
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read().rsplit(")", 1)[1].split()
                ours += (int(stat[11]) + int(stat[12])) / self.hz
            except (OSError, IndexError, ValueError):
                pass
        return time.monotonic(), total / self.hz, (total - idle) / self.hz, ours

    def report(self) -> Dict:
        end = self._sample()
        wall = end[0] - self.start[0]
        busy = (end[2] - self.start[2]) / wall * 100
        ours = (end[3] - self.start[3]) / wall * 100
        return {"workload": "machine", "cpus": os.cpu_count(), "seconds": wall,
                "busy_percent": busy, "bench_percent": ours, "other_percent": busy - ours,
                "loadavg": os.getloadavg()}


def _median(rows: List[Dict], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def summarize(args, rows: List[Dict], model_bytes: int, ntensors: int) -> None:
    out = sys.stderr if _JSON_OUT else sys.stdout
    copies = [r["gbps"] for r in rows if r["workload"] == "memcpy"]
    mc = max(copies)
    print(f"\npython_pull_bench: {model_bytes} bytes ({model_bytes / 2**30:.3f} GiB), "
          f"{ntensors} bf16 tensors, medians of {args.repeat}; GB/s = 10^9 B/s; "
          f"build {args.build_dir}", file=out)
    print(f"memcpy (baseline, best of {len(copies)}): {mc:.2f} GB/s "
          f"(median {statistics.median(copies):.2f}).\n"
          "GB/s of: cpp = `ferry pull` JSON seconds; py_call = pull_into wall time; "
          "py_rep = report.seconds; xfer_* = transfer_seconds alone.\n"
          "Ratios: a/b of GB/s; mc = memcpy. Seconds: setup = seconds - transfer - verify; "
          "prefault = mmap MAP_POPULATE of the model's size, alone.", file=out)
    cols = ("transport", "layout", "cpp", "py_call", "py_rep", "py_call/cpp", "py_rep/cpp",
            "cpp/mc", "py_call/mc", "py_rep/mc", "xfer_cpp", "xfer_py", "xfer_py/cpp",
            "xfer_py/mc", "cpp_setup_s", "prefault_s", "py_setup_s")
    width = lambda c: max(8, len(c))  # noqa: E731
    print(" ".join(f"{c:>{width(c)}}" for c in cols), file=out)
    for transport in args.transports:
        def med(workload, key, **match):
            return _median([r for r in rows if r["workload"] == workload
                            and r["transport"] == transport and r.get("ok", True)
                            and all(r.get(k) == v for k, v in match.items())], key)

        cpp_gbps = med("cpp", "gbps")
        for layout in args.layouts:
            s = {
                "workload": "summary", "transport": transport, "layout": layout,
                "bytes": model_bytes, "tensors": ntensors,
                "runs": len([r for r in rows if r["workload"] == "python" and r.get("ok")
                             and r["transport"] == transport and r["layout"] == layout]),
                "baseline": "memcpy_best",
                "memcpy_gbps": mc,
                "memcpy_median_gbps": statistics.median(copies),
                "prefault_seconds": med("prefault", "seconds"),
                "cpp_gbps": cpp_gbps,
                "python_call_gbps": med("python", "wall_gbps", layout=layout),
                "python_report_gbps": med("python", "gbps", layout=layout),
                "cpp_transfer_gbps": med("cpp", "transfer_gbps"),
                "python_transfer_gbps": med("python", "transfer_gbps", layout=layout),
                "cpp_seconds": med("cpp", "seconds"),
                "cpp_setup_seconds": med("cpp", "setup_seconds"),
                "cpp_verify_seconds": med("cpp", "verify_seconds"),
                "cpp_process_wall_seconds": med("cpp", "process_wall_seconds"),
                "python_call_seconds": med("python", "wall_seconds", layout=layout),
                "python_report_seconds": med("python", "seconds", layout=layout),
                "python_setup_seconds": med("python", "setup_seconds", layout=layout),
                "python_verify_seconds": med("python", "verify_seconds", layout=layout),
            }
            div = lambda a, b: a / b if b else float("nan")  # noqa: E731
            s["ratio_python_call_to_cpp"] = div(s["python_call_gbps"], cpp_gbps)
            s["ratio_python_report_to_cpp"] = div(s["python_report_gbps"], cpp_gbps)
            s["ratio_python_transfer_to_cpp_transfer"] = div(s["python_transfer_gbps"],
                                                             s["cpp_transfer_gbps"])
            s["ratio_cpp_to_memcpy"] = div(cpp_gbps, mc)
            s["ratio_python_call_to_memcpy"] = div(s["python_call_gbps"], mc)
            s["ratio_python_report_to_memcpy"] = div(s["python_report_gbps"], mc)
            s["ratio_python_transfer_to_memcpy"] = div(s["python_transfer_gbps"], mc)
            emit(s)
            vals = (transport, layout, cpp_gbps, s["python_call_gbps"], s["python_report_gbps"],
                    s["ratio_python_call_to_cpp"], s["ratio_python_report_to_cpp"],
                    s["ratio_cpp_to_memcpy"], s["ratio_python_call_to_memcpy"],
                    s["ratio_python_report_to_memcpy"], s["cpp_transfer_gbps"],
                    s["python_transfer_gbps"], s["ratio_python_transfer_to_cpp_transfer"],
                    s["ratio_python_transfer_to_memcpy"], s["cpp_setup_seconds"],
                    s["prefault_seconds"], s["python_setup_seconds"])
            print(" ".join((f"{v:>{width(c)}}" if isinstance(v, str)
                            else f"{v:>{width(c)}.3f}") for c, v in zip(cols, vals)),
                  file=out)
    out.flush()


def main(argv: Optional[List[str]] = None) -> int:
    global _JSON_OUT
    args = parse_args(argv)
    _JSON_OUT = args.json

    # SIGTERM / SIGHUP unwind like Ctrl-C, so that the finally blocks stop the children.
    def _raise(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)
    children = Children()
    try:
        return run(args, children)
    except HarnessError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        children.stop_all()


if __name__ == "__main__":
    sys.exit(main())
