"""A model's tensors through ferry.torch, source process to target process, on one device, beside
a same-run baseline: the GPU machine's torch round trip (issue 16, scripts/gpu-check.sh), also
runnable here on CPU tensors.

    torch_roundtrip.py --server-bin PATH [--loader LOADER --library-path DIRS]
                       [--device cuda|cpu] [--bytes 2GiB] [--tensors 200] [--repeat 3]
                       [--transport auto,tcp] [--work-dir DIR]

Starts a ferry-server (through `--loader` when given: the GPU bundle runs its binaries under the
bundled glibc), a source process that builds `--tensors` tensors of about `--bytes` in all on
`--device` (bf16, fp32 and int8 views of a seeded pattern) and publishes them with
ferry.torch.publish, then in this process fills tensors of the same shapes (zeros) with
ferry.torch.pull_into once per transport and run, and checks every tensor against the pattern
regenerated here. Baseline, same run, same device: copying the same tensors from the expected
ones with `Tensor.copy_` (a device-to-device copy on a GPU, memcpy on CPU).

Everything listens on and advertises loopback (127.0.0.1), so the machine's hostname need not
resolve. The ferry-server and source logs are kept in `--work-dir` (default: a new temporary
directory); when the round trip fails or is terminated (SIGTERM, as `timeout` sends), their last
20 kB follow the error on stderr.

One JSON line per transport on stdout: the report's transport and timings (medians), the
baseline and `ratio` (baseline seconds / transfer seconds, so 1.0 is copy speed), and
`alloc_conf`: PYTORCH_ALLOC_CONF (else PYTORCH_CUDA_ALLOC_CONF) as both processes saw it
(e.g. expandable_segments:True). Exits 1 when a pull fails or any tensor differs; the message
names the first such tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import HarnessError, die_with_parent, parse_size, tail, wait_ready_file  # noqa: E402

import torch  # noqa: E402

_DTYPES = [torch.bfloat16, torch.float32, torch.int8]
_LOG_TAIL = 20000  # bytes of each child's log shown when the round trip fails


def layout(total: int, count: int) -> List[Dict]:
    """`count` tensors of about total/count bytes each, dtypes in turn, shapes [rows, 1024/el]."""
    out = []
    each = max(total // count, 4096)
    for i in range(count):
        dtype = _DTYPES[i % len(_DTYPES)]
        el = torch.empty((), dtype=dtype).element_size()
        cols = 4096 // el
        rows = max(each // 4096, 1)
        out.append({"name": f"layers.{i}.weight", "dtype": dtype, "shape": [rows, cols]})
    return out


def pattern(spec: Dict, index: int, seed: int, device: str) -> torch.Tensor:
    """The tensor's content: a multiplicative-hash pattern of (position, index, seed), computed on
    the device, identical in every process."""
    rows, cols = spec["shape"]
    nbytes = rows * cols * torch.empty((), dtype=spec["dtype"]).element_size()
    words = torch.arange(nbytes // 4, dtype=torch.int64, device=device)
    words = (words * 2654435761 + index * 40503 + seed * 97) & 0xFFFFFFFF
    words = torch.where(words >= 1 << 31, words - (1 << 32), words)  # to int32's range
    return words.to(torch.int32).view(spec["dtype"]).view(rows, cols)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def identity(model: str) -> Dict:
    return {"model_name": model, "dtype": "mixed"}


def run_source(args: argparse.Namespace) -> int:
    import ferry.torch
    specs = layout(args.bytes, args.tensors)
    state = {s["name"]: pattern(s, i, args.seed, args.device) for i, s in enumerate(specs)}
    synchronize(args.device)
    # Loopback only: the machine's hostname (the default advertised host) may not resolve.
    handle = ferry.torch.publish(state, identity(args.model), server=args.server,
                                 heartbeat_interval=1.0, worker_listen="127.0.0.1:0",
                                 data_listen="127.0.0.1:0", advertise_host="127.0.0.1")
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "bytes": handle.total_bytes,
                   "regions": handle.regions}, f)
    os.rename(tmp, args.ready_file)
    sys.stdin.read()  # serves until the parent closes our stdin
    handle.stop()
    return 0


def alloc_conf() -> str:
    """The CUDA caching allocator's settings, as torch reads them (the newer name first)."""
    return os.environ.get("PYTORCH_ALLOC_CONF") or os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or ""


def start(argv: List[str], log_path: str, stdin=None) -> subprocess.Popen:
    log = open(log_path, "wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # a killed child's log keeps its last lines
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=stdin, env=env,
                            preexec_fn=die_with_parent())


def stop(proc: subprocess.Popen, name: str, timeout: float) -> None:
    """Waits up to `timeout` seconds for `proc` to exit, then kills it; never raises."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"torch_roundtrip: {name} still running after {timeout:.0f} s; killing it",
              file=sys.stderr)
        proc.kill()
        proc.wait()


def show_logs(work: str) -> None:
    """The end of each child's log on stderr (they stay in `work`, which may not be kept)."""
    for name in ("server.log", "source.log"):
        path = os.path.join(work, name)
        if os.path.exists(path):
            text = tail(path, _LOG_TAIL)
            print(f"==== torch_roundtrip: the last {_LOG_TAIL // 1000} kB of {path}\n"
                  f"{text if text.strip() else '(empty)'}", file=sys.stderr, flush=True)


def _terminated(signum, frame) -> None:
    raise HarnessError(f"terminated by signal {signum} (a timeout?)")


