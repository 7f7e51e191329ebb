#!/usr/bin/env python3
"""fault_loops: faults injected many times at random moments into real ferry processes, with an
invariant check after every trial, and a soak that samples every process's resources.

Setup: a real `ferry-server` (memory store, short heartbeat timeout) on loopback, a safetensors
model of --size (random bytes, a few tensors) and `ferry publish` sources of it, all child
processes of this script in a temporary directory. A first pull gives the reference output.

Faults (--faults, each --trials times; a trial kills at a moment drawn uniformly from the
duration of an undisturbed run of the same step, so every phase gets hit: start-up, listing,
connect, transfer, verify, write):

  target_killed     `ferry pull -o OUT` is SIGKILLed. After: OUT is absent or identical to the
                    reference, and no other file is left in its directory.
  source_killed     one of two sources is SIGKILLed while a target pulls (the target reads from
                    either, by rendezvous order). After: the pull succeeded (the other source
                    served it, or the first finished) with OUT identical to the reference, or it
                    failed with exit 1 and nothing written. The killed source is restarted.
  source_alone      the only source of a model is SIGKILLed while a target pulls: OUT identical
                    or absent (exit 1, nothing written); no stray file. Restarted after.
  install_killed    `ferry artifact pull --into CACHE` (CACHE holds an older tree) is SIGKILLed:
                    CACHE is exactly the old tree or exactly the new one; the next pull
                    succeeds and leaves no stage directory beside CACHE.
  disk_full         (root only) a pull into a tmpfs too small for the model: exit 1, a message
                    naming the output, and the tmpfs left empty.
  redis_killed      a second ferry-server on a real redis-server (no persistence) with two
                    sources heartbeating through it: redis is SIGKILLed at a random moment and
                    restarted empty 0-2 s later. After: within 10 s both sources are READY
                    again (their heartbeats publish the lost records again) and a pull through
                    that server gives the reference bytes.
  replica_killed    two ferry-server replicas on that redis; two sources heartbeat through
                    replica A; A is SIGKILLed at a random moment. While A is down, replica B
                    still lists both sources (their records are in Redis) until the heartbeat
                    timeout; A restarts on its port 0-5 s later (past the 3 s heartbeat timeout
                    in some trials) and both sources are READY through B within 10 s (their
                    heartbeats reach the new A).

Soak (--soak SECONDS): pulls from two sources back to back (alternating the output file), every
tenth round a third source stopped (STALE) and published again, heartbeats every second
throughout; every --sample seconds the RSS, open descriptors and threads of ferry-server and the
two long-lived sources (from /proc). Fails when
a process's last sample exceeds its first sample after warm-up by more than 64 MiB of RSS,
64 descriptors or 16 threads, or when any pull fails.

Output: one JSON object per trial (or soak sample) with --json, a summary per fault; exit 1 when
an invariant failed. The quick version (--quick: 3 trials of each fault on an 8 MiB model) runs
in ctest as fault_loops_smoke.

  fault_loops.py [--build-dir build] [--faults target_killed,...] [--trials 20] [--size 64MiB]
                 [--seed 1] [--quick] [--soak SECONDS] [--sample 10] [--json]

redis_killed and replica_killed need redis-server (skipped with a message without it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from harness import parse_size, wait_ready_file

FAULTS = ["target_killed", "source_killed", "source_alone", "install_killed", "disk_full",
          "redis_killed", "replica_killed"]
_JSON = False


def emit(obj: dict) -> None:
    if _JSON:
        print(json.dumps(obj), flush=True)


def log(msg: str) -> None:
    print(f"fault_loops: {msg}", file=sys.stderr, flush=True)



def write_model(path: str, size: int, rng: random.Random, tensors: int = 8) -> None:
    """A valid safetensors file of `size` data bytes in `tensors` U8 tensors."""
    per = size // tensors
    header: Dict[str, dict] = {}
    offset = 0
    for i in range(tensors):
        n = per if i < tensors - 1 else size - offset
        header[f"layers.{i}.weight"] = {"dtype": "U8", "shape": [n], "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(rng.randbytes(size))


class Child:
    """A child process whose output goes to a log file; killed and reaped by stop()."""

    def __init__(self, argv: List[str], log_path: str):
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log, start_new_session=True)
        self.worker_id = ""  # set by Bed.publish from the ready file

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def wait_ready(path: str, child: Child, timeout: float = 60) -> dict:
    return wait_ready_file(path, child.proc, child.argv[0], child.log_path, timeout)


def tree(path: str) -> Dict[str, bytes]:
    out: Dict[str, bytes] = {}
    if not os.path.isdir(path):
        return out
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


class Bed:
    """The server, the model, the sources and the helpers every fault uses."""

    def __init__(self, build: str, work: str, size: int, rng: random.Random):
        self.bin = os.path.join(build, "bin")
        self.work = work
        self.rng = rng
        self.children: List[Child] = []
        ready = os.path.join(work, "server.ready")
        self.server = self.spawn([os.path.join(self.bin, "ferry-server"), "--listen", "127.0.0.1:0",
                                  "--admin-listen", "off", "--heartbeat-timeout", "3s",
                                  "--reaper-scan-interval", "500ms", "--ready-file", ready], "server")
        self.address = f"127.0.0.1:{wait_ready(ready, self.server)['grpc_port']}"
        self.model = os.path.join(work, "model.safetensors")
        write_model(self.model, size, rng)
        self.sources: Dict[str, Child] = {}
        self.dead_workers: set = set()

    def spawn(self, argv: List[str], name: str) -> Child:
        child = Child(argv, os.path.join(self.work, f"{name}.log"))
        self.children.append(child)
        return child

    def publish(self, name: str, model: str) -> Child:
        ready = os.path.join(self.work, f"{name}.ready")
        if os.path.exists(ready):
            os.unlink(ready)
        child = self.spawn([os.path.join(self.bin, "ferry"), "publish", self.model, "--model", model,
                            "--server", self.address, "--transport", "tcp",
                            "--data-listen", "127.0.0.1:0", "--worker-listen", "127.0.0.1:0",
                            "--heartbeat-interval", "1", "--ready-file", ready], name)
        child.worker_id = wait_ready(ready, child)["worker_id"]
        self.sources[name] = child
        return child

    def kill_source(self, name: str) -> None:
        """SIGKILLs a source; its record stays READY until the server's heartbeat timeout."""
        child = self.sources[name]
        child.kill()
        self.dead_workers.add(child.worker_id)

    def settle(self, timeout: float = 30) -> None:
        """Waits until the server lists none of the killed sources as READY, so that a trial
        whose outcome depends on reaching a live source is not decided by stale records."""
        deadline = time.monotonic() + timeout
        while self.dead_workers:
            r = subprocess.run([os.path.join(self.bin, "ferry"), "sources", "list", "--server",
                                self.address, "--status", "ready", "--json"], capture_output=True)
            if r.returncode == 0:
                listed = {ref.get("worker_id") for ref in json.loads(r.stdout)}
                self.dead_workers &= listed
                if not self.dead_workers:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"killed workers still listed READY after {timeout:.0f} s: "
                                   f"{sorted(self.dead_workers)}")
            time.sleep(0.2)  # polling the server until its heartbeat timeout drops them

    def pull_argv(self, model: str, out: str) -> List[str]:
        return [os.path.join(self.bin, "ferry"), "pull", "--model", model, "--server", self.address,
                "--transport", "tcp", "--data-listen", "127.0.0.1:0", "--progress", "none",
                "--stall-timeout", "3", "--max-sources", "3", "-o", out, "--json"]

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()


