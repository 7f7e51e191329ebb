#!/usr/bin/env python3
"""chaos: ferry on real, misbehaving links: network namespaces joined by links that delay,
jitter, drop, reorder, rate-limit and partition packets, during pulls and heartbeats. Linux,
as root (ip netns, /dev/net/tun); Python standard library only.

Setup (once): three network namespaces, ferry-chaos-<pid>-{srv,src,tgt}, joined pairwise by
three links with private addresses (nothing outside them and loopback is addressed):

  src 10.213.1.1 <-> 10.213.1.2 srv    heartbeats (source -> server)
  tgt 10.213.2.1 <-> 10.213.2.2 srv    listings and pulls' metadata calls (target -> server)
  src 10.213.3.1 <-> 10.213.3.2 tgt    the worker endpoint and the TCP data path

so each path can be shaped or cut alone. A link is two TAP devices, one in each namespace,
whose Ethernet frames bench/chaos_link.py relays with `tc netem`'s semantics (delay, uniform
jitter, loss, reorder, rate with a 1000-packet queue), per link, the same in both directions
(loss 1% is 1% per direction). The kernel's sch_netem is a module many kernels (this one's
included) lack; TAP devices work wherever network namespaces do. A partition drops every
frame silently, as a dead path does (the interfaces stay up); healing restores the link's
setting. In srv: `ferry-server` (memory store, --heartbeat-timeout --hb-timeout, reaper scan
1 s); in src: `ferry publish MODEL --transport tcp --heartbeat-interval 1 --worker-id chaos-src
--data-listen 10.213.3.1:0 --advertise-host 10.213.3.1 --worker-listen
--worker-listen-host:0`; targets run `ferry pull --transport tcp --json --stall-timeout S
--transfer-timeout T -o OUT` in tgt, each into a directory of its own. The model is a
safetensors file of --size random bytes in five U8 tensors.

Workloads (--workloads, each run --trials times; every trial prints one JSON line with --json):

  netem                 one trial per link setting of NETEM_PROFILES, applied to both of the
                        target's links (tgt<->src, tgt<->srv). The pull must either succeed
                        with OUT's tensors (names, dtypes, shapes, bytes) identical to the
                        model's, or exit 1 with a message, within the bound
                        transfer_timeout + 15 s; OUT must exist only after a success, and no
                        other file (OUT.tmp.*) may be left in its directory in any case. The
                        link is never cut, so a pull abandoned as "stalled" (no byte for
                        --stall-timeout) is a violation too (rate16mbit finds one: the TCP
                        transport reports progress per finished 8 MiB chunk).
  partition_heals       while the source heartbeats, cut src<->srv for --short-partition seconds
                        (default heartbeat timeout / 2), heal it, and poll `ferry sources list
                        --status ready` from tgt every ~200 ms from before the cut until a
                        heartbeat timeout + 2 s after the heal: the source must be listed READY
                        at every poll, and the server must never log it as marked STALE.
  partition_long        cut src<->srv for heartbeat timeout + 4 s. Asserted (docs/operations.md:
                        the timeout "hides a silent source from READY listings and lets the
                        reaper mark it STALE"): within heartbeat timeout + 2 reaper scans + 1 s
                        of the cut it is no longer listed READY and `ferry sources get` says
                        SOURCE_STATUS_STALE. After the heal the publisher's next heartbeat sets
                        it READY again (UpdateStatus READY on the STALE record; a deleted one is
                        re-published, docs/protocol.md 14.7): asserted within 20 s, the time is
                        reported.
  partition_during_pull the tgt<->src link is rate-limited so that the pull takes about 4 s;
                        1 s into the transfer the link is cut. Trials alternate two cases:
                        heal   healed after --stall-timeout / 2 s, the pull running with a
                               stall timeout of max(15, 3 x --stall-timeout) s: the outage
                               (plus TCP's retransmission backoff) stays far inside it, so the
                               pull must succeed with identical bytes;
                        cut    never healed (until the pull ended): the pull must exit 1 within
                               stall_timeout + 10 s of the cut, saying it stalled or failed,
                               with nothing left behind.
                        Either way it must end within the netem bound above.

Every trial also checks that the source and the server are still running. Exits 1 if any
invariant is violated in any trial (the summary lists each failure with its reason), 2 on a
setup error, 130 when interrupted. Namespaces, links and every process started are removed on
exit, errors, Ctrl-C and SIGTERM (namespaces left by a killed run of this script, whose pid is
gone, are removed at the next start).

Output: with --json one JSON object per trial on stdout, then one "summary" object per workload
and a "total"; progress and the summary table on stderr. Without --json the table on stdout.

  chaos.py [--build-dir build] [--size 32MiB] [--trials 1] [--workloads netem,...] [--json]
           [--hb-timeout 6] [--stall-timeout 5] [--transfer-timeout 60] [--quick] [--keep]

--quick (for CI): one trial of each workload, an 8 MiB model, 3 of the netem settings; about a
minute.
"""

from __future__ import annotations

import argparse
import atexit
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Tuple
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaos_link import open_tap  # noqa: E402
from harness import (HarnessError, die_with_parent, parse_size, pid_alive,  # noqa: E402
                     resolve_build_dir, tail, wait_ready_file)

MODEL = "chaos-model"
WORKER_ID = "chaos-src"
NS_PREFIX = "ferry-chaos-"
WORKLOADS = ["netem", "partition_heals", "partition_long", "partition_during_pull"]

