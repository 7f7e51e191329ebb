#!/usr/bin/env python3
"""Checks the include edges between ferry's layers (docs/architecture.md, "Layers").

Every folder of src/ is one layer (one CMake target). A file may include headers of its own
layer and of the layers listed for it below, never of a layer above it; the Python module, the
benchmarks and the tests use the libraries, never the CLI (src/cli/). Exits 1 listing every
offending include.

Usage: scripts/check_layers.py
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# layer -> the layers it may include (besides itself). Lower layers first.
ALLOWED = {
    "common": set(),
    "store": {"common"},
    "client": {"common"},
    "cuda": {"common"},
    "transfer": {"common", "cuda"},
    "weights": {"common", "cuda"},
    "artifacts": {"common"},
    # The server parses token files with the client's credential code (client/credentials.h).
    "server": {"common", "store", "client"},
    "worker": {"common", "client", "cuda", "transfer", "weights", "artifacts"},
    "flows": {"common", "client", "cuda", "transfer", "weights", "artifacts", "worker"},
    "cli": {"common", "client", "cuda", "transfer", "weights", "artifacts", "worker", "flows"},
}
# Trees outside src/ and what they may include: everything but the CLI (and, for the module,
# the server and the store).
OUTSIDE = {
    "python/src": set(ALLOWED) - {"cli", "server", "store"},
    "bench": set(ALLOWED) - {"cli"},
    "tests": set(ALLOWED) - {"cli"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([a-z_]+)/')


def files(tree):
    for dirpath, _, names in os.walk(os.path.join(ROOT, tree)):
        for name in names:
            if name.endswith((".cc", ".h")):
                yield os.path.join(dirpath, name)


def main():
    problems = []
    checked = 0
    trees = [(os.path.join("src", layer), {layer} | allowed) for layer, allowed in ALLOWED.items()]
    trees += list(OUTSIDE.items())
    known = set(ALLOWED)
    for tree, allowed in trees:
        if not os.path.isdir(os.path.join(ROOT, tree)):
            problems.append(f"{tree}: no such folder (update scripts/check_layers.py)")
            continue
        for path in files(tree):
            checked += 1
            with open(path, encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, 1):
                    m = INCLUDE.match(line)
                    if m and m.group(1) in known and m.group(1) not in allowed:
                        problems.append(f"{os.path.relpath(path, ROOT)}:{number}: includes "
                                        f"{m.group(1)}/, which {tree} may not use")
    present = {d for d in os.listdir(os.path.join(ROOT, "src"))
               if os.path.isdir(os.path.join(ROOT, "src", d))}
    for extra in sorted(present - known):
        problems.append(f"src/{extra}: a folder with no layer rule (add it to scripts/check_layers.py)")
    for p in problems:
        print(p)
    print(f"layers: {checked} files checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