def run_target(args: argparse.Namespace) -> int:
    import ferry.torch
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
        work = args.work_dir
    else:
        work = tempfile.mkdtemp(prefix="ferry-torch-roundtrip-")
    # `timeout` sends SIGTERM: fail like any error, so that the logs are shown and children stop.
    signal.signal(signal.SIGTERM, _terminated)
    server_argv = [args.server_bin, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                   "--ready-file", os.path.join(work, "server.ready"), "--store", "memory",
                   "--log-level", "warn"]
    if args.loader:
        server_argv = [args.loader, "--library-path", args.library_path, *server_argv]
    server = start(server_argv, os.path.join(work, "server.log"))
    source: Optional[subprocess.Popen] = None
    failed = True
    try:
        ports = wait_ready_file(os.path.join(work, "server.ready"), server, "ferry-server",
                                os.path.join(work, "server.log"))
        address = f"127.0.0.1:{ports['grpc_port']}"
        source_log = os.path.join(work, "source.log")
        source = start([sys.executable, os.path.abspath(__file__), "--role", "source",
                        "--server", address, "--model", args.model, "--device", args.device,
                        "--bytes", str(args.bytes), "--tensors", str(args.tensors),
                        "--seed", str(args.seed),
                        "--ready-file", os.path.join(work, "source.ready")],
                       source_log, stdin=subprocess.PIPE)
        published = wait_ready_file(os.path.join(work, "source.ready"), source, "source",
                                    source_log, timeout=300)

        specs = layout(args.bytes, args.tensors)
        expected = {s["name"]: pattern(s, i, args.seed, args.device) for i, s in enumerate(specs)}
        targets = {n: torch.zeros_like(t) for n, t in expected.items()}
        nbytes = sum(t.numel() * t.element_size() for t in expected.values())
        synchronize(args.device)
        baseline = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for n, t in expected.items():
                targets[n].copy_(t)
            synchronize(args.device)
            baseline.append(time.perf_counter() - t0)
        for transport in args.transport:
            runs = []
            for _ in range(args.repeat):
                for t in targets.values():
                    t.zero_()
                synchronize(args.device)
                try:
                    report = ferry.torch.pull_into(targets, identity(args.model),
                                                   server=address, transport=transport)
                except Exception as e:  # ferry's errors name the cause; report it and stop
                    raise HarnessError(f"pull_into(transport={transport!r}) raised "
                                       f"{type(e).__name__}: {e}") from e
                if not report.ok:
                    raise HarnessError(f"pull_into(transport={transport!r}) {report.outcome}: "
                                       f"{report.message}")
                synchronize(args.device)
                for n, t in expected.items():
                    # Bytes, not values: the pattern holds NaNs, and NaN != NaN.
                    if not torch.equal(targets[n].view(torch.uint8), t.view(torch.uint8)):
                        raise HarnessError(f"tensor {n} differs after pull_into(transport="
                                           f"{transport!r}) through {report.transport}")
                runs.append(report)
            transfer = statistics.median(r.transfer_seconds for r in runs)
            copy = statistics.median(baseline)
            print(json.dumps({
                "workload": "torch_roundtrip", "device": args.device,
                "device_name": (torch.cuda.get_device_name() if args.device.startswith("cuda")
                                else "cpu"),
                "python": sys.version.split()[0], "torch": torch.__version__,
                "requested_transport": transport, "transport": runs[-1].transport,
                "bytes": nbytes, "published_bytes": published["bytes"],
                "tensors": len(expected), "equal": True, "runs": len(runs),
                "seconds": statistics.median(r.seconds for r in runs),
                "transfer_seconds": transfer,
                "verify_seconds": statistics.median(r.verify_seconds for r in runs),
                "gbps": nbytes / transfer / 1e9,
                "baseline": "Tensor.copy_ (device to device)" if args.device != "cpu"
                            else "Tensor.copy_ (memcpy)",
                "baseline_seconds": copy, "baseline_gbps": nbytes / copy / 1e9,
                "ratio": copy / transfer, "alloc_conf": alloc_conf()}), flush=True)
        failed = False
        return 0
    except HarnessError as e:
        print(f"torch_roundtrip: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        # Any failure (HarnessError, SIGTERM, another exception): the logs first, while there is
        # time, then the children, quickly. A later SIGTERM must not replace the outcome (the
        # KILL that follows it ends the cleanup, and the children die with this process).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if failed:
            show_logs(work)
        if source is not None and source.poll() is None:
            source.stdin.close()
            stop(source, "source", 5 if failed else 60)
        server.terminate()
        stop(server, "ferry-server", 30)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=["target", "source"], default="target",
                   help=argparse.SUPPRESS)
    p.add_argument("--server-bin", help="the ferry-server binary (target)")
    p.add_argument("--loader", default="", help="run ferry-server through this ELF loader")
    p.add_argument("--library-path", default="", help="the loader's --library-path")
    p.add_argument("--server", help=argparse.SUPPRESS)
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--bytes", type=parse_size, default=2 << 30, help="total (default 2GiB)")
    p.add_argument("--tensors", type=int, default=200, help="tensor count (default 200)")
    p.add_argument("--repeat", type=int, default=3, help="pulls per transport (median)")
    p.add_argument("--transport", type=lambda s: s.split(","), default=["auto", "tcp"],
                   help="pull_into transports, comma-separated (default auto,tcp)")
    p.add_argument("--model", default="bench/torch-roundtrip")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--work-dir", default="",
                   help="keep the ferry-server and source logs here (default: a new temp dir)")
    args = p.parse_args(argv)
    if args.role == "target" and not args.server_bin:
        p.error("--server-bin is required")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_source(args) if args.role == "source" else run_target(args)


if __name__ == "__main__":
    sys.exit(main())
