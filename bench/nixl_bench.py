#!/usr/bin/env python3
"""nixl_bench: the same pull of host-memory tensors through ferry's engine and through NIXL
(UCX, host memory), with a memcpy baseline, all in the same run.

Runs in the interop venv (scripts/wheels-venv.sh; NIXL comes from its wheel):

  build/wheels-venv/bin/python bench/nixl_bench.py [--build-dir build] [--sizes 256MiB,1GiB]
      [--tensors 16] [--repeat 3] [--ferry-transports tcp,ucx] [--json]

Setup per size: a real ferry-server on loopback (memory store) and one source child (this file,
--serve) holding --tensors float32 tensors of size/tensors bytes each (random, seeded). The child
publishes the same tensors twice, in place: ferry.torch.publish(backend="ferry",
transports=["tcp", "ucx"]) as model "bench-ferry" and ferry.torch.publish(backend="nixl") as
"bench-nixl" (a NIXL agent, ModelExpress's centralized record), and once more through Mooncake's
TransferEngine (TCP, host memory), published the way SGLang's ModelExpress loader does (a
`transfer_engine_session_id` and tensor descriptors, ModelExpress's own PublisherThread), as
"bench-te".

Workloads, --repeat rounds, alternating within each round:

  memcpy        baseline: one single-threaded copy of the same byte count between two
                pre-faulted buffers (python_pull_bench.measure_memcpy).
  ferry/T       ferry.torch.pull_into(backend="ferry", transport=T) from "bench-ferry": list,
                GetTransferInfo, connect, transfer, xxh3-64 verification of every tensor.
  nixl          ferry.torch.pull_into(backend="nixl") from "bench-nixl": list, GetMetadata, the
                checks (names, sizes, dtypes), a NIXL agent, register the destination, load the
                source's metadata, one READ of every tensor, teardown. No checksum exists to
                verify.
  transfer_engine  ferry.torch.pull_into(backend="transfer_engine") from "bench-te": list,
                GetMetadata, the checks (names, sizes), an engine in P2PHANDSHAKE mode,
                register the destination, one batch_transfer_sync_read, teardown. No checksum.

Destinations are allocated and pre-faulted once per size (torch.zeros), zeroed (untimed)
before every pull, and compared with the source's bytes after the first pull of each path.
`seconds` is time.perf_counter() around the whole pull_into call; `transfer_seconds` is the
report's transfer alone. gbps = bytes / seconds (10^9 B/s).

Output: with --json one JSON object per measurement on stdout, then one "summary" object per
size and path (medians, ratios to memcpy and to nixl); the table on stderr. Exits 1 if a pull
fails or any byte differs.
Smoke test: --sizes 64MiB --repeat 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import HarnessError, parse_size, resolve_build_dir, wait_ready_file  # noqa: E402
from python_pull_bench import Children, measure_memcpy  # noqa: E402

IDENTITY_DTYPE = "float32"


def log(msg: str) -> None:
    print(f"[nixl_bench] {msg}", file=sys.stderr, flush=True)


def make_tensors(size: int, count: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    each = size // count // 4
    return {f"layer{i}.weight": torch.rand(each, generator=g) for i in range(count)}


def serve(args) -> int:
    """The source child: publishes the tensors through both paths and serves until SIGTERM."""
    import ferry.torch

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    tensors = make_tensors(args.size, args.tensors, args.seed)
    handles = [
        ferry.torch.publish(tensors, {"model_name": "bench-ferry", "dtype": IDENTITY_DTYPE},
                            server=args.server, transports=["tcp", "ucx"]),
        ferry.torch.publish(tensors, {"model_name": "bench-nixl", "dtype": IDENTITY_DTYPE},
                            server=args.server, backend="nixl"),
        TransferEngineSource(tensors, "bench-te", args.server),
    ]
    with open(args.ready_file + ".tmp", "w") as f:
        json.dump({"pid": os.getpid()}, f)
    os.rename(args.ready_file + ".tmp", args.ready_file)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    for h in handles:
        h.stop()
    # NIXL 1.5.1 dies of SIGSEGV in its exit-time teardown on this machine
    # (tests/python/wheels/wheel_peer.py); everything is stopped and deregistered by now.
    sys.stdout.flush()
    os._exit(0)


class TransferEngineSource:
    """The tensors served by a Mooncake TransferEngine and published as SGLang's ModelExpress
    loader does; stop() marks it STALE and deregisters the memory."""

    def __init__(self, tensors, model: str, server: str):
        import uuid

        from mooncake.engine import TransferEngine
        from modelexpress import p2p_pb2
        from modelexpress.client import MxClient
        from modelexpress.metadata.payload import tensor_source_metadata
        from modelexpress.metadata.publisher import PublisherThread

        self._engine = TransferEngine()
        if self._engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") != 0:
            raise HarnessError("Mooncake TransferEngine.initialize failed")
        session = f"127.0.0.1:{self._engine.get_rpc_port()}"
        self._registered = []
        descriptors = []
        for name, t in tensors.items():
            size = t.numel() * t.element_size()
            if self._engine.register_memory(t.data_ptr(), size) != 0:
                raise HarnessError(f"Mooncake register_memory failed for {name}")
            self._registered.append(t.data_ptr())
            descriptors.append(p2p_pb2.TensorDescriptor(name=name, addr=t.data_ptr(), size=size,
                                                        device_id=0))
        worker = p2p_pb2.WorkerMetadata(worker_rank=0, transfer_engine_session_id=session,
                                        tensor_source=tensor_source_metadata(descriptors),
                                        accelerator="cpu")
        identity = p2p_pb2.SourceIdentity(model_name=model, dtype=IDENTITY_DTYPE,
                                          tensor_parallel_size=1, pipeline_parallel_size=1,
                                          expert_parallel_size=1)
        client = MxClient(server)
        worker_id = uuid.uuid4().hex[:8]
        self._publisher = PublisherThread(
            mx_client=client, worker_id=worker_id, worker_rank=0,
            publish_fn=lambda: client.publish_metadata(identity, worker, worker_id))
        self._publisher.start()
        deadline = time.monotonic() + 30
        while not any(r.worker_id == worker_id for r in client.list_sources(
                identity, p2p_pb2.SOURCE_STATUS_READY).instances):
            if time.monotonic() > deadline:
                raise HarnessError(f"the TransferEngine source {worker_id} is not READY in 30 s")
            time.sleep(0.05)  # polling the condition itself

    def stop(self):
        self._publisher.stop()
        for address in self._registered:
            self._engine.unregister_memory(address)


def pull(ferry_torch, dest, addr: str, model: str, **kw) -> Dict:
    for t in dest.values():
        t.zero_()
    t0 = time.perf_counter()
    report = ferry_torch.pull_into(dest, {"model_name": model, "dtype": IDENTITY_DTYPE},
                                   server=addr, **kw)
    seconds = time.perf_counter() - t0
    if not report.ok:
        raise HarnessError(f"pull of {model} with {kw} failed: {report.message}")
    return {"seconds": seconds, "transfer_seconds": report.transfer_seconds,
            "bytes": report.bytes, "backend": report.backend, "transport": report.transport}


def run_size(args, size: int, children: Children, work: str) -> List[Dict]:
    import torch
    import ferry.torch

    server_bin = os.path.join(args.build_dir, "bin", "ferry-server")
    ready = os.path.join(work, f"server-{size}.ready")
    log_path = os.path.join(work, f"server-{size}.log")
    server = children.start("ferry-server", [
        server_bin, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
        "--ready-file", ready, "--store", "memory", "--log-level", "warn"], log_path)
    addr = f"127.0.0.1:{wait_ready_file(ready, server, 'ferry-server', log_path)['grpc_port']}"
    src_ready = os.path.join(work, f"source-{size}.ready")
    src_log = os.path.join(work, f"source-{size}.log")
    source = children.start("source", [
        sys.executable, os.path.abspath(__file__), "--serve", "--server", addr,
        "--ready-file", src_ready, "--size", str(size), "--tensors", str(args.tensors),
        "--seed", str(args.seed)], src_log)
    wait_ready_file(src_ready, source, "source", src_log, 120)

    expected = make_tensors(size, args.tensors, args.seed)
    dest = {k: torch.zeros_like(v) for k, v in expected.items()}
    nbytes = sum(t.numel() * t.element_size() for t in expected.values())
    paths = [(f"ferry/{t}", "bench-ferry", {"backend": "ferry", "transport": t})
             for t in args.ferry_transports] + [("nixl", "bench-nixl", {"backend": "nixl"}),
                                                ("transfer_engine", "bench-te",
                                                 {"backend": "transfer_engine"})]
    rows = []
    checked = set()
    for rnd in range(args.repeat):
        s = measure_memcpy(nbytes)
        rows.append({"size": size, "path": "memcpy", "round": rnd, "bytes": nbytes,
                     "seconds": s, "gbps": nbytes / s / 1e9})
        for name, model, kw in paths:
            r = pull(ferry.torch, dest, addr, model, **kw)
            if name not in checked:
                bad = [k for k in expected if not torch.equal(dest[k], expected[k])]
                if bad:
                    raise HarnessError(f"{name}: {len(bad)} tensors differ (first {bad[0]})")
                checked.add(name)
            rows.append({"size": size, "path": name, "round": rnd, "bytes": r["bytes"],
                         "seconds": r["seconds"], "transfer_seconds": r["transfer_seconds"],
                         "gbps": r["bytes"] / r["seconds"] / 1e9,
                         "transfer_gbps": r["bytes"] / r["transfer_seconds"] / 1e9,
                         "transport": r["transport"]})
            log(f"{size >> 20} MiB {name}: {rows[-1]['gbps']:.2f} GB/s whole, "
                f"{rows[-1]['transfer_gbps']:.2f} GB/s transfer")
    children.stop_all()
    return rows


def summarize(rows: List[Dict]) -> List[Dict]:
    out = []
    for size in sorted({r["size"] for r in rows}):
        at = [r for r in rows if r["size"] == size]
        memcpy = statistics.median(r["gbps"] for r in at if r["path"] == "memcpy")
        nixl = [r for r in at if r["path"] == "nixl"]
        nixl_whole = statistics.median(r["gbps"] for r in nixl)
        nixl_transfer = statistics.median(r["transfer_gbps"] for r in nixl)
        for path in sorted({r["path"] for r in at} - {"memcpy"}):
            mine = [r for r in at if r["path"] == path]
            whole = statistics.median(r["gbps"] for r in mine)
            transfer = statistics.median(r["transfer_gbps"] for r in mine)
            out.append({"summary": True, "size": size, "path": path, "runs": len(mine),
                        "gbps_median": round(whole, 3), "transfer_gbps_median": round(transfer, 3),
                        "memcpy_gbps_median": round(memcpy, 3),
                        "whole_vs_memcpy": round(whole / memcpy, 3),
                        "whole_vs_nixl": round(whole / nixl_whole, 3),
                        "transfer_vs_nixl": round(transfer / nixl_transfer, 3)})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", default="build")
    p.add_argument("--sizes", default="256MiB,1GiB")
    p.add_argument("--tensors", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ferry-transports", default="tcp,ucx")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    # The source child's arguments.
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--server", help=argparse.SUPPRESS)
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.build_dir = resolve_build_dir(args.build_dir)
    sys.path.insert(0, os.path.join(args.build_dir, "python"))
    if args.serve:
        return serve(args)
    args.ferry_transports = [t for t in args.ferry_transports.split(",") if t]
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    children = Children()
    rows: List[Dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ferry-nixl-bench-") as work:
            for size in sizes:
                rows += run_size(args, size, children, work)
    except HarnessError as e:
        log(str(e))
        return 1
    finally:
        children.stop_all()
    summary = summarize(rows)
    if args.json:
        for r in rows + summary:
            print(json.dumps(r))
    dest = sys.stderr if args.json else sys.stdout
    print(f"{'size':>9} {'path':<15} {'GB/s whole':>10} {'GB/s xfer':>10} {'vs memcpy':>9} "
          f"{'xfer vs nixl':>12}", file=dest)
    for s in summary:
        print(f"{s['size'] >> 20:>5} MiB {s['path']:<15} {s['gbps_median']:>10.2f} "
              f"{s['transfer_gbps_median']:>10.2f} {s['whole_vs_memcpy']:>9.2f} "
              f"{s['transfer_vs_nixl']:>12.2f}", file=dest)
    print("memcpy medians: " + ", ".join(f"{s['size'] >> 20} MiB {s['memcpy_gbps_median']:.2f}"
                                          for s in summary if s["path"] == "nixl") + " GB/s",
          file=dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
