#!/usr/bin/env python3
"""A starting replica: builds the model with dummy (uninitialized) weights, post-processes it
the way the source did, and pulls the source's tensors into it with ferry.torch.pull_into.
When no source exists (or every source failed) it falls back to loading the checkpoint and
post-processing. Then it "serves": greedy generation on the fixed prompt, printing the output
digest (equal to the source's when the weights are).

Exit status: 0 once the model holds its weights (by either path), 1 on an error (for example
a model whose tensors do not match the source's, or no source and no --checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import _common
import model
from _common import log


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint",
                        help="checkpoint to load when no source can serve the weights "
                             "(default: none, and then no source is an error)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON summary object on stdout (progress stays on stderr)")
    parser.add_argument("--new-tokens", type=int, default=16,
                        help="tokens to generate (default: %(default)s)")
    _common.add_server_flag(parser)
    _common.add_identity_flags(parser)
    pull = parser.add_argument_group("pull")
    pull.add_argument("--transport", default="auto", choices=["auto", "ucx", "tcp"],
                      help="transport to read with (default: %(default)s; not shm, which "
                           "cannot read tensors published in place)")
    pull.add_argument("--max-sources", type=int, default=3,
                      help="sources to try at most (default: %(default)s)")
    pull.add_argument("--stall-timeout", type=float, default=15.0, metavar="SECONDS",
                      help="abandon a source that delivers nothing for this long "
                           "(default: %(default)s)")
    args = parser.parse_args()
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        parser.error(f"--checkpoint {args.checkpoint}: no such file")
    if args.new_tokens < 1:
        parser.error("--new-tokens must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    ferry = _common.import_ferry()
    try:
        return start_replica(args, ferry)
    except ferry.Error as e:
        log(f"target: error: {_common.describe_error(e)}")
        return 1


def start_replica(args: argparse.Namespace, ferry) -> int:
    dtype = model.DTYPES[args.dtype]
    identity = _common.identity_from(args)

    # 1. Dummy init and the same post-processing as the source: the layouts now match.
    start = time.monotonic()
    m = model.post_process(model.build_dummy(dtype))

    # 2. Pull the source's tensors into the model's own memory, verified.
    report = ferry.torch.pull_into(m, identity, server=args.server, transport=args.transport,
                                   max_sources=args.max_sources,
                                   stall_timeout=args.stall_timeout)
    if report.ok:
        weights_from = "ferry"
        log(f"target: pulled {report.tensors} tensors ({report.bytes} bytes) from "
            f"{report.mx_source_id}/{report.source_worker_id} at {report.source_endpoint} over "
            f"{report.transport} in {report.seconds:.3f} s ({report.gbps:.3f} GB/s; transfer "
            f"{report.transfer_seconds:.3f} s, verify {report.verify_seconds:.3f} s)")
    else:
        # 3. The fallback: the engine's ordinary load path (a fresh model; the dummy one may
        # hold partial data when report.modified).
        log(f"target: no pull ({report.outcome}): {report.message}")
        if args.checkpoint is None:
            log("target: error: no source could serve the weights and no --checkpoint was given")
            return 1
        weights_from = "checkpoint"
        log(f"target: falling back to the checkpoint {args.checkpoint}")
        m = model.load_checkpoint(args.checkpoint, dtype)
    ready_seconds = time.monotonic() - start
    log(f"target: weights from {weights_from}, model ready in {ready_seconds:.3f} s")

    # 4. Serve: greedy generation on the fixed prompt.
    tokens, digest, gen_seconds = model.generate(m, args.new_tokens)
    log(f"target: generated {tokens} in {gen_seconds:.3f} s; output digest {digest}")

    summary = {
        "weights_from": weights_from,
        "outcome": report.outcome,
        "message": report.message,
        "digest": digest,
        "tokens": tokens,
        "ready_seconds": round(ready_seconds, 6),
        "bytes": report.bytes,
        "tensors": report.tensors,
        "seconds": round(report.seconds, 6),
        "transfer_seconds": round(report.transfer_seconds, 6),
        "verify_seconds": round(report.verify_seconds, 6),
        "gbps": round(report.gbps, 6),
        "transport": report.transport,
        "mx_source_id": identity.mx_source_id,
        "source_worker_id": report.source_worker_id,
        "source_endpoint": report.source_endpoint,
        "attempts": report.attempts,
    }
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        print(f"weights from {weights_from} ({report.outcome}); digest {digest}; "
              f"ready in {ready_seconds:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
