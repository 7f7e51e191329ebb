"""swarm_bed: test hosts with real, shaped links for ferry's swarm tests and benchmark. Linux,
as root; Python standard library only.

A bed is one hub network namespace holding a bridge, and one namespace per host, each joined to
the bridge by a veth pair:

  ferry-swarm-<pid>-hub     bridge br0 (no address)
  ferry-swarm-<pid>-srv     eth0 10.78.0.254/24, unshaped: ferry-server (the control plane is
                            not what the bed measures)
  ferry-swarm-<pid>-h<i>    eth0 10.78.0.<i+1>/24, shaped: one ferry process per host

A host's link is shaped in both directions with a token bucket (`tc qdisc ... tbf`): the host
side's egress limits what it uploads, the hub side's egress what it downloads, each to --rate
(1 Gbit/s by default), as a host with one NIC of that speed. The kernel here has no sch_netem,
so no latency is added beyond the bucket's queue (at most --queue-ms of buffering). Nothing
outside the bed's namespaces and loopback is addressed; cleanup() kills every process the bed
started and deletes the namespaces (which removes the links), and a bed left by a killed run is
removed by the next one (its pid is gone).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from typing import Dict, List, Optional

from harness import HarnessError, die_with_parent, pid_alive, tail, wait_ready_file

NS_PREFIX = "ferry-swarm-"
SUBNET = "10.78.0"
SERVER_ADDRESS = f"{SUBNET}.254"

def sh(argv: List[str], check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    if check and r.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} exited {r.returncode}: "
                           f"{r.stderr.decode(errors='replace').strip()}")
    return r


def remove_orphans() -> None:
    """Namespaces of beds whose harness was killed (their pid is gone)."""
    r = sh(["ip", "netns", "list"], check=False)
    for line in r.stdout.decode().splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(re.escape(NS_PREFIX) + r"(\d+)-\w+", name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            sh(["ip", "netns", "del", name], check=False)


def usable() -> Optional[str]:
    """None when this machine can build a bed, else why not (for a test's skip reason)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (Debian: iproute2)"
    return None


class Proc:
    """A process in a host's namespace; output to a log file."""

    def __init__(self, argv: List[str], ns: str, log_path: str, name: str):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log, start_new_session=True,
                                     preexec_fn=die_with_parent())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def output(self) -> str:
        return tail(self.log_path, 8000)