def timed_run(argv: List[str]) -> float:
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"calibration run failed: {' '.join(argv)}: {r.stderr.decode()[-500:]}")
    return time.monotonic() - t0


def kill_after(argv: List[str], delay: float) -> subprocess.CompletedProcess:
    """Runs argv, SIGKILLs it after `delay` seconds unless it finished; returns its result."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=delay)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def check_output(out: str, reference: bytes, allowed_missing: bool) -> Optional[str]:
    directory = os.path.dirname(out)
    extra = [n for n in os.listdir(directory) if n != os.path.basename(out)]
    if extra:
        return f"stray files beside the output: {extra}"
    if not os.path.exists(out):
        return None if allowed_missing else "no output"
    with open(out, "rb") as f:
        data = f.read()
    if data != reference:
        return f"output differs from the reference ({len(data)} vs {len(reference)} bytes)"
    return None


def trial_pull_kill(bed: Bed, model: str, reference: bytes, span: float, kill_source: Optional[str]):
    outdir = tempfile.mkdtemp(dir=bed.work, prefix="out-")
    out = os.path.join(outdir, "model.safetensors")
    delay = bed.rng.uniform(0, span)
    argv = bed.pull_argv(model, out)
    if kill_source is None:
        r = kill_after(argv, delay)
        killed = r.returncode == -signal.SIGKILL
        error = check_output(out, reference, allowed_missing=killed)
        if not killed and r.returncode != 0:
            error = error or f"pull failed without a fault: {r.stderr.decode()[-300:]}"
    else:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)  # the fault's random moment, not a wait for anything
        bed.kill_source(kill_source)
        _, err = p.communicate(timeout=120)
        killed = True
        error = check_output(out, reference, allowed_missing=p.returncode != 0)
        if p.returncode not in (0, 1):
            error = error or f"pull exited with {p.returncode}: {err.decode()[-300:]}"
        r = subprocess.CompletedProcess(argv, p.returncode, b"", err)
    shutil.rmtree(outdir)
    return {"delay_s": round(delay, 4), "exit": r.returncode, "killed": killed, "error": error}


def run_faults(args, bed: Bed) -> Dict[str, dict]:
    summary: Dict[str, dict] = {}
    bed.publish("source-a", "loops/model")
    bed.publish("source-b", "loops/model")
    bed.publish("source-alone", "loops/alone")
    ref_out = os.path.join(bed.work, "reference.safetensors")
    span = timed_run(bed.pull_argv("loops/model", ref_out))
    with open(ref_out, "rb") as f:
        reference = f.read()
    os.unlink(ref_out)
    log(f"an undisturbed pull takes {span:.3f}s")

    for fault in args.faults:
        results = []
        for i in range(args.trials):
            if fault == "target_killed":
                res = trial_pull_kill(bed, "loops/model", reference, span, None)
            elif fault == "source_killed":
                victim = bed.rng.choice(["source-a", "source-b"])
                res = trial_pull_kill(bed, "loops/model", reference, span, victim)
                res["victim"] = victim
                bed.publish(victim, "loops/model")
            elif fault == "source_alone":
                res = trial_pull_kill(bed, "loops/alone", reference, span, "source-alone")
                bed.publish("source-alone", "loops/alone")
            elif fault == "install_killed":
                res = trial_install_kill(bed, i)
            elif fault == "redis_killed":
                res = trial_redis_kill(bed, reference)
                if res is None:
                    log("redis_killed skipped: redis-server not found")
                    break
            elif fault == "replica_killed":
                res = trial_replica_kill(bed)
                if res is None:
                    log("replica_killed skipped: redis-server not found")
                    break
            elif fault == "disk_full":
                res = trial_disk_full(bed, reference)
                if res is None:
                    log("disk_full skipped: needs root to mount a tmpfs")
                    break
            else:
                raise SystemExit(f"unknown fault {fault}; known: {', '.join(FAULTS)}")
            res.update({"workload": "fault", "fault": fault, "trial": i})
            emit(res)
            results.append(res)
        failed = [r for r in results if r.get("error")]
        summary[fault] = {"trials": len(results), "failed": len(failed),
                          "killed": sum(1 for r in results if r.get("killed")),
                          "errors": [r["error"] for r in failed][:5]}
    return summary


_INSTALL = {}


def trial_install_kill(bed: Bed, i: int) -> dict:
    if not _INSTALL:
        src = os.path.join(bed.work, "cache-src")
        for d in range(4):
            os.makedirs(os.path.join(src, f"d{d}"), exist_ok=True)
            for n in range(40):
                with open(os.path.join(src, f"d{d}", f"k{n}.bin"), "wb") as f:
                    f.write(bed.rng.randbytes(bed.rng.randint(1, 200_000)))
        ready = os.path.join(bed.work, "artifact.ready")
        child = bed.spawn([os.path.join(bed.bin, "ferry"), "artifact", "publish", src, "--kind",
                           "triton", "--model", "loops/model", "--server", bed.address,
                           "--transport", "tcp", "--data-listen", "127.0.0.1:0", "--worker-listen",
                           "127.0.0.1:0", "--heartbeat-interval", "1", "--ready-file", ready],
                          "artifact-source")
        wait_ready(ready, child)
        _INSTALL["new"] = tree(src)
        _INSTALL["old"] = {"d0/k0.bin": b"old", "old-only.txt": b"kept"}
        _INSTALL["argv"] = lambda into, state: [
            os.path.join(bed.bin, "ferry"), "artifact", "pull", "--kind", "triton", "--model",
            "loops/model", "--server", bed.address, "--transport", "tcp", "--data-listen",
            "127.0.0.1:0", "--allow-unsigned", "--state-dir", state, "--force", "--into", into,
            "--stall-timeout", "3"]
        probe = os.path.join(bed.work, "probe-cache")
        _INSTALL["span"] = timed_run(_INSTALL["argv"](probe, os.path.join(bed.work, "probe-state")))
        shutil.rmtree(probe)
    parent = tempfile.mkdtemp(dir=bed.work, prefix="install-")
    into = os.path.join(parent, "cache")
    for rel, data in _INSTALL["old"].items():
        os.makedirs(os.path.dirname(os.path.join(into, rel)), exist_ok=True)
        with open(os.path.join(into, rel), "wb") as f:
            f.write(data)
    state = os.path.join(parent, "state")
    delay = bed.rng.uniform(0, _INSTALL["span"])
    r = kill_after(_INSTALL["argv"](into, state), delay)
    after = tree(into)
    merged = dict(_INSTALL["new"])
    merged["old-only.txt"] = b"kept"  # local entries the artifact lacks are kept
    error = None
    if after != _INSTALL["old"] and after != merged:
        error = f"the cache is neither the old tree nor the new one ({len(after)} files)"
    elif r.returncode not in (0, -signal.SIGKILL):
        error = f"install exited with {r.returncode}: {r.stderr.decode()[-300:]}"
    again = subprocess.run(_INSTALL["argv"](into, state), capture_output=True, timeout=120)
    if not error and again.returncode != 0:
        error = f"the pull after the kill failed: {again.stderr.decode()[-300:]}"
    leftovers = [n for n in os.listdir(parent) if n not in ("cache", "state")]
    if not error and (tree(into) != merged or leftovers):
        error = f"after the next pull: leftovers {leftovers} or a wrong tree"
    shutil.rmtree(parent)
    return {"delay_s": round(delay, 4), "exit": r.returncode,
            "killed": r.returncode == -signal.SIGKILL, "error": error}


def trial_disk_full(bed: Bed, reference: bytes) -> Optional[dict]:
    if os.geteuid() != 0:
        return None
    mount = tempfile.mkdtemp(dir=bed.work, prefix="tmpfs-")
    size_kib = max(64, len(reference) // 2048)  # half the model
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", mount]).returncode:
        return None
    try:
        bed.settle()  # the trial asks what a live source's pull does on a full disk
        out = os.path.join(mount, "model.safetensors")
        r = subprocess.run(bed.pull_argv("loops/model", out), capture_output=True, timeout=120)
        error = None
        if r.returncode != 1:
            error = f"exit {r.returncode}, expected 1"
        elif out.encode() not in r.stderr:
            error = f"the message does not name the output: {r.stderr.decode()[-300:]}"
        elif os.listdir(mount):
            error = f"files left on the full disk: {os.listdir(mount)}"
        return {"exit": r.returncode, "killed": False, "error": error}
    finally:
        subprocess.run(["umount", mount])
        os.rmdir(mount)


_REDIS: dict = {}


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(bed: Bed) -> None:
    _REDIS["proc"] = bed.spawn(["redis-server", "--port", str(_REDIS["port"]), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", "--dir", bed.work], "redis")
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(_REDIS["port"]), "ping"],
                         capture_output=True).stdout.strip() != b"PONG":
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not answer within 10 s")
        time.sleep(0.02)  # polling a server that is starting


def ready_workers(bed: Bed, address: str, model: str, since_ms: int = 0) -> int:
    """READY workers of `model` listed by `address` whose last heartbeat is after `since_ms`."""
    r = subprocess.run([os.path.join(bed.bin, "ferry"), "sources", "list", "--server", address,
                        "--model", model, "--status", "ready", "--json"], capture_output=True)
    if r.returncode != 0:
        return -1
    try:
        refs = json.loads(r.stdout)
    except json.JSONDecodeError:
        return -1
    return sum(1 for ref in refs if int(ref.get("updated_at", 0)) > since_ms)


def trial_redis_kill(bed: Bed, reference: bytes) -> Optional[dict]:
    if shutil.which("redis-server") is None:
        return None
    if not _REDIS:
        _REDIS["port"] = free_port()
        start_redis(bed)
        ready = os.path.join(bed.work, "server-redis.ready")
        server = bed.spawn([os.path.join(bed.bin, "ferry-server"), "--listen", "127.0.0.1:0",
                            "--admin-listen", "off", "--store", f"redis://127.0.0.1:{_REDIS['port']}",
                            "--heartbeat-timeout", "3s", "--reaper-scan-interval", "500ms",
                            "--ready-file", ready], "server-redis")
        _REDIS["address"] = f"127.0.0.1:{wait_ready(ready, server)['grpc_port']}"
        saved = bed.address
        bed.address = _REDIS["address"]
        bed.publish("redis-source-a", "loops/redis")
        bed.publish("redis-source-b", "loops/redis")
        bed.address = saved
    delay = bed.rng.uniform(0, 2)
    time.sleep(delay)  # the fault's random moment
    _REDIS["proc"].kill()
    time.sleep(bed.rng.uniform(0, 2))  # how long redis stays down
    start_redis(bed)
    t0 = time.monotonic()
    count = 0
    while time.monotonic() - t0 < 10 and count != 2:
        count = ready_workers(bed, _REDIS["address"], "loops/redis")
        if count != 2:
            time.sleep(0.1)  # polling the server for the re-published records
    back_s = time.monotonic() - t0
    error = None if count == 2 else f"{count} of 2 sources READY 10 s after redis came back"
    if error is None:
        outdir = tempfile.mkdtemp(dir=bed.work, prefix="out-")
        out = os.path.join(outdir, "model.safetensors")
        saved = bed.address
        bed.address = _REDIS["address"]
        r = subprocess.run(bed.pull_argv("loops/redis", out), capture_output=True, timeout=120)
        bed.address = saved
        error = check_output(out, reference, allowed_missing=False) if r.returncode == 0 else \
            f"pull after the restart failed: {r.stderr.decode()[-300:]}"
        shutil.rmtree(outdir)
    return {"delay_s": round(delay, 4), "ready_again_s": round(back_s, 3), "killed": True,
            "exit": 0, "error": error}


_REPLICAS: dict = {}


def start_replica(bed: Bed, port: int, name: str) -> Child:
    ready = os.path.join(bed.work, f"{name}.ready")
    if os.path.exists(ready):
        os.unlink(ready)
    child = bed.spawn([os.path.join(bed.bin, "ferry-server"), "--listen", f"127.0.0.1:{port}",
                       "--admin-listen", "off", "--store", f"redis://127.0.0.1:{_REDIS['port']}",
                       "--heartbeat-timeout", "3s", "--reaper-scan-interval", "500ms",
                       "--ready-file", ready], name)
    wait_ready(ready, child)
    return child


def trial_replica_kill(bed: Bed) -> Optional[dict]:
    if shutil.which("redis-server") is None:
        return None
    if not _REDIS:
        _REDIS["port"] = free_port()
        start_redis(bed)
    if not _REPLICAS:
        _REPLICAS["a_port"], _REPLICAS["b_port"] = free_port(), free_port()
        _REPLICAS["a"] = start_replica(bed, _REPLICAS["a_port"], "replica-a")
        _REPLICAS["b"] = start_replica(bed, _REPLICAS["b_port"], "replica-b")
        saved = bed.address
        bed.address = f"127.0.0.1:{_REPLICAS['a_port']}"
        bed.publish("replica-source-a", "loops/replicas")
        bed.publish("replica-source-b", "loops/replicas")
        bed.address = saved
    via_b = f"127.0.0.1:{_REPLICAS['b_port']}"
    delay = bed.rng.uniform(0, 2)
    time.sleep(delay)  # the fault's random moment
    _REPLICAS["a"].kill()
    listed_while_down = ready_workers(bed, via_b, "loops/replicas")
    down = bed.rng.uniform(0, 5)  # past the 3 s heartbeat timeout in some trials
    time.sleep(down)  # how long the replica stays down
    _REPLICAS["a"] = start_replica(bed, _REPLICAS["a_port"], "replica-a")
    t0 = time.monotonic()
    restarted_ms = int(time.time() * 1000)
    count = 0
    while time.monotonic() - t0 < 10 and count != 2:
        # A heartbeat that went through the new replica, not a record still fresh from before.
        count = ready_workers(bed, via_b, "loops/replicas", since_ms=restarted_ms)
        if count != 2:
            time.sleep(0.1)  # polling replica B for the sources' next heartbeats
    error = None
    if listed_while_down != 2:
        error = f"replica B listed {listed_while_down} of 2 READY sources right after A died"
    elif count != 2:
        error = f"{count} of 2 sources heartbeat through the restarted A within 10 s"
    return {"delay_s": round(delay, 4), "down_s": round(down, 3),
            "ready_again_s": round(time.monotonic() - t0, 3), "killed": True, "exit": 0,
            "error": error}


def proc_sample(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    return {"rss_kib": int(status["VmRSS"].split()[0]), "threads": int(status["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def run_soak(args, bed: Bed) -> Dict[str, dict]:
    a = bed.publish("soak-a", "soak/model")
    b = bed.publish("soak-b", "soak/model")
    watched = {"ferry-server": bed.server, "source-a": a, "source-b": b}
    samples: Dict[str, List[dict]] = {k: [] for k in watched}
    outs = [os.path.join(bed.work, f"soak-{i}.safetensors") for i in range(2)]
    end = time.monotonic() + args.soak
    next_sample = time.monotonic()
    rounds = failures = 0
    while time.monotonic() < end:
        r = subprocess.run(bed.pull_argv("soak/model", outs[rounds % 2]), capture_output=True,
                           timeout=300)
        rounds += 1
        if rounds % 10 == 0:  # a publish and a STALE every tenth round
            if "soak-c" in bed.sources:
                bed.sources.pop("soak-c").stop()
            bed.publish("soak-c", "soak/model")
        if r.returncode != 0:
            failures += 1
            log(f"soak pull {rounds} failed: {r.stderr.decode()[-300:]}")
        if time.monotonic() >= next_sample:
            next_sample += args.sample
            for name, child in watched.items():
                s = proc_sample(child.pid)
                s.update({"workload": "soak", "process": name, "t_s": round(args.soak - (end - time.monotonic()), 1),
                          "pulls": rounds})
                samples[name].append(s)
                emit(s)
    summary: Dict[str, dict] = {"pulls": {"rounds": rounds, "failed": failures}}
    for name, ss in samples.items():
        warm = ss[min(1, len(ss) - 1)]
        last = ss[-1]
        grew = {"rss_mib": (last["rss_kib"] - warm["rss_kib"]) / 1024,
                "fds": last["fds"] - warm["fds"], "threads": last["threads"] - warm["threads"]}
        bounded = grew["rss_mib"] <= 64 and grew["fds"] <= 64 and grew["threads"] <= 16
        summary[name] = {"first": warm, "last": last, "growth": grew, "bounded": bounded,
                         "samples": len(ss)}
    return summary


def main() -> int:
    global _JSON
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build-dir", default="build")
    p.add_argument("--faults", default=",".join(FAULTS))
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--size", default="64MiB")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="3 trials of each fault, 8 MiB model")
    p.add_argument("--soak", type=float, default=0, help="run the soak for this many seconds")
    p.add_argument("--sample", type=float, default=10, help="soak sampling interval (s)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    _JSON = args.json
    if args.quick:
        args.trials, args.size = 3, "8MiB"
    args.faults = [f for f in args.faults.split(",") if f]
    for f in args.faults:
        if f not in FAULTS:
            p.error(f"unknown fault {f!r}; known: {', '.join(FAULTS)}")
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="ferry-fault-loops-")
    bed = None
    try:
        bed = Bed(args.build_dir, work, parse_size(args.size), rng)
        summary = run_soak(args, bed) if args.soak > 0 else run_faults(args, bed)
    finally:
        if bed is not None:
            bed.close()
        shutil.rmtree(work, ignore_errors=True)
    emit({"workload": "summary", **summary})
    print(json.dumps(summary, indent=1), file=sys.stderr)
    if args.soak > 0:
        ok = summary["pulls"]["failed"] == 0 and all(
            v.get("bounded", True) for k, v in summary.items() if k != "pulls")
    else:
        ok = all(v["failed"] == 0 for v in summary.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
