"""Fixtures for the tests that drive ferry-server with ModelExpress's released Python client.

These run in the interop venv (scripts/interop-venv.sh: modelexpress==0.7.0 and its pinned
runtime), never beside tests/python's generated stubs: both define model_express.p2p in
protobuf's one descriptor pool. Run through ctest (``ctest -R mx_release``), which sets
FERRY_SERVER_BIN. A skipped test fails the run.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))

from harness import HarnessError  # noqa: E402
from harness import wait_ready_file as _wait_ready_file  # noqa: E402

_START_TIMEOUT_S = 15
_STOP_TIMEOUT_S = 10


def _server_binary():
    path = os.environ.get("FERRY_SERVER_BIN")
    if not path:
        raise pytest.UsageError(
            "FERRY_SERVER_BIN is not set; run these tests through ctest "
            "(ninja -C build ferry-server && ctest --test-dir build -R mx_release)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"FERRY_SERVER_BIN={path} is not executable; build it (ninja -C build "
                    "ferry-server)")
    return path


def _free_loopback_port():
    # Free a moment ago; the child binds it right after (redis-server cannot take port 0).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A real redis-server on a loopback port, without persistence, and a tiny RESP client."""

    def __init__(self, workdir):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.access(binary, os.X_OK):
            pytest.fail("redis-server not found; install it with scripts/install-deps.sh "
                        "(Debian package redis-server)")
        workdir.mkdir()
        self.port = _free_loopback_port()
        self.log_path = workdir / "redis.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir)],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited with {self.proc.returncode}:\n"
                            + self.log_path.read_text(errors="replace"))
            try:
                if self.call("PING") == b"PONG":
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"redis-server on port {self.port} did not answer PING in "
                                f"{_START_TIMEOUT_S} s")
                time.sleep(0.02)  # polling for the child's listener
        self.url = f"redis://127.0.0.1:{self.port}"

    def call(self, *args):
        """One command; the reply as bytes, int, list or None. Raises RuntimeError on -ERR."""
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"".join(parts))
            return _read_reply(s.makefile("rb"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=_STOP_TIMEOUT_S)
        self._log.close()


def _read_reply(f):
    line = f.readline()
    if not line:
        raise OSError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise RuntimeError(f"unexpected redis reply {line!r}")


class FerryServer:
    """One ferry-server child; ``address`` is its gRPC host:port."""

    def __init__(self, workdir, store):
        workdir.mkdir()
        self.ready_file = workdir / "ready.json"
        self.log_path = workdir / "ferry-server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [_server_binary(), "--listen", "127.0.0.1:0", "--admin-listen", "off",
             "--ready-file", str(self.ready_file), "--store", store, "--log-level", "warn"],
            stdout=self._log, stderr=subprocess.STDOUT)
        try:
            ports = _wait_ready_file(str(self.ready_file), self.proc, "ferry-server",
                                     str(self.log_path), _START_TIMEOUT_S)
        except HarnessError as e:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            pytest.fail(str(e))
        self.address = f"127.0.0.1:{ports['grpc_port']}"
        self.stopped = False

    def stop(self):
        """SIGTERM; requires a clean exit. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = "killed after ignoring SIGTERM"
        self._log.close()
        assert code == 0, f"ferry-server exited with {code}:\n" + self.log_path.read_text()


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path / "redis")
    yield r
    r.stop()


@pytest.fixture
def start_server(tmp_path):
    """Factory: ``start_server(store)`` starts a ferry-server; all are stopped at teardown."""
    servers = []

    def start(store="memory"):
        server = FerryServer(tmp_path / f"server{len(servers)}", store)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(params=["memory", "redis"])
def store(request, tmp_path):
    """Each test taking ``store`` runs once per backend: the --store value to pass."""
    if request.param == "memory":
        yield "memory"
        return
    r = Redis(tmp_path / "redis")
    yield r.url
    r.stop()


# --- a skip is a failure (tests/no_skips.py) --------------------------------------------------

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from no_skips import *  # noqa: E402,F401,F403  (pytest's hooks, found by name)
