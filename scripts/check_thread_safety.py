#!/usr/bin/env python3
"""Clang's thread-safety analysis over ferry's own sources.

The main build is GCC, which ignores the ABSL_GUARDED_BY / ABSL_EXCLUSIVE_LOCKS_REQUIRED
annotations. This runs `clang++ -fsyntax-only -Wall -Wthread-safety -Werror` on every ferry
translation unit listed in a build's compile_commands.json (generated code and third-party files
excluded), two at a time, and fails listing each file with a finding.

Usage: scripts/check_thread_safety.py [--build-dir build] [--jobs 2] [--clang clang++-14]
"""
import argparse
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["-fsyntax-only", "-Wall", "-Wthread-safety", "-Werror",
         # GCC-only or noisy-by-design warnings that say nothing about locking:
         "-Wno-unused-command-line-argument", "-Wno-unknown-warning-option",
         # ModelExpress's deprecated proto fields are served on purpose (contract compatibility):
         "-Wno-deprecated-declarations"]


def clang_command(entry, clang):
    args = shlex.split(entry["command"]) if "command" in entry else list(entry["arguments"])
    out = [clang]
    skip = False
    for a in args[1:]:
        if skip:
            skip = False
            continue
        if a == "-o":
            skip = True
            continue
        if a in ("-c",):
            continue
        out.append(a)
    return out + FLAGS


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--clang", default="clang++-14")
    args = parser.parse_args()
    db = os.path.join(args.build_dir, "compile_commands.json")
    if not os.path.exists(db):
        sys.exit(f"{db} not found: configure the build first (scripts/build.sh)")
    entries = [e for e in json.load(open(db))
               if os.path.realpath(e["file"]).startswith(os.path.join(ROOT, "src") + os.sep)
               or os.path.realpath(e["file"]).startswith(os.path.join(ROOT, "python", "src") + os.sep)]
    if not entries:
        sys.exit(f"no ferry sources in {db}")

    def run(entry):
        r = subprocess.run(clang_command(entry, args.clang), cwd=entry["directory"],
                           capture_output=True, text=True)
        return entry["file"], r.returncode, r.stderr

    failed = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for path, code, err in pool.map(run, entries):
            if code != 0:
                failed.append(path)
                sys.stderr.write(err)
    print(f"thread-safety analysis: {len(entries)} files, {len(failed)} with findings")
    for path in failed:
        print(f"  {os.path.relpath(path, ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