class Bed:
    """`hosts` shaped hosts and an unshaped server host. Use as a context manager."""

    def __init__(self, hosts: int, rate: str = "1gbit", queue_ms: int = 20,
                 workdir: Optional[str] = None):
        reason = usable()
        if reason:
            raise HarnessError(f"swarm bed: {reason}")
        remove_orphans()
        self.hosts = hosts
        self.rate = rate
        self.queue_ms = queue_ms
        self.prefix = f"{NS_PREFIX}{os.getpid()}-"
        # A folder it made itself is removed with the bed (models and outputs are large).
        self.own_work = workdir is None
        self.work = workdir or tempfile.mkdtemp(prefix="ferry-swarm-")
        self.procs: List[Proc] = []
        self.namespaces: List[str] = []
        try:
            self._build(queue_ms)
        except BaseException:
            self.cleanup()
            raise

    def ns(self, host: int) -> str:
        return f"{self.prefix}h{host}"

    def address(self, host: int) -> str:
        return f"{SUBNET}.{host + 1}"

    def _add_ns(self, name: str) -> None:
        sh(["ip", "netns", "add", name])
        self.namespaces.append(name)
        sh(["ip", "-n", name, "link", "set", "lo", "up"])

    def _link(self, ns: str, port: str, address: str) -> None:
        hub = self.prefix + "hub"
        sh(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port,
            "netns", hub])
        sh(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        sh(["ip", "-n", hub, "link", "set", port, "master", "br0"])
        sh(["ip", "-n", hub, "link", "set", port, "up"])

    def _shape(self, ns: str, dev: str, rate: str) -> None:
        sh(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
            "rate", rate, "burst", "256kb", "latency", f"{self.queue_ms}ms"])

    def set_rate(self, host: int, up: Optional[str] = None, down: Optional[str] = None) -> None:
        """Reshapes one host's link: `up` what it uploads, `down` what it downloads."""
        if up:
            self._shape(self.ns(host), "eth0", up)
        if down:
            self._shape(self.prefix + "hub", f"p{host}", down)

    def _build(self, queue_ms: int) -> None:
        hub = self.prefix + "hub"
        self._add_ns(hub)
        sh(["ip", "-n", hub, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", hub, "link", "set", "br0", "up"])
        self._add_ns(self.prefix + "srv")
        self._link(self.prefix + "srv", "psrv", SERVER_ADDRESS)
        for h in range(self.hosts):
            self._add_ns(self.ns(h))
            self._link(self.ns(h), f"p{h}", self.address(h))
            self.set_rate(h, up=self.rate, down=self.rate)

    def spawn(self, host: Optional[int], argv: List[str], name: str) -> Proc:
        """Starts argv in host `host`'s namespace (None: the server's)."""
        ns = self.prefix + "srv" if host is None else self.ns(host)
        proc = Proc(argv, ns, os.path.join(self.work, f"{name}.log"), name)
        self.procs.append(proc)
        return proc

    def wait_file(self, path: str, proc: Proc, timeout: float = 60) -> Dict:
        """The JSON a ferry child writes with --ready-file (harness.wait_ready_file)."""
        return wait_ready_file(path, proc.proc, proc.name, proc.log_path, timeout)

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception:  # keep removing the rest
                pass
        self.procs = []
        for name in reversed(self.namespaces):
            sh(["ip", "netns", "del", name], check=False)
        self.namespaces = []
        if self.own_work:
            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> "Bed":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def write_model(path: str, size: int, seed: int, tensors: int = 16) -> bytes:
    """A safetensors file of `size` random data bytes in `tensors` U8 tensors; returns the data."""
    import random
    import struct
    rng = random.Random(seed)
    per = size // tensors
    header: Dict[str, dict] = {}
    offset = 0
    for i in range(tensors):
        n = per if i < tensors - 1 else size - offset
        header[f"layers.{i}.weight"] = {"dtype": "U8", "shape": [n],
                                        "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text)) % 8)
    data = rng.randbytes(size)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(data)
    return data


class Swarm:
    """ferry-server and ferry processes on a Bed: the steps every swarm test and benchmark
    takes (publish an original source, start targets, read their results)."""

    def __init__(self, bed: Bed, bin_dir: str, model_path: str, model: str = "swarm/model",
                 heartbeat_timeout: str = "3s"):
        self.bed = bed
        self.bin = bin_dir
        self.model_path = model_path
        self.model = model
        ready = os.path.join(bed.work, f"server-{len(bed.procs)}.ready")
        if os.path.exists(ready):
            os.unlink(ready)
        self.server = bed.spawn(None, [os.path.join(bin_dir, "ferry-server"), "--listen",
                                       f"{SERVER_ADDRESS}:0", "--admin-listen", "off",
                                       "--heartbeat-timeout", heartbeat_timeout,
                                       "--reaper-scan-interval", "500ms", "--ready-file", ready],
                                "server")
        port = bed.wait_file(ready, self.server)["grpc_port"]
        self.address = f"{SERVER_ADDRESS}:{port}"

    def common(self, host: int) -> List[str]:
        return ["--server", self.address, "--model", self.model, "--transport", "tcp",
                "--data-listen", f"{self.bed.address(host)}:0",
                "--advertise-host", self.bed.address(host)]

    def publish(self, host: int, name: str, extra: Optional[List[str]] = None,
                command: Optional[List[str]] = None) -> Proc:
        """Starts `ferry publish MODEL` on `host` and waits until it is READY. `command` replaces
        [ferry, publish] with another program taking the same flags (the tests' fault source)."""
        ready = os.path.join(self.bed.work, f"{name}.ready")
        if os.path.exists(ready):
            os.unlink(ready)
        command = command or [os.path.join(self.bin, "ferry"), "publish"]
        argv = command + [self.model_path] + self.common(host) + [
            "--worker-listen", f"{self.bed.address(host)}:0", "--heartbeat-interval", "1",
            "--ready-file", ready] + (extra or [])
        proc = self.bed.spawn(host, argv, name)
        proc.ready = self.bed.wait_file(ready, proc)
        return proc

    def pull(self, host: int, name: str, out: str, extra: Optional[List[str]] = None,
             then_publish: bool = False) -> Proc:
        extra = list(extra or [])
        if "--progress" not in extra:
            extra += ["--progress", "none"]
        argv = [os.path.join(self.bin, "ferry"), "pull"] + self.common(host) + [
            "--json", "-o", out] + extra
        if then_publish:
            argv += ["--then-publish", "--worker-listen", f"{self.bed.address(host)}:0",
                     "--heartbeat-interval", "1",
                     "--ready-file", os.path.join(self.bed.work, f"{name}.ready")]
        return self.bed.spawn(host, argv, name)
