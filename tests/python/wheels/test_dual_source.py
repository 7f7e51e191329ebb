"""One ferry source serving ferry's engine and NIXL under one record (publish(backend=
"ferry+nixl")), read by every kind of target: ModelExpress 0.7.0's own P2P metadata read
(its worker_server client functions and NixlTransferManager), ferry.torch.pull_into with
backend "auto" (ferry's engine, checksums) and "nixl" (NIXL's P2P path), and the ferry CLI.

Runs as test_wheel_interop.py does: the peers in the interop venv (FERRY_INTEROP_PYTHON), real
ferry-server, real processes.
"""

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.environ["FERRY_PYTHON_PACKAGE"])
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import ferry  # noqa: E402
import ferry.torch  # noqa: E402
import tiny_transformer  # noqa: E402
from conftest import binary  # noqa: E402
from test_wheel_interop import (MODEL, TENSORS, peers, run_peer, source,  # noqa: E402,F401
                                venv_python)

TIED = 256 * 64 * 4  # the tied head shares the embedding's bytes


def test_modelexpress_p2p_target_reads_a_ferry_dual_source(venv_python, server, tmp_path,
                                                           peers):
    src = source(peers, venv_python, "ferry-dual-source", server, tmp_path, "src")
    assert src.result["backend"] == "ferry+nixl"
    assert src.result["tensors"] == TENSORS
    got = run_peer(venv_python, "mx-nixl-p2p-target", server, tmp_path, "mx", "--expect",
                   src.checkpoint)
    # The record is ModelExpress's P2P metadata layout: ferry's worker endpoint, the NIXL
    # listener (an address, as NIXL dials) and agent, no nixl_metadata.
    assert got["backend_metadata"] is None
    assert got["worker_grpc_endpoint"] == src.result["endpoint"]
    assert got["metadata_endpoint"].startswith("127.0.0.1:")
    assert got["agent_name"].startswith("ferry-nixl-rank0-")
    # The manifests ferry's endpoint served agree with the record and with each other.
    assert got["manifest_agent_name"] == got["agent_name"]
    assert got["manifest_metadata_endpoint"] == got["metadata_endpoint"]
    assert got["manifest_worker_id"] == src.result["worker_id"]
    assert got["prefetched_equals_leased"] is True
    assert got["descriptor_dtypes"] == ["torch.float32"]
    assert got["descriptors_match_source"] is True
    assert len(got["lease_id"]) == 32
    assert got["tensors"] == TENSORS
    assert got["bytes"] == src.result["bytes"]
    assert got["equal_before"] is False and got["equal"] is True


def test_ferry_auto_reads_a_dual_source_with_ferrys_engine(venv_python, server, tmp_path,
                                                           peers):
    src = source(peers, venv_python, "ferry-dual-source", server, tmp_path, "src")
    got = run_peer(venv_python, "ferry-pull", server, tmp_path, "pull", "--expect",
                   src.checkpoint)
    assert got["ok"] is True, got
    assert got["backend"] == "ferry"
    assert got["transport"] in ("tcp", "ucx"), got["transport"]
    assert "nixl" not in got["transport"]
    assert got["verification"].startswith("xxh3-64 checksum of every tensor")
    assert got["source_worker_id"] == src.result["worker_id"]
    assert got["source_endpoint"] == src.result["endpoint"]
    assert got["equal_before"] is False and got["equal"] is True


def test_ferry_nixl_backend_reads_a_dual_source_over_nixl_p2p(venv_python, server, tmp_path,
                                                              peers):
    src = source(peers, venv_python, "ferry-dual-source", server, tmp_path, "src")
    got = run_peer(venv_python, "ferry-pull", server, tmp_path, "pull", "--backend", "nixl",
                   "--expect", src.checkpoint)
    assert got["ok"] is True, got
    assert got["backend"] == "nixl"
    assert got["transport"] == "nixl (UCX, DRAM), P2P metadata"
    assert got["source_endpoint"] == src.result["endpoint"]
    # The lease ferry's endpoint granted, held for the read and released.
    assert "lease: read lease " in got["verification"]
    assert "held from PrepareTensorRead to ReleaseTensorRead" in got["verification"]
    assert got["bytes"] == src.result["bytes"] - TIED
    assert got["equal_before"] is False and got["equal"] is True


def test_ferry_auto_still_reads_a_modelexpress_p2p_source_over_nixl(venv_python, server,
                                                                    tmp_path, peers):
    # The records look alike; ModelExpress's endpoint answers ferry's question UNIMPLEMENTED.
    src = source(peers, venv_python, "mx-nixl-p2p-source", server, tmp_path, "src")
    got = run_peer(venv_python, "ferry-pull", server, tmp_path, "pull", "--expect",
                   src.checkpoint)
    assert got["ok"] is True, got
    assert got["backend"] == "nixl"
    assert got["transport"] == "nixl (UCX, DRAM), P2P metadata"


def _cli_pull(server, out):
    return subprocess.run(
        [binary("FERRY_CLI_BIN"), "--server", server.address, "pull", "--model", MODEL,
         "--dtype", "float32", "-o", str(out)], capture_output=True, text=True, timeout=90)


def test_ferry_cli_pulls_a_dual_source_and_names_why_it_cannot_pull_modelexpress(
        venv_python, server, tmp_path, peers):
    import torch
    src = source(peers, venv_python, "ferry-dual-source", server, tmp_path, "src")
    out = tmp_path / "pulled.safetensors"
    proc = _cli_pull(server, out)
    assert proc.returncode == 0, proc.stderr
    with open(out, "rb") as f:  # the safetensors file `ferry pull` wrote (F32 tensors)
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        data = f.read()
    header.pop("__metadata__", None)
    expected = torch.load(src.checkpoint)
    assert sorted(header) == sorted(expected)
    for name, t in expected.items():
        begin, end = header[name]["data_offsets"]
        got = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.float32)
        assert torch.equal(got.reshape(t.shape), t), name
    src.stop()
    peers.remove(src)

    source(peers, venv_python, "mx-nixl-p2p-source", server, tmp_path, "mx")
    proc = _cli_pull(server, tmp_path / "never.safetensors")
    assert proc.returncode != 0
    assert "GetTransferInfo" in proc.stderr and "UNIMPLEMENTED" in proc.stderr, proc.stderr
    assert "does not serve ferry's FerryWorkerService" in proc.stderr, proc.stderr


def test_dual_backend_refuses_gpu_tensors_and_a_missing_wheel(server):
    model = tiny_transformer.build(2)
    # Debian's interpreter: no NIXL. The clear error, not an import traceback, and no record.
    with pytest.raises(ferry.FailedPreconditionError, match="pip install nixl==1.5.1"):
        ferry.torch.publish(model, {"model_name": MODEL}, server=server.address,
                            backend="ferry+nixl")
    assert ferry.MetadataClient(server.address).list_sources({"model_name": MODEL},
                                                             ready_only=False) == []
    with pytest.raises(ferry.InvalidArgumentError, match="auto .= ferry., ferry, nixl, "
                                                         "ferry\\+nixl"):
        ferry.torch.publish(model, {"model_name": MODEL}, server=server.address,
                            backend="nixl+ferry")
