"""Fixtures for the Python interop tests: the real ferry-server binary on loopback.

Run through ctest (``ctest -L python``), which sets:
  FERRY_PY_GEN      folder holding the generated ``model_express`` stubs
  FERRY_SERVER_BIN  the ferry-server binary
  FERRY_CLI_BIN     the ferry CLI binary
A skipped test fails the run: ctest must never count a skip as a pass.
"""

import os
import signal
import subprocess
import sys

import pytest


def _required_env(name):
    value = os.environ.get(name)
    if not value:
        raise pytest.UsageError(
            f"{name} is not set; run these tests through ctest "
            "(ninja -C <build> ferry_python_tests && ctest --test-dir <build> -L python)"
        )
    return value


sys.path.insert(0, _required_env("FERRY_PY_GEN"))
# bench/harness.py: the one Python reader of ready files, shared with the benchmark harnesses.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))

from harness import HarnessError  # noqa: E402
from harness import wait_ready_file as _wait_ready_file  # noqa: E402
from mx_client import MxClient  # noqa: E402  (needs the stubs on sys.path)

_START_TIMEOUT_S = 15
_STOP_TIMEOUT_S = 10


def wait_ready_file(path, proc, name, log_path, timeout=_START_TIMEOUT_S):
    """The JSON object a child wrote to its ready file; kills the child and fails the test when
    it exits first or is not ready within `timeout` seconds (the message ends with its log)."""
    try:
        return _wait_ready_file(str(path), proc, name, str(log_path), timeout)
    except HarnessError as e:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pytest.fail(str(e))


def binary(env_name):
    """Path of a binary named by ``env_name``; fails (never skips) when it was not built."""
    path = _required_env(env_name)
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"{env_name}={path} does not exist or is not executable; "
            "build it first (ninja -C <build> ferry_python_tests)"
        )
    return path


class ServingChild:
    """A ``ferry`` child that serves until SIGTERM (``ferry publish``, ``ferry artifact
    publish``): started with ``--ready-file``; ``ready`` is that file's JSON."""

    def __init__(self, args, workdir, name):
        self.ready_file = workdir / f"{name}.ready"
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary("FERRY_CLI_BIN"), *args, "--ready-file", str(self.ready_file)],
            stdout=self._log, stderr=subprocess.STDOUT)
        self.ready = wait_ready_file(self.ready_file, self.proc, name, self.log_path, 30)

    def stop(self):
        """SIGTERM; the child must exit 0 (it marks its worker STALE first)."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=20) == 0, self.log_path.read_text()
        self._log.close()


class FerryServer:
    """One ferry-server child process. ``address`` is its gRPC host:port."""

    def __init__(self, workdir, extra_flags):
        workdir.mkdir()
        self.ready_file = workdir / "ready.json"
        self.log_path = workdir / "ferry-server.log"
        argv = [
            binary("FERRY_SERVER_BIN"),
            "--listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0",
            "--ready-file", str(self.ready_file),
            "--store", "memory",
            "--log-level", "warn",
            *extra_flags,
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        ports = wait_ready_file(self.ready_file, self.proc, "ferry-server", self.log_path)
        self.grpc_port = ports["grpc_port"]
        self.admin_port = ports["admin_port"]
        self.address = f"127.0.0.1:{self.grpc_port}"

    def log(self):
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self):
        """SIGTERM, then requires a clean exit (status 0) within the stop timeout."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._log.close()
            pytest.fail(f"ferry-server ignored SIGTERM for {_STOP_TIMEOUT_S}s:\n" + self.log())
        self._log.close()
        assert code == 0, f"ferry-server exited with {code} after SIGTERM:\n{self.log()}"


@pytest.fixture
def start_server(tmp_path):
    """Factory: ``start_server(*flags)`` starts a server; every one is stopped at teardown."""
    servers = []

    def start(*extra_flags):
        server = FerryServer(tmp_path / f"server{len(servers)}", extra_flags)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server):
    """A fresh ferry-server with the memory store and default timeouts."""
    return start_server()


@pytest.fixture
def client(server):
    mx = MxClient(server.address)
    yield mx
    mx.close()


# --- a skip is a failure (tests/no_skips.py) --------------------------------------------------

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from no_skips import *  # noqa: E402,F401,F403  (pytest's hooks, found by name)
