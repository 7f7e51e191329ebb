"""Helpers shared by the Python harnesses in bench/ (python_pull_bench.py, fault_loops.py,
chaos.py): size arguments, the build directory, child processes' ready files and logs.
Standard library only; the scripts import it from their own directory."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import subprocess
import time
from typing import Dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class HarnessError(Exception):
    """A setup step failed (a child did not start, a file is missing); the message says why."""


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
               "g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from "8MiB", "1GiB", "1.5GiB", "64m" or a bare number: ferry's one byte-size grammar
    (src/common/byte_size.h, docs/operations.md "Sizes"; units are powers of 1024, KB/MB/GB are
    refused). These harnesses use the standard library only, so this mirrors the C++ function;
    tests/python/test_torch_p2p.py checks that both agree. Raises argparse.ArgumentTypeError, so
    that it serves as an argparse type."""
    m = re.fullmatch(r"\s*(\d+)(?:\.(\d+))?\s*([a-z]*)\s*", text.lower())
    unit = m.group(3) if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            f"size {text!r}: use a whole number of bytes or a number with a binary unit B, KiB, "
            f"MiB, GiB, TiB (or K, M, G, T; any case), e.g. 1073741824, 64MiB, 1.5GiB")
    fraction = m.group(2) or ""
    scaled = (int(m.group(1) + fraction)) * _SIZE_UNITS[unit]
    whole, rest = divmod(scaled, 10 ** len(fraction))
    if rest or whole == 0 or whole >= 1 << 64:
        raise argparse.ArgumentTypeError(
            f"size {text!r}: not a positive whole number of bytes below 2^64")
    return whole


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


_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None


def die_with_parent(sig: int = signal.SIGKILL):
    """A preexec_fn: the child gets `sig` if this process dies without cleaning up (kill -9);
    it survives `ip netns exec`'s exec."""
    def set_signal() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    return set_signal


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
