#!/usr/bin/env python3
"""Writes the example model's checkpoint: torch.save of a seeded, randomly initialized
state_dict, in the checkpoint layout (separate q/k/v and gate/up projections), float32."""

from __future__ import annotations

import argparse
import os
import sys

import torch

import model


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="checkpoint file to write (e.g. /tmp/tiny-llama.pt)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; the same seed writes the same weights "
                             "(default: %(default)s)")
    args = parser.parse_args()

    directory = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(directory):
        print(f"error: {directory} is not a directory", file=sys.stderr)
        return 1
    torch.manual_seed(args.seed)
    m = model.TinyLM(model.CONFIG)
    m.init_weights()
    tmp = f"{args.output}.tmp.{os.getpid()}"
    torch.save(m.state_dict(), tmp)
    os.replace(tmp, args.output)
    sizes = model.tensor_bytes(m)
    print(f"wrote {args.output}: {sizes['tensors']} tensors, {sizes['bytes'] / 2**20:.1f} MiB "
          f"(seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
