#!/usr/bin/env python3
"""The source replica: loads the checkpoint (the slow path), post-processes the model, publishes
its tensors in place with ferry.torch.publish, and serves them to starting replicas until
SIGTERM or SIGINT, then marks itself STALE (handle.stop()) and exits 0.

Once READY it writes --ready-file (JSON: pid, mx_source_id, worker_id, endpoint, digest of the
model's output on the fixed prompt, bytes, tensors) and prints the same object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

import _common
import model
from _common import log


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint to load (written by make_checkpoint.py)")
    parser.add_argument("--ready-file", metavar="FILE",
                        help="write the source's JSON summary here once READY")
    _common.add_server_flag(parser)
    _common.add_identity_flags(parser)
    data = parser.add_argument_group("endpoints")
    data.add_argument("--worker-listen", default="0.0.0.0:0", metavar="HOST:PORT",
                      help="worker endpoint (gRPC) address (default: %(default)s)")
    data.add_argument("--data-listen", default="0.0.0.0:0", metavar="HOST:PORT",
                      help="TCP data listener address (default: %(default)s)")
    data.add_argument("--advertise-host", default="",
                      help="host targets dial (default: the listen host unless it is a "
                           "wildcard, else this machine's host name)")
    args = parser.parse_args()
    if not os.path.isfile(args.checkpoint):
        parser.error(f"--checkpoint {args.checkpoint}: no such file "
                     f"(write one with make_checkpoint.py)")
    return args


def main() -> int:
    args = parse_args()
    ferry = _common.import_ferry()
    try:
        return serve(args, ferry)
    except ferry.Error as e:
        log(f"source: error: {_common.describe_error(e)}")
        return 1


def serve(args: argparse.Namespace, ferry) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())

    # 1. The slow path: build, load the checkpoint, post-process.
    start = time.monotonic()
    m = model.load_checkpoint(args.checkpoint, model.DTYPES[args.dtype])
    load_seconds = time.monotonic() - start
    tokens, digest, _ = model.generate(m)
    log(f"source: loaded {args.checkpoint} and post-processed ({m.post_processed}) in "
        f"{load_seconds:.3f} s; output digest {digest}")

    # 2. Publish the post-processed tensors in place: no copy, served from the model's memory.
    identity = _common.identity_from(args)
    start = time.monotonic()
    handle = ferry.torch.publish(m, identity, server=args.server,
                                 worker_listen=args.worker_listen, data_listen=args.data_listen,
                                 advertise_host=args.advertise_host)
    summary = {
        "pid": os.getpid(),
        "mx_source_id": handle.mx_source_id,
        "worker_id": handle.worker_id,
        "endpoint": handle.endpoint,
        "digest": digest,
        "tokens": tokens,
        "bytes": handle.total_bytes,
        "tensors": handle.tensors,
        "regions": handle.regions,
        "copied": handle.copied,
        "load_seconds": round(load_seconds, 6),
        "publish_seconds": round(time.monotonic() - start, 6),
    }
    log(f"source: READY as {handle.mx_source_id}/{handle.worker_id} at {handle.endpoint}: "
        f"{handle.tensors} tensors, {handle.total_bytes} bytes in {handle.regions} region(s); "
        f"serving until SIGTERM")
    if args.ready_file:
        _common.write_json(args.ready_file, summary)
    print(json.dumps(summary), flush=True)

    # 3. Serve (an engine would answer requests here; the published tensors must not change).
    while not stop.wait(0.5):
        pass
    handle.stop()  # marks the source STALE, then closes its endpoint
    log("source: stopped serving")
    return 0


if __name__ == "__main__":
    sys.exit(main())
