#!/usr/bin/env python3
"""swarm_bench: how fast N new replicas hold a model, on hosts joined by shaped links
(bench/swarm_bed.py: network namespaces, veth, tc tbf). Linux, as root.

Workloads (--workloads):

  fanout   time until all N targets hold the verified model (each target's `ferry pull` has
           exited, or, with --then-publish, has written its output), for N in --targets, with
           one original source, in three modes:
             direct   every target reads from the original source (`ferry pull`, as today)
             publish  today's fan-out: every target `--then-publish --no-serve-while-pulling`
                      (a target serves only once its own pull has ended)
             swarm    every target `--then-publish --stripe S --max-sources 16` over TCP
                      (S: --stripe, default 16): it serves each tensor once verified while it
                      still pulls, and reads from the original source and from the other
                      targets at once
           each against T1, a single target's pull on the same links in the same run.
  stripe   one target and k equal sources (k in --sources), the sources' uploads shaped to
           --source-rate and the target's download left at --rate: the pull time with k sources
           against the same pull from one source, in the same run.

Every host's link is --rate in each direction (default 200mbit). The model is a safetensors file
of --size random bytes in --tensors tensors. Output: one JSON line per run (--json), then a
summary; every figure is also given as a ratio to its same-run baseline (T1, or k = 1).

  python3 bench/swarm_bench.py --build-dir build --size 64MiB --targets 1,2,4,8 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import parse_size, resolve_build_dir  # noqa: E402
from swarm_bed import Bed, Swarm, write_model  # noqa: E402


def log(msg: str) -> None:
    print(f"swarm_bench: {msg}", file=sys.stderr, flush=True)


def emit(args, obj: Dict) -> None:
    if args.json:
        print(json.dumps(obj), flush=True)


def output_dir(bed: Bed) -> str:
    """Where the pulls write: each host of a fleet writes to its own disk, but here all hosts
    share this machine's, and N pulls that fsync at once would queue behind each other (eight
    96 MiB outputs take 6 times as long as one). Memory (/dev/shm) when there is one."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        path = os.path.join("/dev/shm", os.path.basename(bed.work))
        os.makedirs(path, exist_ok=True)
        return path
    return bed.work


def run_targets(bed: Bed, swarm: Swarm, hosts: List[int], mode: str, stripe: int,
                tag: str) -> float:
    """Starts one pull per host at once; seconds until every output is written."""
    procs = []
    outputs = output_dir(bed)
    t0 = time.monotonic()
    for h in hosts:
        out = os.path.join(outputs, f"{tag}-{h}.safetensors")
        if mode == "direct":
            p = swarm.pull(h, f"{tag}-{h}", out)
        elif mode == "publish":
            p = swarm.pull(h, f"{tag}-{h}", out, ["--no-serve-while-pulling"], then_publish=True)
        else:
            p = swarm.pull(h, f"{tag}-{h}", out, ["--stripe", str(stripe), "--max-sources", "16"],
                           then_publish=True)
        procs.append((p, out))
    pending = list(procs)
    while pending:
        for p, out in list(pending):
            if os.path.exists(out):
                pending.remove((p, out))
            elif not p.alive():
                raise RuntimeError(f"{p.name} exited {p.proc.returncode} without its output:\n"
                                   f"{p.output()}")
        if time.monotonic() - t0 > 900:
            raise RuntimeError(f"{tag}: not done after 900 s")
        time.sleep(0.02)  # polling for outputs the pulls write once, atomically
    elapsed = time.monotonic() - t0
    for p, out in procs:
        p.stop()
        os.unlink(out)
    if outputs != bed.work:
        shutil.rmtree(outputs, ignore_errors=True)
    bed.procs = [p for p in bed.procs if p.alive()]
    return elapsed


