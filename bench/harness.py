"""Helpers shared by the Python harnesses in bench/ (python_pull_bench.py, fault_loops.py,
chaos.py): size arguments, the build directory, child processes' ready files and logs.
Standard library only; the scripts import it from their own directory."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from typing import Dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class HarnessError(Exception):
    """A setup step failed (a child did not start, a file is missing); the message says why."""


def parse_size(text: str) -> int:
    """Bytes from "8MiB", "1GiB", "1.5GB" (powers of 10 without the i) or a bare number; raises
    argparse.ArgumentTypeError otherwise, so that it serves as an argparse type."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected bytes or e.g. 64MiB, 1GiB")
    value = float(m.group(1))
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit[0]]
    if len(unit) >= 2 and "I" not in unit and unit != "B":
        scale = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[unit[0]]  # 1GB = 10^9
    return int(value * scale)


def resolve_build_dir(path: str) -> str:
    """An absolute build directory: as given, relative to the working directory when it exists
    there, else relative to the repository."""
    if os.path.isabs(path):
        return path
    if os.path.isdir(path):
        return os.path.abspath(path)
    return os.path.join(REPO, path)


def tail(path: str, n: int = 4000) -> str:
    """The last `n` bytes of a log file, for error messages."""
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")
    except OSError:
        return "(no log)"


def wait_ready_file(path: str, proc: subprocess.Popen, name: str, log_path: str,
                    timeout: float = 60.0) -> Dict:
    """The JSON a ferry child writes with --ready-file; HarnessError with the end of its log
    when it exits first or is not ready within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(f"{name} exited with {proc.returncode} before it was ready; "
                               f"its log:\n{tail(log_path)}")
        try:
            with open(path) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)  # polling a file the child writes once
    raise HarnessError(f"{name} not ready after {timeout:.0f} s; its log:\n{tail(log_path)}")
