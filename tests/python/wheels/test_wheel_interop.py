"""ferry.torch against NIXL and Mooncake TransferEngine peers, with ModelExpress 0.7.0's own code
on the other side, across real processes and the real ferry-server binary.

Both sides of each test run in the interop venv (FERRY_INTEROP_PYTHON, made by
scripts/interop-venv.sh, which ctest runs first as a fixture); the missing-wheel test runs
ferry here, in Debian's python, which has neither wheel. Without the venv every test skips,
and conftest.py counts a skip as a failure.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, os.environ["FERRY_PYTHON_PACKAGE"])
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import ferry  # noqa: E402
import ferry.torch  # noqa: E402
import tiny_transformer  # noqa: E402
from conftest import wait_ready_file  # noqa: E402

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wheel_peer.py")
MODEL = "tiny-interop"
TENSORS = 29  # TinyTransformer(dim=64, layers=2): state_dict names, the tied head included
START_TIMEOUT_S = 90


@pytest.fixture
def venv_python():
    path = os.environ.get("FERRY_INTEROP_PYTHON", "")
    if not path or not os.access(path, os.X_OK):
        pytest.skip(f"FERRY_INTEROP_PYTHON={path!r} is not an interpreter; run "
                    f"scripts/interop-venv.sh (ctest runs it as the interop_venv fixture)")
    return path


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.environ["FERRY_PYTHON_PACKAGE"]
    env["FERRY_LOG_LEVEL"] = "warn"
    env.pop("MX_P2P_METADATA", None)
    return env


class Peer:
    """wheel_peer.py ROLE as a child process; sources serve until stop()."""

    def __init__(self, python, role, server, workdir, name, *extra):
        self.out = str(workdir / f"{name}.json")
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [python, PEER, role, "--server", server.address, "--model", MODEL, "--out",
             self.out, *extra], stdout=self._log, stderr=subprocess.STDOUT, env=_env())
        self.result = wait_ready_file(self.out, self.proc, name, self.log_path,
                                      START_TIMEOUT_S)
        self.checkpoint = self.out + ".pt"

    def log(self):
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self):
        """SIGTERM; the peer must exit 0. Idempotent."""
        if self._log.closed:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        log = self.log()
        self._log.close()
        assert code == 0, f"{self.log_path.name} exited with {code}:\n{log}"

    def stopped(self):
        """Stops the peer; what it wrote when it stopped (mx-nixl-p2p-source: the calls its
        worker server served, and whether a read lease was outstanding)."""
        self.stop()
        with open(self.out + ".stopped") as f:
            return json.load(f)


def run_peer(python, role, server, workdir, name, *extra):
    """A target role run to completion; its JSON result."""
    out = workdir / f"{name}.json"
    proc = subprocess.run(
        [python, PEER, role, "--server", server.address, "--model", MODEL, "--out", str(out),
         *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(), timeout=180)
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")
    return json.loads(out.read_text())


@pytest.fixture
def peers():
    started = []
    yield started
    for p in started:
        p.stop()


def source(peers, *args):
    p = Peer(*args)
    peers.append(p)
    return p


def test_modelexpress_target_reads_a_ferry_nixl_source(venv_python, server, tmp_path, peers):
    src = source(peers, venv_python, "ferry-nixl-source", server, tmp_path, "src")
    assert src.result["backend"] == "nixl"
    assert src.result["tensors"] == TENSORS
    got = run_peer(venv_python, "mx-nixl-target", server, tmp_path, "mx", "--expect",
                   src.checkpoint)
    # ModelExpress's centralized reader: the oneof is NIXL, no worker endpoint (not P2P mode),
    # every descriptor names the torch dtype, every tensor (the tied head too) read.
    assert got["backend_metadata"] == "nixl_metadata"
    assert got["worker_grpc_endpoint"] == ""
    assert got["descriptor_dtypes"] == ["torch.float32"]
    assert got["tensors"] == TENSORS
    assert got["bytes"] == src.result["bytes"]
    assert got["equal_before"] is False and got["equal"] is True


@pytest.mark.parametrize("backend", ["auto", "nixl"])
def test_ferry_pulls_a_modelexpress_nixl_source(venv_python, server, tmp_path, peers, backend):
    src = source(peers, venv_python, "mx-nixl-source", server, tmp_path, "src")
    got = run_peer(venv_python, "ferry-pull", server, tmp_path, "pull", "--backend", backend,
                   "--expect", src.checkpoint)
    assert got["ok"] is True, got
    assert got["backend"] == "nixl"
    assert got["transport"] == "nixl (UCX, DRAM)"
    assert got["source_worker_id"] == src.result["worker_id"]
    assert got["tensors"] == TENSORS
    assert got["equal_before"] is False and got["equal"] is True
    assert "dtypes: every tensor's dtype" in got["verification"]
    assert "checksums: none: the source publishes no checksum" in got["verification"]


@pytest.mark.parametrize("backend", ["auto", "nixl"])
def test_ferry_pulls_a_modelexpress_p2p_source_under_a_read_lease(venv_python, server, tmp_path,
                                                                 peers, backend):
    # ModelExpress's default mode: the record names endpoints only; the manifest and a read
    # lease come from its WorkerGrpcServer, the NIXL metadata from its agent's listener.
    src = source(peers, venv_python, "mx-nixl-p2p-source", server, tmp_path, "src")
    got = run_peer(venv_python, "ferry-pull", server, tmp_path, "pull", "--backend", backend,
                   "--expect", src.checkpoint)
    assert got["ok"] is True, got
    assert got["backend"] == "nixl"
    assert got["transport"] == "nixl (UCX, DRAM), P2P metadata"
    assert got["source_worker_id"] == src.result["worker_id"]
    assert got["source_endpoint"] == src.result["worker_grpc_endpoint"]
    assert got["tensors"] == TENSORS
    assert got["equal_before"] is False and got["equal"] is True
    assert "dtypes: every tensor's dtype" in got["verification"]
    assert "checksums: none: the source publishes no checksum" in got["verification"]
    # The source's side: one lease taken with the manifest and the same one released (ferry
    # releases it after the read), none outstanding; no other manifest call.
    stopped = src.stopped()
    calls = stopped["served"]
    assert [c["rpc"] for c in calls] == ["PrepareTensorRead", "ReleaseTensorRead"], calls
    lease = calls[0]["lease_id"]
    assert lease and calls[1]["lease_id"] == lease
    assert (f"lease: read lease {lease} held from PrepareTensorRead to ReleaseTensorRead"
            in got["verification"])
    assert stopped["drain"] == "no read lease outstanding"


def test_ferry_reads_a_p2p_source_without_leases_from_its_manifest(venv_python, server,
                                                                    tmp_path, peers):
    # A source from before read leases answers PrepareTensorRead UNIMPLEMENTED: ferry reads the
    # manifest from GetTensorManifest, as ModelExpress's targets do, and says it was unleased.
    src = source(peers, venv_python, "mx-nixl-p2p-source", server, tmp_path, "src", "--no-lease")
    got = run_peer(venv_python, "ferry-pull", server, tmp_path, "pull", "--expect",
                   src.checkpoint)
    assert got["ok"] is True, got
    assert got["transport"] == "nixl (UCX, DRAM), P2P metadata"
    assert got["equal_before"] is False and got["equal"] is True
    assert ("lease: none: the source answered PrepareTensorRead UNIMPLEMENTED"
            in got["verification"])
    assert [c["rpc"] for c in src.stopped()["served"]] == ["GetTensorManifest"]


def test_a_p2p_manifest_that_does_not_fit_is_refused_before_any_byte_moves(venv_python, server,
                                                                           tmp_path, peers):
    src = source(peers, venv_python, "mx-nixl-p2p-source", server, tmp_path, "src")
    got = run_peer(venv_python, "ferry-pull", server, tmp_path, "pull", "--dim", "32")
    assert got["error"] == "FailedPreconditionError", got
    assert "every source refused" in got["message"]
    assert "worker " + src.result["worker_id"] + " (nixl, P2P metadata) publishes" in got["message"]
    assert "this model's tensor has" in got["message"]
    assert got["unchanged"] is True
    # The lease taken with the manifest is released all the same.
    stopped = src.stopped()
    assert [c["rpc"] for c in stopped["served"]] == ["PrepareTensorRead", "ReleaseTensorRead"]
    assert stopped["drain"] == "no read lease outstanding"


def test_worker_service_messages_match_the_proto():
    # ferry builds the WorkerService messages it sends and reads at run time (its package ships
    # no stubs); they must be proto/model_express/p2p.proto's, field for field. FERRY_PY_GEN's
    # stubs are generated from that file.
    from model_express import p2p_pb2
    from ferry import _mx_worker

    def fields(descriptor):
        return sorted((f.name, f.number, f.type, f.label,
                       f.containing_oneof.name if f.containing_oneof else None,
                       f.message_type.full_name if f.message_type else None)
                      for f in descriptor.fields)

    messages = _mx_worker.worker_messages()
    assert len(messages) == 7
    for name, cls in messages.items():
        proto = p2p_pb2.DESCRIPTOR.message_types_by_name[name]
        assert cls.DESCRIPTOR.full_name == proto.full_name
        assert fields(cls.DESCRIPTOR) == fields(proto), name


def test_ferry_pulls_a_ferry_nixl_source(venv_python, server, tmp_path, peers):
    src = source(peers, venv_python, "ferry-nixl-source", server, tmp_path, "src")
    got = run_peer(venv_python, "ferry-pull", server, tmp_path, "pull", "--expect",
                   src.checkpoint)
    assert got["ok"] is True, got
    assert got["backend"] == "nixl"
    assert got["equal_before"] is False and got["equal"] is True
    # The tied head shares the embedding's bytes: read once.
    tied = 256 * 64 * 4
    assert got["bytes"] == src.result["bytes"] - tied


def test_ferry_pulls_a_transfer_engine_source(venv_python, server, tmp_path, peers):
    src = source(peers, venv_python, "te-source", server, tmp_path, "src")
    assert src.result["session_id"].startswith("127.0.0.1:")
    got = run_peer(venv_python, "ferry-pull", server, tmp_path, "pull", "--expect",
                   src.checkpoint)
    assert got["ok"] is True, got
    assert got["backend"] == "transfer_engine"
    assert got["transport"] == "transfer_engine (tcp)"
    assert got["equal_before"] is False and got["equal"] is True
    # SGLang's descriptors carry no dtype: the report says what could not be checked.
    assert f"dtypes: 0 of {TENSORS} (the source publishes no dtype" in got["verification"]


def test_a_transfer_engine_read_from_a_frozen_source_fails_cleanly(venv_python, server,
                                                                    tmp_path, peers):
    # Mooncake cannot cancel a read it started, and its sync read has no deadline ferry can
    # set: MC_TRANSFER_TIMEOUT (5 or 30) made no difference here, a frozen source failed the
    # read after 61-63 s (docs/protocol.md, known issues). What ferry promises: the read fails,
    # the report names the source, and nothing is reported pulled.
    src = source(peers, venv_python, "te-source", server, tmp_path, "src")
    src.proc.send_signal(signal.SIGSTOP)
    try:
        got = run_peer(venv_python, "ferry-pull", server, tmp_path, "pull", "--backend",
                       "transfer_engine")
    finally:
        src.proc.send_signal(signal.SIGCONT)
    assert got["ok"] is False, got
    assert got["bytes"] == 0
    [attempt] = got["attempts"]
    assert attempt["backend"] == "transfer_engine"
    assert "batch_transfer_sync_read" in attempt["error"]
    assert src.result["session_id"] in attempt["error"]


def test_size_mismatch_is_refused_before_any_byte_moves(venv_python, server, tmp_path, peers):
    source(peers, venv_python, "mx-nixl-source", server, tmp_path, "src")
    got = run_peer(venv_python, "ferry-pull", server, tmp_path, "pull", "--dim", "32")
    assert got["error"] == "FailedPreconditionError", got
    assert "every source refused" in got["message"]
    assert "(nixl) publishes" in got["message"] and "this model's tensor has" in got["message"]


def test_a_backend_no_source_offers_is_no_source(venv_python, server, tmp_path, peers):
    source(peers, venv_python, "mx-nixl-source", server, tmp_path, "src")
    got = run_peer(venv_python, "ferry-pull", server, tmp_path, "pull", "--backend",
                   "transfer_engine")
    assert got["ok"] is False
    assert got["outcome"] == "no_source"
    assert "offers backend 'transfer_engine' (they offer: nixl)" in got["message"]


def test_missing_wheel_names_the_package(venv_python, server, tmp_path, peers):
    source(peers, venv_python, "mx-nixl-source", server, tmp_path, "src")
    model = tiny_transformer.build(2)
    # This interpreter is Debian's: ferry and torch, no NIXL.
    with pytest.raises(ferry.FailedPreconditionError) as e:
        ferry.torch.pull_into(model, {"model_name": MODEL, "dtype": "float32"},
                              server=server.address, backend="nixl")
    assert "every source refused" in str(e.value)
    assert "pip install nixl==1.5.1" in str(e.value)
    with pytest.raises(ferry.InvalidArgumentError, match="backend 'nxl' is not one of"):
        ferry.torch.pull_into(model, {"model_name": MODEL}, server=server.address,
                              backend="nxl")
    with pytest.raises(ferry.FailedPreconditionError, match="pip install nixl==1.5.1"):
        ferry.torch.publish(model, {"model_name": MODEL}, server=server.address,
                            backend="nixl")


def test_missing_wheel_is_refused_before_a_p2p_source_is_asked_for_a_lease(
        venv_python, server, tmp_path, peers):
    src = source(peers, venv_python, "mx-nixl-p2p-source", server, tmp_path, "src")
    model = tiny_transformer.build(2)
    # Debian's interpreter: no NIXL. Nothing is asked of the source's worker endpoint.
    with pytest.raises(ferry.FailedPreconditionError, match="pip install nixl==1.5.1"):
        ferry.torch.pull_into(model, {"model_name": MODEL, "dtype": "float32"},
                              server=server.address)
    assert src.stopped()["served"] == []


def test_backend_ferry_refuses_a_nixl_record(venv_python, server, tmp_path, peers):
    source(peers, venv_python, "mx-nixl-source", server, tmp_path, "src")
    got = run_peer(venv_python, "ferry-pull", server, tmp_path, "pull", "--backend", "ferry")
    assert got["error"] == "FailedPreconditionError", got
    assert "neither a worker endpoint nor ferry transfer info" in got["message"]


def test_missing_transfer_engine_wheel_names_the_package(venv_python, server, tmp_path, peers):
    source(peers, venv_python, "te-source", server, tmp_path, "src")
    model = tiny_transformer.build(2)
    # Debian's interpreter: no mooncake. auto picks the TransferEngine path from the record.
    with pytest.raises(ferry.FailedPreconditionError) as e:
        ferry.torch.pull_into(model, {"model_name": MODEL, "dtype": "float32"},
                              server=server.address)
    assert "backend 'transfer_engine' needs Mooncake's TransferEngine" in str(e.value)
    assert "pip install mooncake-transfer-engine-non-cuda==0.3.13.post1" in str(e.value)