def fanout(args, build: str) -> List[Dict]:
    rows = []
    n_max = max(args.targets)
    with Bed(n_max + 1, rate=args.rate) as bed:
        model = os.path.join(bed.work, "model.safetensors")
        write_model(model, args.size, 1, args.tensors)
        bin_dir = os.path.join(build, "bin")
        for mode in args.modes:
            for n in args.targets:
                # A fresh server and source per run: no target of an earlier run serves.
                swarm = Swarm(bed, bin_dir, model, model=f"bench/{mode}-{n}")
                swarm.publish(0, f"origin-{mode}-{n}")
                t1 = run_targets(bed, swarm, [1], "direct", 1, f"t1-{mode}-{n}")
                tn = run_targets(bed, swarm, list(range(1, n + 1)), mode, args.stripe,
                                 f"{mode}-{n}")
                for p in list(bed.procs):
                    p.stop()
                bed.procs = []
                row = {"workload": "fanout", "mode": mode, "targets": n, "bytes": args.size,
                       "rate": args.rate, "t1_s": round(t1, 3), "all_done_s": round(tn, 3),
                       "ratio_to_t1": round(tn / t1, 3)}
                emit(args, row)
                log(f"{mode:8s} N={n:2d}: all done in {tn:.2f} s = {tn / t1:.2f} x T1 "
                    f"(T1 {t1:.2f} s)")
                rows.append(row)
    return rows


def stripe(args, build: str) -> List[Dict]:
    rows = []
    k_max = max(args.sources)
    with Bed(k_max + 1, rate=args.rate) as bed:
        model = os.path.join(bed.work, "model.safetensors")
        write_model(model, args.size, 2, args.tensors)
        swarm = Swarm(bed, os.path.join(build, "bin"), model, model="bench/stripe")
        target = k_max
        for h in range(k_max):
            bed.set_rate(h, up=args.source_rate)
            swarm.publish(h, f"source-{h}")
        base = None
        for k in args.sources:
            out = os.path.join(bed.work, f"stripe-{k}.safetensors")
            # --max-sources k and --stripe k: exactly k of the equal sources are read.
            t0 = time.monotonic()
            p = swarm.pull(target, f"stripe-{k}", out, ["--stripe", str(k), "--max-sources",
                                                        str(k)])
            if p.wait(600) != 0:
                raise RuntimeError(p.output())
            elapsed = time.monotonic() - t0
            os.unlink(out)
            base = base or elapsed
            row = {"workload": "stripe", "sources": k, "bytes": args.size,
                   "source_rate": args.source_rate, "rate": args.rate, "seconds": round(elapsed, 3),
                   "speedup": round(base / elapsed, 3), "speedup_per_source": round(base / elapsed / k, 3)}
            emit(args, row)
            log(f"k={k}: {elapsed:.2f} s, {base / elapsed:.2f} x one source "
                f"({base / elapsed / k:.2f} of k)")
            rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--workloads", default="fanout,stripe")
    ap.add_argument("--size", type=parse_size, default=parse_size("64MiB"))
    ap.add_argument("--tensors", type=int, default=32)
    ap.add_argument("--rate", default="200mbit", help="each host's link, each direction (tc rate)")
    ap.add_argument("--source-rate", default="50mbit",
                    help="stripe: each source's upload (below the target's --rate)")
    ap.add_argument("--targets", default="1,2,4,8,16",
                    type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--sources", default="1,2,4", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--modes", default="direct,publish,swarm", type=lambda s: s.split(","))
    ap.add_argument("--stripe", type=int, default=16,
                    help="swarm: sources a target reads at once (at least N - 1: every target "
                         "then knows every other, and the original source sends each part once)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("swarm_bench: needs root (network namespaces and tc)", file=sys.stderr)
        return 2
    build = resolve_build_dir(args.build_dir)
    rows: List[Dict] = []
    for w in args.workloads.split(","):
        if w == "fanout":
            rows += fanout(args, build)
        elif w == "stripe":
            rows += stripe(args, build)
        else:
            print(f"swarm_bench: unknown workload {w}; known: fanout, stripe", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
