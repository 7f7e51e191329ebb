"""A ferry.torch source in its own process, for the tests.

    torch_peer.py --server ADDR --model NAME --ready-file F [--seed N] [--dim D] [--layers L]
                  [--exit-after-ready]

Builds TinyTransformer(seed), publishes it with ferry.torch.publish, saves its state_dict and
its output on the sample input next to the ready file, writes the ready file (JSON), then serves
until SIGTERM (stop(), exit 0), or with --exit-after-ready returns at once without calling
stop(): the interpreter-exit hook must mark the source STALE.
"""

import argparse
import json
import os
import signal
import sys

import torch

import ferry
import ferry.torch
import tiny_transformer


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--server", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--ready-file", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--ff", type=int, default=128)
    p.add_argument("--exit-after-ready", action="store_true")
    p.add_argument("--max-upload-rate", type=int, default=0,
                   help="bytes per second served (TCP only), as publish(max_upload_rate=...)")
    args = p.parse_args()

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    model = tiny_transformer.build(args.seed, dim=args.dim, layers=args.layers, ff=args.ff)
    with torch.no_grad():
        output = model(tiny_transformer.sample_input())
    state = model.state_dict()
    base = os.path.splitext(args.ready_file)[0]
    torch.save(state, base + ".checkpoint.pt")
    torch.save(output, base + ".output.pt")
    handle = ferry.torch.publish(model, {"model_name": args.model, "dtype": "float32"},
                                 server=args.server, heartbeat_interval=1.0,
                                 max_upload_rate=args.max_upload_rate)
    ready = {
        "pid": os.getpid(),
        "mx_source_id": handle.mx_source_id,
        "worker_id": handle.worker_id,
        "endpoint": handle.endpoint,
        "regions": handle.regions,
        "tensors": handle.tensors,
        "bytes": handle.total_bytes,
        "storages": tiny_transformer.distinct_storages(state),
    }
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(ready, f)
    os.rename(tmp, args.ready_file)
    if args.exit_after_ready:
        globals()["_keep"] = handle  # never stopped explicitly
        return 0
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