# name -> chaos_link.py settings (both directions of each shaped link). rate16mbit (2 MB/s,
# bytes arriving all the time) checks the stall detector: ferry's TCP transport counts progress
# per finished 8 MiB chunk, and the four streams' first chunks of a 32 MiB model land together
# after about 16 s, later than --stall-timeout.
NETEM_PROFILES: List[Tuple[str, Dict]] = [
    ("delay20ms_jitter5ms", {"delay_ms": 20, "jitter_ms": 5}),
    ("loss1pct", {"loss_pct": 1}),
    ("loss5pct", {"loss_pct": 5}),
    ("reorder25pct_delay10ms", {"delay_ms": 10, "reorder_pct": 25}),
    ("rate200mbit", {"rate_mbit": 200}),
    ("rate16mbit", {"rate_mbit": 16}),
    ("delay5ms_loss2pct_rate100mbit", {"delay_ms": 5, "jitter_ms": 1, "loss_pct": 2,
                                       "rate_mbit": 100}),
]
QUICK_PROFILES = ["delay20ms_jitter5ms", "loss5pct", "reorder25pct_delay10ms"]

# (link, namespace role, interface, address/24)
LINKS = {
    "src-srv": (("src", "to-srv", "10.213.1.1"), ("srv", "to-src", "10.213.1.2")),
    "tgt-srv": (("tgt", "to-srv", "10.213.2.1"), ("srv", "to-tgt", "10.213.2.2")),
    "tgt-src": (("tgt", "to-src", "10.213.3.2"), ("src", "to-tgt", "10.213.3.1")),
}
SRV_FOR_SRC = "10.213.1.2"
SRV_FOR_TGT = "10.213.2.2"
SRC_ADDR = "10.213.3.1"

_JSON_OUT = False


# ---------------------------------------------------------------------------------------------
# Arguments


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Chaos on real links (network namespaces joined by netem-like TAP links) "
                    "during ferry pulls and heartbeats; exits 1 if an invariant is violated.")
    p.add_argument("--build-dir", default="build",
                   help="ferry build tree holding bin/ (relative: to the current directory, "
                        "else to the repository root; default build)")
    p.add_argument("--size", type=parse_size, default=None,
                   help="model size: bytes or e.g. 32MiB (default 32MiB; --quick 8MiB)")
    p.add_argument("--trials", type=int, default=None,
                   help="trials per workload (netem: per link setting) (default 1)")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma-separated, of " + ", ".join(WORKLOADS) + " (default all)")
    p.add_argument("--profiles", default=None,
                   help="netem settings to run, comma-separated, of "
                        + ", ".join(n for n, _ in NETEM_PROFILES) + " (default all; --quick: "
                        + ", ".join(QUICK_PROFILES) + ")")
    p.add_argument("--hb-timeout", type=float, default=6.0,
                   help="the server's --heartbeat-timeout in seconds (default 6; the source "
                        "heartbeats every second)")
    p.add_argument("--short-partition", type=float, default=None,
                   help="partition_heals: seconds the source<->server link is cut (default "
                        "heartbeat timeout / 2)")
    p.add_argument("--stall-timeout", type=float, default=5.0,
                   help="ferry pull --stall-timeout (default 5)")
    p.add_argument("--transfer-timeout", type=float, default=60.0,
                   help="ferry pull --transfer-timeout (default 60)")
    p.add_argument("--worker-listen-host", default="0.0.0.0",
                   help="the source's --worker-listen host (default 0.0.0.0, in its namespace: "
                        f"{SRC_ADDR}, 10.213.1.1 and loopback; it advertises {SRC_ADDR} either "
                        f"way). {SRC_ADDR} reproduces a source that marks itself STALE 20 s after "
                        "start: its listener probe dials 127.0.0.1, where nothing listens")
    p.add_argument("--quick", action="store_true",
                   help="CI: one trial each, 8 MiB, 3 netem settings (about a minute)")
    p.add_argument("--dir", default=None, help="work directory (default: a new one in /dev/shm "
                                               "or the system temp directory)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true",
                   help="JSON lines on stdout, the summary table on stderr")
    a = p.parse_args(argv)
    a.build_dir = resolve_build_dir(a.build_dir)
    if a.size is None:
        a.size = (8 << 20) if a.quick else (32 << 20)
    if a.trials is None:
        a.trials = 1
    if a.trials < 1:
        p.error("--trials must be >= 1")
    if a.size < 1 << 20:
        p.error("--size must be at least 1MiB")
    a.workloads = [w for w in a.workloads.split(",") if w]
    for w in a.workloads:
        if w not in WORKLOADS:
            p.error(f"--workloads: unknown workload {w!r}")
    names = [n for n, _ in NETEM_PROFILES]
    if a.profiles is None:
        a.profiles = QUICK_PROFILES if a.quick else names
    else:
        a.profiles = [n for n in a.profiles.split(",") if n]
    for n in a.profiles:
        if n not in names:
            p.error(f"--profiles: unknown setting {n!r}")
    if a.hb_timeout < 3:
        p.error("--hb-timeout must be >= 3 (the source heartbeats every second)")
    if a.short_partition is None:
        a.short_partition = a.hb_timeout / 2
    if not 0 < a.short_partition < a.hb_timeout - 1.5:
        p.error("--short-partition must be > 0 and at least 1.5 s below --hb-timeout")
    if a.stall_timeout < 1:
        p.error("--stall-timeout must be >= 1")
    return a


def log(msg: str) -> None:
    print(f"chaos: {msg}", file=sys.stderr, flush=True)


def emit(obj: Dict) -> None:
    if _JSON_OUT:
        print(json.dumps(obj), flush=True)


