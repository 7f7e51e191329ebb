"""A ModelExpress-style target against a real `ferry publish` source.

The target does what ModelExpress's vLLM loader does (contract section 10.1, steps 5-6.2):
ListSources(identity, READY), keep its rank, GetMetadata, then
WorkerService.GetTensorManifest straight to the source's worker_grpc_endpoint with a 5 s
deadline and gRPC's default 4 MiB receive limit.
"""

import json
import struct

import grpc
import pytest

from conftest import ServingChild
from model_express import p2p_pb2, p2p_pb2_grpc

_TENSORS = [("model.embed_tokens.weight", "BF16", [64, 32]),
            ("model.layers.0.mlp.up_proj.weight", "F32", [16, 8]),
            ("lm_head.weight", "BF16", [64, 32])]
_ELEMENT = {"BF16": 2, "F32": 4}


def write_safetensors(path):
    header, offset = {}, 0
    for name, dtype, shape in _TENSORS:
        size = _ELEMENT[dtype] * shape[0] * shape[1]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(i % 251 for i in range(offset)))


@pytest.fixture
def source(server, tmp_path):
    model = tmp_path / "model.safetensors"
    write_safetensors(model)
    child = ServingChild(
        ["publish", str(model), "--model", "interop/worker", "--tp", "1", "--server",
         server.address, "--transport", "tcp", "--data-listen", "127.0.0.1:0",
         "--worker-listen", "127.0.0.1:0"], tmp_path, "publish")
    yield child.ready
    child.stop()


def identity():
    return p2p_pb2.SourceIdentity(model_name="interop/worker", tensor_parallel_size=1,
                                  pipeline_parallel_size=1, expert_parallel_size=1)


def test_modelexpress_target_reads_the_manifest(client, source):
    refs = [r for r in client.list_ready(identity()) if r.worker_rank == 0]
    assert [(r.mx_source_id, r.worker_id) for r in refs] == [
        (source["mx_source_id"], source["worker_id"])]
    record = client.get(refs[0].mx_source_id, refs[0].worker_id)
    assert record.found
    # P2P metadata mode: the record carries endpoints only.
    assert record.worker.worker_grpc_endpoint == source["worker_endpoint"]
    assert record.worker.accelerator == "cpu"
    assert not record.worker.tensor_source.tensors

    with grpc.insecure_channel(record.worker.worker_grpc_endpoint) as channel:
        stub = p2p_pb2_grpc.WorkerServiceStub(channel)
        manifest = stub.GetTensorManifest(
            p2p_pb2.GetTensorManifestRequest(mx_source_id=refs[0].mx_source_id,
                                             worker_id=refs[0].worker_id),
            timeout=5)
    assert manifest.mx_source_id == source["mx_source_id"]
    assert manifest.worker_id == source["worker_id"]
    assert manifest.worker_rank == 0
    assert manifest.accelerator == "cpu"
    got = {t.name: (t.dtype, t.size, t.device_id) for t in manifest.tensors}
    assert got == {
        "model.embed_tokens.weight": ("torch.bfloat16", 4096, 0),
        "model.layers.0.mlp.up_proj.weight": ("torch.float32", 512, 0),
        "lm_head.weight": ("torch.bfloat16", 4096, 0),
    }
    addrs = sorted(t.addr for t in manifest.tensors)
    assert addrs[0] > 0 and addrs[1] - addrs[0] == 4096


def test_old_worker_id_is_refused(client, source):
    endpoint = client.get(source["mx_source_id"], source["worker_id"]).worker.worker_grpc_endpoint
    with grpc.insecure_channel(endpoint) as channel:
        stub = p2p_pb2_grpc.WorkerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetTensorManifest(
                p2p_pb2.GetTensorManifestRequest(mx_source_id=source["mx_source_id"],
                                                 worker_id="0123abcd"),
                timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "0123abcd" in err.value.details()
    with grpc.insecure_channel(endpoint) as channel:
        stub = p2p_pb2_grpc.WorkerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetTensorManifest(
                p2p_pb2.GetTensorManifestRequest(mx_source_id="f" * 16), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "mx_source_id mismatch" in err.value.details()
