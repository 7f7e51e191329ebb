"""ferry's own sources and targets in a ModelExpress 0.7.0 fleet: `ferry publish --topology`
publishes WorkerMetadata.topology and heartbeats with source_load, as the released client reads
them; `ferry pull --topology` tries the nearest source first."""

import json
import os
import signal
import struct
import subprocess

import pytest

import mx_release
from conftest import HarnessError, _wait_ready_file

p2p_pb2 = mx_release.module("p2p_pb2")
client_mod = mx_release.module("client")
selection = mx_release.module("source_selection")

MODEL = "interop/topology"
_TENSORS = [("model.embed_tokens.weight", "BF16", [64, 32]), ("lm_head.weight", "F32", [16, 8])]
_ELEMENT = {"BF16": 2, "F32": 4}


def _cli():
    path = os.environ.get("FERRY_CLI_BIN")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"FERRY_CLI_BIN={path!r} is not an executable; build it (ninja -C build "
                    "ferry) and run through ctest")
    return path


def write_safetensors(path):
    header, offset = {}, 0
    for name, dtype, shape in _TENSORS:
        size = _ELEMENT[dtype] * shape[0] * shape[1]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(i % 251 for i in range(offset)))


def _tensors(path):
    """{name: (dtype, shape, bytes)} of a safetensors file (its header's layout aside)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    return {name: (t["dtype"], t["shape"], data[t["data_offsets"][0]:t["data_offsets"][1]])
            for name, t in header.items() if name != "__metadata__"}


class Source:
    """`ferry publish` serving the model until stop()."""

    def __init__(self, server, model, workdir, name, topology):
        self.ready_file = workdir / f"{name}.ready"
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        argv = [_cli(), "publish", str(model), "--model", MODEL, "--tp", "1", "--server",
                server.address, "--transport", "tcp", "--data-listen", "127.0.0.1:0",
                "--worker-listen", "127.0.0.1:0", "--ready-file", str(self.ready_file)]
        for k, v in topology.items():
            argv += ["--topology", f"{k}={v}"]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self.ready = _wait_ready_file(str(self.ready_file), self.proc, name,
                                          str(self.log_path), 30)
        except HarnessError as e:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            pytest.fail(str(e))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=20) == 0, self.log_path.read_text()
        self._log.close()


@pytest.fixture
def sources(tmp_path):
    started = []

    def start(server, name, topology):
        model = tmp_path / "model.safetensors"
        if not model.exists():
            write_safetensors(model)
        s = Source(server, model, tmp_path, name, topology)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def identity():
    return p2p_pb2.SourceIdentity(model_name=MODEL, tensor_parallel_size=1,
                                  pipeline_parallel_size=1, expert_parallel_size=1)


NEAR = {"region": "us", "block": "b1", "rack": "r3"}
FAR = {"region": "us", "block": "b2", "rack": "r3"}  # another block reusing the rack's name


def test_ferry_sources_in_modelexpress_selectors(store, start_server, sources, monkeypatch):
    server = start_server(store)
    near = sources(server, "near", NEAR)
    far = sources(server, "far", FAR)
    mx = client_mod.MxClient(server.address)
    try:
        refs = list(mx.list_sources(identity(), p2p_pb2.SOURCE_STATUS_READY).instances)
    finally:
        mx.close()
    by_worker = {r.worker_id: r for r in refs}
    assert set(by_worker) == {near.ready["worker_id"], far.ready["worker_id"]}
    assert dict(by_worker[near.ready["worker_id"]].topology) == NEAR
    assert dict(by_worker[far.ready["worker_id"]].topology) == FAR
    for r in refs:  # ferry sources report 0 ("idle"), never leave the field unset
        assert r.HasField("source_load") and r.source_load == 0.0
    monkeypatch.setenv("MX_P2P_TOPOLOGY", json.dumps(NEAR))
    for target in ("t1", "t2", "t3", "t4"):
        ctx = type("Ctx", (), {"identity": identity(), "worker_id": target, "worker_rank": 0})
        ordered = selection.get_selector("topology_aware").order(refs, ctx)
        assert ordered[0].worker_id == near.ready["worker_id"]


def test_ferry_pull_tries_the_nearest_source_first(start_server, sources, tmp_path):
    server = start_server("memory")
    far = sources(server, "far", FAR)
    near = sources(server, "near", NEAR)
    assert far.ready["worker_id"] != near.ready["worker_id"]
    for target in ("t1", "t2", "t3", "t4"):
        out = tmp_path / f"{target}.safetensors"
        argv = [_cli(), "pull", "--model", MODEL, "--tp", "1", "--server", server.address,
                "--transport", "tcp", "-o", str(out), "--json", "--progress", "none",
                "--target-worker-id", target]
        for k, v in NEAR.items():
            argv += ["--topology", f"{k}={v}"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["source"]["worker_id"] == near.ready["worker_id"], summary
        assert len(summary["attempts"]) == 1
        assert _tensors(out) == _tensors(tmp_path / "model.safetensors")


def test_ferry_cli_rejects_a_malformed_topology(start_server, tmp_path):
    server = start_server("memory")
    done = subprocess.run([_cli(), "pull", "--model", MODEL, "--server", server.address, "-o",
                           str(tmp_path / "x"), "--topology", "rack"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "--topology 'rack' is not KEY=VALUE" in done.stderr