class ChaosError(HarnessError):
    """A setup failure (not an invariant): exit 2."""


# ---------------------------------------------------------------------------------------------
# The model


def write_model(path: str, size: int, seed: int) -> Dict[str, bytes]:
    """A safetensors file of about `size` random bytes in a few U8 tensors of unequal sizes.
    Returns {name: bytes}."""
    rng = random.Random(seed)
    n_tensors = 5
    weights = [8, 4, 2, 1, 1]
    unit = size // sum(weights)
    sizes = [w * unit for w in weights]
    sizes[-1] = 4099  # an odd, small one
    header: Dict[str, object] = {"__metadata__": {"format": "pt", "generator": "chaos.py"}}
    tensors: Dict[str, bytes] = {}
    offset = 0
    for i in range(n_tensors):
        name = f"t{i}"
        header[name] = {"dtype": "U8", "shape": [sizes[i]],
                        "data_offsets": [offset, offset + sizes[i]]}
        tensors[name] = rng.randbytes(sizes[i])
        offset += sizes[i]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for i in range(n_tensors):
            f.write(tensors[f"t{i}"])
    return tensors


def compare_output(path: str, want: Dict[str, bytes]) -> Optional[str]:
    """None when `path` is a safetensors file holding exactly `want`'s tensors, else why not."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        return f"cannot read {path}: {e}"
    if len(blob) < 8:
        return f"{path}: {len(blob)} bytes, not a safetensors file"
    n = int.from_bytes(blob[:8], "little")
    try:
        header = json.loads(blob[8:8 + n])
    except ValueError as e:
        return f"{path}: header is not JSON: {e}"
    data = memoryview(blob)[8 + n:]
    names = sorted(k for k in header if k != "__metadata__")
    if names != sorted(want):
        return f"{path}: tensors {names}, expected {sorted(want)}"
    for name, ref in want.items():
        h = header[name]
        if h.get("dtype") != "U8" or h.get("shape") != [len(ref)]:
            return f"{path}: tensor {name} is {h.get('dtype')} {h.get('shape')}, " \
                   f"expected U8 [{len(ref)}]"
        a, b = h["data_offsets"]
        if b - a != len(ref) or b > len(data):
            return f"{path}: tensor {name} data_offsets {a}..{b} do not fit"
        if data[a:b] != ref:
            return f"{path}: tensor {name}: bytes differ from the source's"
    return None


# ---------------------------------------------------------------------------------------------
# Processes, namespaces, links


def sh(argv: List[str], check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    if check and r.returncode != 0:
        raise ChaosError(f"{' '.join(argv)} exited {r.returncode}: "
                         f"{r.stderr.decode(errors='replace').strip()}")
    return r


def remove_orphan_workdirs(bases: List[str]) -> None:
    """Work directories of killed runs (their pid is gone; kept logs carry a KEPT file)."""
    for base in bases:
        for path in glob.glob(os.path.join(base, "ferry-chaos-*-*")):
            m = re.fullmatch(r"ferry-chaos-(\d+)-\w+", os.path.basename(path))
            if m and os.path.isdir(path) and not pid_alive(int(m.group(1))) and \
                    not os.path.exists(os.path.join(path, "KEPT")):
                shutil.rmtree(path, ignore_errors=True)


def remove_orphan_namespaces() -> None:
    """Namespaces this script left behind when it was killed (its pid is gone)."""
    r = sh(["ip", "netns", "list"], check=False)
    for line in r.stdout.decode().splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(re.escape(NS_PREFIX) + r"(\d+)-(srv|src|tgt)", name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            log(f"removing namespace {name} left by a killed run (pid {m.group(1)})")
            sh(["ip", "netns", "del", name], check=False)


class Lab:
    """The namespaces, links and processes; cleanup() removes all of them (idempotent)."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.ns = {r: f"{NS_PREFIX}{os.getpid()}-{r}" for r in ("srv", "src", "tgt")}
        self.created: List[str] = []
        self.procs: List[Tuple[str, subprocess.Popen]] = []
        self.shaped: Dict[str, str] = {}
        self._lock = threading.Lock()
        self._cleaned = False
        self.relay: Optional[subprocess.Popen] = None

    # --- namespaces and links

    def setup(self) -> None:
        for role, name in self.ns.items():
            sh(["ip", "netns", "add", name])
            self.created.append(name)
            sh(["ip", "-n", name, "link", "set", "lo", "up"])
        # Each link: two TAP devices, one in each namespace, whose frames the relay
        # (chaos_link.py) carries across, shaped. The devices exist as long as the relay
        # holds their descriptors.
        fds: List[int] = []
        relay_args: List[str] = []
        try:
            for i, (link, ends) in enumerate(LINKS.items()):
                pair = []
                for j, (role, ifname, addr) in enumerate(ends):
                    tmp = f"fc{os.getpid()}l{i}{j}"
                    fd = open_tap(tmp)
                    fds.append(fd)
                    pair.append(fd)
                    sh(["ip", "link", "set", "dev", tmp, "netns", self.ns[role], "name", ifname])
                    sh(["ip", "-n", self.ns[role], "addr", "add", f"{addr}/24", "dev", ifname])
                    sh(["ip", "-n", self.ns[role], "link", "set", "dev", ifname, "up"])
                relay_args += ["--link", f"{link}:{pair[0]}:{pair[1]}"]
            self.relay = subprocess.Popen(
                [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                              "chaos_link.py")] + relay_args,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=fds,
                start_new_session=True, preexec_fn=die_with_parent())
            with self._lock:
                self.procs.insert(0, ("chaos_link relay", self.relay))
        finally:
            for fd in fds:
                os.close(fd)
        for link in LINKS:
            self.shape(link, None)

    def _command(self, cmd: Dict) -> str:
        if self.relay is None or self.relay.poll() is not None:
            raise ChaosError("the link relay (chaos_link.py) is not running")
        self.relay.stdin.write((json.dumps(cmd) + "\n").encode())
        self.relay.stdin.flush()
        return self.relay.stdout.readline().decode().strip()

    def shape(self, link: str, netem: Optional[Dict]) -> None:
        """netem-like settings (chaos_link.py's keys) for both directions of `link`, or None
        for a clean link."""
        answer = self._command({"link": link, **(netem or {})})
        if answer != "ok":
            raise ChaosError(f"link relay refused {netem} for {link}: {answer}")
        if netem is None:
            self.shaped.pop(link, None)
        else:
            self.shaped[link] = json.dumps(netem)

    def link_stats(self) -> Dict:
        try:
            return json.loads(self._command({"stats": True}))
        except (ValueError, HarnessError):
            return {}

    def cut(self, link: str) -> None:
        self.shape(link, {"down": True})

    def heal_all(self) -> None:
        for link in list(LINKS):
            self.shape(link, None)

    # --- processes

    def start(self, name: str, role: str, argv: List[str], log_path: str) -> subprocess.Popen:
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns[role]] + argv,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=die_with_parent())
        with self._lock:
            self.procs.append((name, proc))
        return proc

    def run(self, role: str, argv: List[str], timeout: float) -> subprocess.CompletedProcess:
        """A short command in a namespace, tracked so that cleanup() can kill it."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[role]] + argv,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=die_with_parent())
        with self._lock:
            self.procs.append(("cmd", proc))
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return subprocess.CompletedProcess(argv, -9, out, err + b"\n(chaos: timed out)")
        finally:
            with self._lock:
                self.procs = [(n, p) for n, p in self.procs if p is not proc]
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def forget(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop(self, name: str, proc: subprocess.Popen, grace: float = 10) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {proc.pid}) ignored SIGTERM for {grace:.0f} s; killing it")
                proc.kill()
                proc.wait()
        self.forget(proc)

    def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        # heal first, so that SIGTERM'd sources can mark themselves STALE quickly
        for link in list(self.shaped):
            try:
                self.shape(link, None)
            except Exception:  # noqa: BLE001 - best effort
                pass
        with self._lock:
            procs = list(reversed(self.procs))
            self.procs = []
        for name, proc in procs:
            if proc is self.relay:  # last: the links vanish with it
                continue
            try:
                self.stop(name, proc, grace=5)
            except Exception:  # noqa: BLE001
                try:
                    proc.kill()
                except OSError:
                    pass
        if self.relay is not None:
            try:
                self.relay.stdin.close()
            except OSError:
                pass
            try:
                self.relay.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.relay.kill()
                self.relay.wait()
        for name in reversed(self.created):
            sh(["ip", "netns", "del", name], check=False)
        self.created = []


class Harness:
    def __init__(self, args: argparse.Namespace, lab: Lab, workdir: str) -> None:
        self.args = args
        self.lab = lab
        self.workdir = workdir
        self.bin = os.path.join(args.build_dir, "bin")
        self.ferry = os.path.join(self.bin, "ferry")
        self.server_port = 0
        self.server: Optional[subprocess.Popen] = None
        self.source: Optional[subprocess.Popen] = None
        self.source_info: Dict = {}
        self.model_path = os.path.join(workdir, "model.safetensors")
        self.tensors: Dict[str, bytes] = {}
        self.pull_seq = 0
        self.last_age: Optional[float] = None  # seconds since the source's last heartbeat
        self.server_log = os.path.join(workdir, "server.log")
        self.source_log = os.path.join(workdir, "source.log")

    def start(self) -> None:
        for exe in ("ferry", "ferry-server"):
            if not os.access(os.path.join(self.bin, exe), os.X_OK):
                raise ChaosError(f"{os.path.join(self.bin, exe)} not found; build ferry first")
        self.tensors = write_model(self.model_path, self.args.size, self.args.seed)
        ready = os.path.join(self.workdir, "server.ready")
        self.server = self.lab.start(
            "ferry-server", "srv",
            [os.path.join(self.bin, "ferry-server"), "--listen", "0.0.0.0:8001",
             "--admin-listen", "off", "--store", "memory",
             "--heartbeat-timeout", f"{self.args.hb_timeout:g}s",
             "--reaper-scan-interval", "1s", "--ready-file", ready], self.server_log)
        self.server_port = wait_ready_file(ready, self.server, "ferry-server",
                                           self.server_log)["grpc_port"]
        ready = os.path.join(self.workdir, "source.ready")
        self.source = self.lab.start(
            "ferry publish", "src",
            [self.ferry, "publish", self.model_path, "--model", MODEL,
             "--server", f"{SRV_FOR_SRC}:{self.server_port}", "--transport", "tcp",
             "--data-listen", f"{SRC_ADDR}:0",
             "--worker-listen", f"{self.args.worker_listen_host}:0",
             "--advertise-host", SRC_ADDR, "--heartbeat-interval", "1",
             "--worker-id", WORKER_ID, "--ready-file", ready], self.source_log)
        self.source_info = wait_ready_file(ready, self.source, "ferry publish", self.source_log)
        if not self.listed_ready():
            raise ChaosError("the source is not listed READY after it started")

    def self_stale_lines(self) -> List[str]:
        """Lines where the source marked itself STALE (its listener probe failed, ...)."""
        try:
            with open(self.source_log, errors="replace") as f:
                return [ln.strip() for ln in f if "marking this source STALE" in ln]
        except OSError:
            return []

    def alive(self) -> Optional[str]:
        for name, proc, path in (("ferry-server", self.server, self.server_log),
                                 ("ferry publish", self.source, self.source_log)):
            if proc is not None and proc.poll() is not None:
                return f"{name} exited with {proc.returncode}: {tail(path, 600)}"
        return None

    # --- listings (from the target's namespace, over tgt<->srv)

    def listed_ready(self) -> Optional[bool]:
        """True/False: listed READY or not; None: the listing itself failed."""
        r = self.lab.run("tgt", [self.ferry, "sources", "list", "--server",
                                 f"{SRV_FOR_TGT}:{self.server_port}", "--model", MODEL,
                                 "--status", "ready", "--json"], timeout=10)
        if r.returncode != 0:
            return None
        try:
            rows = json.loads(r.stdout)
        except ValueError:
            return None
        if isinstance(rows, dict):
            rows = rows.get("sources", [])
        mine = [row for row in rows if row.get("worker_id") == WORKER_ID]
        if mine:
            try:  # the server's clock is this machine's
                self.last_age = time.time() - int(mine[0].get("updated_at", 0)) / 1000.0
            except (TypeError, ValueError):
                pass
        return bool(mine)

    def record_status(self) -> str:
        """The record's status from `ferry sources get` ("SOURCE_STATUS_READY", ...,
        "absent" when the server holds none, "error: ..." when the call failed)."""
        r = self.lab.run("tgt", [self.ferry, "sources", "get", self.source_info["mx_source_id"],
                                 WORKER_ID, "--server", f"{SRV_FOR_TGT}:{self.server_port}",
                                 "--json"], timeout=10)
        try:
            obj = json.loads(r.stdout)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            if obj.get("found") is False:
                return "absent"
            status = (obj.get("worker") or {}).get("status")
            if status:
                return status
        if r.returncode == 1 and b"no such" in r.stderr.lower():
            return "absent"
        return "error: " + r.stderr.decode(errors="replace").strip()[-200:]

    def stale_marks(self) -> int:
        """How many times the server logged marking our worker STALE."""
        try:
            with open(self.server_log, errors="replace") as f:
                return sum(1 for line in f if "STALE" in line and WORKER_ID in line
                           and "marked" in line)
        except OSError:
            return 0

    # --- pulls

    def start_pull(self, stall: Optional[float] = None) -> Tuple[subprocess.Popen, str, str, str]:
        self.pull_seq += 1
        outdir = os.path.join(self.workdir, f"pull{self.pull_seq}")
        os.makedirs(outdir)
        out = os.path.join(outdir, "out.safetensors")
        stdout = os.path.join(self.workdir, f"pull{self.pull_seq}.json")
        stderr = os.path.join(self.workdir, f"pull{self.pull_seq}.err")
        with open(stdout, "wb") as so, open(stderr, "wb") as se:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.lab.ns["tgt"], self.ferry, "pull",
                 "--model", MODEL, "--server", f"{SRV_FOR_TGT}:{self.server_port}",
                 "--transport", "tcp", "--data-listen", "10.213.3.2:0",
                 "--advertise-host", "10.213.3.2", "-o", out, "--json", "--progress", "none",
                 "--stall-timeout", f"{stall if stall is not None else self.args.stall_timeout:g}",
                 "--transfer-timeout", f"{self.args.transfer_timeout:g}"],
                stdin=subprocess.DEVNULL, stdout=so, stderr=se, start_new_session=True,
                preexec_fn=die_with_parent())
        with self.lab._lock:
            self.lab.procs.append(("ferry pull", proc))
        return proc, out, stdout, stderr

    def pull_bound(self) -> float:
        return self.args.transfer_timeout + 15

    def finish_pull(self, proc: subprocess.Popen, out: str, stdout: str, stderr: str,
                    t0: float, rec: Dict) -> List[str]:
        """Waits for the pull (at most its bound), checks its outcome, fills rec; returns the
        violated invariants."""
        errors: List[str] = []
        bound = self.pull_bound()
        try:
            proc.wait(timeout=max(0.1, bound - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            errors.append(f"ferry pull still running after {bound:.0f} s (its bound); killed")
            proc.kill()
            proc.wait()
        self.lab.forget(proc)
        rec["pull_wall_s"] = round(time.monotonic() - t0, 3)
        rec["exit"] = proc.returncode
        err_text = tail(stderr, 4000).strip()
        summary = None
        try:
            with open(stdout) as f:
                summary = json.load(f)
        except (OSError, ValueError):
            pass
        leftovers = sorted(os.listdir(os.path.dirname(out)))
        if proc.returncode == 0:
            rec["outcome"] = "pulled"
            if isinstance(summary, dict):
                for k in ("seconds", "transfer_seconds", "gbps"):
                    if k in summary:
                        rec[k] = round(summary[k], 4) if isinstance(summary[k], float) \
                            else summary[k]
                rec["attempts"] = len(summary.get("attempts", []))
                if summary.get("verified") is not True:
                    errors.append("pull exited 0 without verified: true")
            else:
                errors.append("pull exited 0 without a JSON summary")
            why = compare_output(out, self.tensors)
            if why:
                errors.append(why)
            extra = [n for n in leftovers if n != os.path.basename(out)]
            if extra:
                errors.append(f"files left beside OUT after success: {extra}")
        else:
            rec["outcome"] = "failed"
            lines = [ln.strip() for ln in err_text.splitlines() if ln.strip()]
            head = max([i for i, ln in enumerate(lines) if ln.startswith("ferry:")] or
                       [max(0, len(lines) - 4)])
            rec["message"] = " | ".join(lines[head:])[:600]
            rec["stalled"] = "transfer stalled" in err_text
            if proc.returncode != 1:
                errors.append(f"pull exited {proc.returncode}, not 0 or 1: {rec['message']}")
            if not lines:
                errors.append("pull failed without a message on stderr")
            if leftovers:
                errors.append(f"failed pull left files behind: {leftovers}")
        shutil.rmtree(os.path.dirname(out), ignore_errors=True)
        for p in (stdout, stderr):
            if not errors:
                try:
                    os.unlink(p)
                except OSError:
                    pass
        return errors


# ---------------------------------------------------------------------------------------------
# Workloads


def trial_netem(h: Harness, profile: str, netem: Dict, trial: int) -> Tuple[Dict, List[str]]:
    rec: Dict = {"workload": "netem", "trial": trial, "profile": profile, "netem": netem,
                 "links": ["tgt-src", "tgt-srv"], "bound_s": h.pull_bound()}
    h.lab.shape("tgt-src", netem)
    h.lab.shape("tgt-srv", netem)
    try:
        before = h.lab.link_stats().get("tgt-src", {})
        t0 = time.monotonic()
        proc, out, so, se = h.start_pull()
        errors = h.finish_pull(proc, out, so, se, t0, rec)
        after = h.lab.link_stats().get("tgt-src", {})
        rec["data_link_frames"] = {k: after.get(k, 0) - before.get(k, 0)
                                   for k in ("passed", "dropped")}
        if rec.get("stalled"):
            m = re.search(r"the transfer stalled: [^;]*", rec.get("message", ""))
            errors.append("pull abandoned as stalled on a link that was never cut, where bytes "
                          f"kept arriving ({rec['data_link_frames']['passed']} frames passed): "
                          f"{m.group(0) if m else rec.get('message', '')[:200]}")
    finally:
        h.lab.heal_all()
    return rec, errors


def poll_ready(h: Harness, until: float, period: float = 0.2,
               ages: Optional[List[float]] = None) -> List[Tuple[float, Optional[bool]]]:
    samples = []
    while True:
        t = time.monotonic()
        h.last_age = None
        samples.append((t, h.listed_ready()))
        if ages is not None and h.last_age is not None:
            ages.append(h.last_age)
        if t >= until:
            return samples
        time.sleep(max(0.0, period - (time.monotonic() - t)))


def trial_partition_heals(h: Harness, trial: int) -> Tuple[Dict, List[str]]:
    a = h.args
    rec: Dict = {"workload": "partition_heals", "trial": trial, "link": "src-srv",
                 "partition_s": a.short_partition, "hb_timeout_s": a.hb_timeout,
                 "hb_interval_s": 1}
    errors: List[str] = []
    marks0 = h.stale_marks()
    t0 = time.monotonic()
    ages: List[float] = []
    before = poll_ready(h, t0 + 1.0, ages=ages)
    h.lab.cut("src-srv")
    t_cut = time.monotonic()
    try:
        during = poll_ready(h, t_cut + a.short_partition, ages=ages)
    finally:
        h.lab.shape("src-srv", None)
    t_heal = time.monotonic()
    rec["partition_actual_s"] = round(t_heal - t_cut, 3)
    after = poll_ready(h, t_heal + a.hb_timeout + 2.0, ages=ages)
    # how close the record came to the heartbeat timeout (its age when listed)
    rec["max_heartbeat_age_s"] = round(max(ages), 2) if ages else None
    samples = before + during + after
    rec["polls"] = len(samples)
    rec["poll_errors"] = sum(1 for _, v in samples if v is None)
    missing = [round(t - t_cut, 2) for t, v in samples if v is False]
    rec["not_ready_at_s"] = missing[:20]
    gaps = [b[0] - a_[0] for a_, b in zip(samples, samples[1:])]
    rec["max_poll_gap_s"] = round(max(gaps), 3) if gaps else None
    if missing:
        errors.append(f"source not listed READY at {len(missing)} of {len(samples)} polls "
                      f"(seconds after the cut: {missing[:8]}) though the partition "
                      f"({rec['partition_actual_s']} s) was shorter than the heartbeat timeout "
                      f"({a.hb_timeout:g} s)")
    if rec["poll_errors"] > len(samples) // 4:
        errors.append(f"{rec['poll_errors']} of {len(samples)} listings failed")
    marks = h.stale_marks() - marks0
    rec["stale_marks"] = marks
    if marks:
        errors.append(f"the server logged marking the source STALE {marks} time(s)")
    rec["outcome"] = "ready_throughout" if not missing and not marks else "went_stale"
    return rec, errors


def trial_partition_long(h: Harness, trial: int) -> Tuple[Dict, List[str]]:
    a = h.args
    length = a.hb_timeout + 4.0
    stale_bound = a.hb_timeout + 2 * 1.0 + 1.0  # timeout + two reaper scans + 1 s
    recover_bound = 20.0
    rec: Dict = {"workload": "partition_long", "trial": trial, "link": "src-srv",
                 "partition_s": length, "hb_timeout_s": a.hb_timeout,
                 "stale_bound_s": stale_bound, "recover_bound_s": recover_bound}
    errors: List[str] = []
    marks0 = h.stale_marks()
    if not h.listed_ready():
        errors.append("source not READY before the partition")
    h.lab.cut("src-srv")
    t_cut = time.monotonic()
    t_hidden = None
    t_stale = None
    statuses = []
    try:
        while time.monotonic() < t_cut + length:
            t = time.monotonic()
            if t_hidden is None and h.listed_ready() is False:
                t_hidden = time.monotonic() - t_cut
            if t_hidden is not None and t_stale is None:
                st = h.record_status()
                if st not in statuses:
                    statuses.append(st)
                if st in ("SOURCE_STATUS_STALE", "absent"):
                    t_stale = time.monotonic() - t_cut
            time.sleep(max(0.0, 0.25 - (time.monotonic() - t)))
    finally:
        h.lab.shape("src-srv", None)
    t_heal = time.monotonic()
    rec["partition_actual_s"] = round(t_heal - t_cut, 3)
    rec["hidden_after_s"] = None if t_hidden is None else round(t_hidden, 2)
    rec["stale_after_s"] = None if t_stale is None else round(t_stale, 2)
    rec["statuses_seen"] = statuses
    if t_hidden is None or t_hidden > stale_bound:
        errors.append(f"source still listed READY {t_hidden if t_hidden else length:.1f} s into "
                      f"a partition longer than the heartbeat timeout (bound {stale_bound:g} s)")
    if t_stale is None or t_stale > stale_bound:
        errors.append(f"record not STALE within {stale_bound:g} s of the cut "
                      f"(statuses seen: {statuses})")
    t_back = None
    while time.monotonic() < t_heal + recover_bound:
        t = time.monotonic()
        if h.listed_ready():
            t_back = time.monotonic() - t_heal
            break
        time.sleep(max(0.0, 0.2 - (time.monotonic() - t)))
    rec["ready_again_after_heal_s"] = None if t_back is None else round(t_back, 2)
    rec["status_after"] = h.record_status()
    rec["stale_marks"] = h.stale_marks() - marks0
    try:
        with open(h.source_log, errors="replace") as f:
            rec["republished"] = sum(1 for ln in f if "publishing again" in ln)
    except OSError:
        pass
    if t_back is None:
        errors.append(f"source not READY again within {recover_bound:g} s of the heal "
                      f"(status {rec['status_after']})")
    rec["outcome"] = "stale_then_ready" if t_back is not None and t_stale else "other"
    return rec, errors


def trial_partition_during_pull(h: Harness, trial: int, heal: bool) -> Tuple[Dict, List[str]]:
    a = h.args
    target_s = 4.0
    mbit = max(1, int(a.size * 8 / target_s / 1e6))
    heal_after = a.stall_timeout / 2
    # heal: the outage (heal_after plus TCP's retransmission backoff, under 2 s more) stays far
    # inside the pull's stall timeout, so the source must not be abandoned
    stall = max(15.0, 3 * a.stall_timeout) if heal else a.stall_timeout
    rec: Dict = {"workload": "partition_during_pull", "trial": trial,
                 "case": "heal" if heal else "cut", "link": "tgt-src",
                 "rate_mbit": mbit, "stall_timeout_s": stall,
                 "heal_after_s": heal_after if heal else None, "bound_s": h.pull_bound()}
    errors: List[str] = []
    rate = {"rate_mbit": mbit}
    h.lab.shape("tgt-src", rate)
    try:
        t0 = time.monotonic()
        proc, out, so, se = h.start_pull(stall=stall)
        # cut 1 s into the transfer: wait for the first bytes (a pull's setup is ~0.1 s)
        time.sleep(1.2)
        rec["running_at_cut"] = proc.poll() is None
        h.lab.cut("tgt-src")
        t_cut = time.monotonic()
        rec["cut_at_s"] = round(t_cut - t0, 3)
        if heal:
            while time.monotonic() < t_cut + heal_after and proc.poll() is None:
                time.sleep(0.05)
            h.lab.shape("tgt-src", rate)
            rec["healed_at_s"] = round(time.monotonic() - t0, 3)
        errors += h.finish_pull(proc, out, so, se, t0, rec)
        rec["ended_after_cut_s"] = round(t0 + rec["pull_wall_s"] - t_cut, 3)
        if not rec["running_at_cut"]:
            errors.append("the pull ended before the cut (the model is too small for the "
                          "link's 1 Mbit/s floor; raise --size): nothing was tested")
        if heal and rec["outcome"] != "pulled":
            errors.append(f"pull failed though the link healed {heal_after:g} s after the cut, "
                          f"well inside its --stall-timeout {stall:g} s: "
                          f"{rec.get('message', '')[-300:]}")
        if not heal:
            bound = a.stall_timeout + 10
            if rec["outcome"] == "pulled":
                errors.append("pull succeeded though the link stayed cut from 1 s into a "
                              "4 s transfer")
            elif rec["ended_after_cut_s"] > bound:
                errors.append(f"pull failed {rec['ended_after_cut_s']:.1f} s after the cut, "
                              f"beyond stall_timeout + 10 s = {bound:g} s")
            elif "stall" not in rec.get("message", "").lower():
                rec["note"] = "failure message does not mention a stall"
    finally:
        h.lab.heal_all()
    return rec, errors


# ---------------------------------------------------------------------------------------------
# Driver


def run(args: argparse.Namespace, lab: Lab, h: Harness) -> int:
    t_start = time.monotonic()
    log(f"namespaces {', '.join(lab.ns.values())}")
    lab.setup()
    h.start()
    log(f"server {SRV_FOR_SRC}/{SRV_FOR_TGT}:{h.server_port}, source "
        f"{h.source_info.get('worker_endpoint')}, model {args.size} bytes, "
        f"setup {time.monotonic() - t_start:.1f} s")
    results: Dict[str, List[Tuple[Dict, List[str]]]] = {w: [] for w in args.workloads}
    profiles = [(n, s) for n, s in NETEM_PROFILES if n in args.profiles]

    self_stale_seen = [0]

    def record(w: str, rec: Dict, errors: List[str], t0: float) -> None:
        dead = h.alive()
        if dead:
            errors.append(dead)
        lines = h.self_stale_lines()
        if len(lines) > self_stale_seen[0]:
            errors.append(f"the source marked itself STALE: {lines[-1][-300:]}")
            self_stale_seen[0] = len(lines)
        rec["trial_s"] = round(time.monotonic() - t0, 3)
        rec["ok"] = not errors
        rec["errors"] = errors
        results[w].append((rec, errors))
        emit(rec)
        brief = {k: rec[k] for k in ("profile", "case", "outcome", "pull_wall_s",
                                     "max_heartbeat_age_s", "hidden_after_s",
                                     "ready_again_after_heal_s", "message") if k in rec}
        log(f"{w} #{rec['trial']}: {'ok' if not errors else 'FAILED'} {json.dumps(brief)}"
            + ("".join(f"\n    violated: {e}" for e in errors)))
        if dead:
            raise ChaosError(dead)

    for trial in range(1, args.trials + 1):
        for w in args.workloads:
            if w == "netem":
                for name, spec in profiles:
                    t0 = time.monotonic()
                    rec, errors = trial_netem(h, name, spec, trial)
                    record(w, rec, errors, t0)
            elif w == "partition_heals":
                t0 = time.monotonic()
                rec, errors = trial_partition_heals(h, trial)
                record(w, rec, errors, t0)
            elif w == "partition_long":
                t0 = time.monotonic()
                rec, errors = trial_partition_long(h, trial)
                record(w, rec, errors, t0)
            elif w == "partition_during_pull":
                cases = [True, False] if args.quick else [trial % 2 == 1]
                for heal in cases:
                    t0 = time.monotonic()
                    rec, errors = trial_partition_during_pull(h, trial, heal)
                    record(w, rec, errors, t0)

    # summary
    out = sys.stderr if args.json else sys.stdout
    total_fail = 0
    print(f"\nchaos summary ({time.monotonic() - t_start:.1f} s, model {args.size} bytes, "
          f"heartbeat timeout {args.hb_timeout:g} s, stall timeout {args.stall_timeout:g} s)",
          file=out)
    for w, rows in results.items():
        fails = [(r, e) for r, e in rows if e]
        total_fail += len(fails)
        outcomes: Dict[str, int] = {}
        for r, _ in rows:
            key = r.get("outcome", "?")
            if "profile" in r:
                key = f"{r['profile']}:{key}"
            if "case" in r:
                key = f"{r['case']}:{key}"
            outcomes[key] = outcomes.get(key, 0) + 1
        walls = [r["pull_wall_s"] for r, _ in rows if "pull_wall_s" in r]
        s = {"summary": w, "trials": len(rows), "ok": len(rows) - len(fails),
             "failed": len(fails), "outcomes": outcomes,
             "failures": [{"trial": r["trial"], **({"profile": r["profile"]} if "profile" in r
                                                   else {}), "reasons": e} for r, e in fails]}
        if walls:
            s["pull_wall_s_max"] = max(walls)
        emit(s)
        print(f"  {w:<22} trials {len(rows):>3}  ok {len(rows) - len(fails):>3}  failed "
              f"{len(fails):>3}  {json.dumps(outcomes)}"
              + (f"  max pull {max(walls):.2f} s" if walls else ""), file=out)
        for r, e in fails:
            for reason in e:
                print(f"    trial {r['trial']}{' ' + r['profile'] if 'profile' in r else ''}"
                      f"{' ' + r['case'] if 'case' in r else ''}: {reason}", file=out)
    emit({"total": True, "trials": sum(len(v) for v in results.values()),
          "failed": total_fail, "seconds": round(time.monotonic() - t_start, 1)})
    print(f"  {'all invariants held' if not total_fail else f'{total_fail} trial(s) violated an invariant'}",
          file=out)
    out.flush()
    return 1 if total_fail else 0


def main(argv: Optional[List[str]] = None) -> int:
    global _JSON_OUT
    args = parse_args(argv)
    _JSON_OUT = args.json
    if os.geteuid() != 0:
        log("error: needs root (ip netns, tc)")
        return 2
    for tool in ("ip",):
        if shutil.which(tool) is None:
            log(f"error: {tool} not found (iproute2)")
            return 2

    def _raise(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)
    remove_orphan_namespaces()
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
        base = args.dir
    else:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and \
            shutil.disk_usage("/dev/shm").free > 4 * args.size + (256 << 20) \
            else tempfile.gettempdir()
    remove_orphan_workdirs([base])
    workdir = tempfile.mkdtemp(prefix=f"ferry-chaos-{os.getpid()}-", dir=base)
    lab = Lab(workdir)
    atexit.register(lab.cleanup)
    h = Harness(args, lab, workdir)
    code = 2
    try:
        code = run(args, lab, h)
        return code
    except HarnessError as e:
        log(f"error: {e}")
        code = 2
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        code = 130
        return 130
    finally:
        # no signal may interrupt the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        lab.cleanup()
        if args.keep or code not in (0, 130):
            try:
                with open(os.path.join(workdir, "KEPT"), "w") as f:
                    f.write(f"exit {code}\n")
            except OSError:
                pass
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
