"""The C++ client (the ``ferry`` CLI) and a Python client see the same records.

A Python source publishes; ``ferry sources list --json`` / ``ferry sources get --json`` print
the server's answers through ferry's C++ MetadataClient as proto3 JSON, which parses back into
the same messages the Python stubs received. The CLI binary must exist: a missing one fails.
"""

import json
import subprocess

from google.protobuf import json_format

from conftest import binary
from model_express import p2p_pb2
from mx_client import base_identity, centralized_worker, p2p_worker, tensor_list


def ferry(server, *args):
    """Runs ``ferry --server <server> ARGS``; returns (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [binary("FERRY_CLI_BIN"), "--server", server.address, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.returncode, proc.stdout, proc.stderr


def ferry_json(server, *args):
    code, out, err = ferry(server, *args)
    assert code == 0, f"ferry {' '.join(args)} exited {code}:\n{err}"
    return out


def publish_two_sources(client):
    tensors = tensor_list(5, rank=1)
    big = client.publish_ready(
        base_identity(), centralized_worker(1, tensors, b"\x00\x9f nixl agent blob \xff")
    )
    small = client.publish_ready(base_identity(model_name="Qwen/Qwen3-8B"), p2p_worker(3))
    return big, small, tensors


def test_cli_get_matches_python_get(client, server):
    (source_id, worker_id), _, tensors = publish_two_sources(client)
    from_python = client.get(source_id, worker_id)

    out = ferry_json(server, "sources", "get", source_id, worker_id, "--json")
    from_cli = json_format.Parse(out, p2p_pb2.GetMetadataResponse())

    assert from_cli.found
    assert (from_cli.mx_source_id, from_cli.worker_id) == (source_id, worker_id)
    assert from_cli.worker.worker_rank == 1
    assert [t.name for t in from_cli.worker.tensor_source.tensors] == [t.name for t in tensors]
    assert from_cli == from_python


def test_cli_list_matches_python_list(client, server):
    (big_source, big_worker), (small_source, small_worker), _ = publish_two_sources(client)
    assert client.update_status(small_source, small_worker, 3, p2p_pb2.SOURCE_STATUS_STALE).success

    ready_only = p2p_pb2.ListSourcesRequest(status_filter=p2p_pb2.SOURCE_STATUS_READY)
    cases = [((), p2p_pb2.ListSourcesRequest()), (("--status", "ready"), ready_only)]
    for cli_args, request in cases:
        from_python = list(client.p2p.ListSources(request).instances)
        out = ferry_json(server, "sources", "list", *cli_args, "--json")
        from_cli = [json_format.ParseDict(e, p2p_pb2.SourceInstanceRef()) for e in json.loads(out)]
        assert from_cli == from_python, cli_args

    everything = [
        (e["mx_source_id"], e["worker_id"], e["worker_rank"])
        for e in json.loads(ferry_json(server, "sources", "list", "--json"))
    ]
    expected = [(big_source, big_worker, 1), (small_source, small_worker, 3)]
    assert sorted(everything) == sorted(expected)


def test_cli_get_unknown_exits_1(server):
    code, out, err = ferry(server, "sources", "get", "0123456789abcdef", "deadbeef", "--json")
    assert code == 1, (out, err)
