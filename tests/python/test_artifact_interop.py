"""A ModelExpress-style artifact target against a real `ferry artifact publish` source.

It does what ModelExpress's artifact_transfer.py does (contract sections 4.3, 10.4, 11):
ListSources(identity, READY), GetMetadata for the artifact_source payload and node_rank, then
GetArtifactManifestHeader and GetArtifactManifestChunks pages straight to the source's
worker_grpc_endpoint (5 s deadlines), validates the manifest and recomputes artifact_id with
its own canonical JSON, and takes and releases chunk leases.
"""

import hashlib
import json

import grpc
import pytest

from conftest import ServingChild
from model_express import p2p_pb2, p2p_pb2_grpc

_FILES = {"a/kernel.py": b"print('k')\n", "a/kernel.cubin": bytes(range(256)) * 40,
          "b.json": b'{"k": 1}', "empty": b""}
_CHUNK = 1024


@pytest.fixture
def source(server, tmp_path):
    root = tmp_path / "cache"
    for rel, data in _FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    child = ServingChild(
        ["artifact", "publish", str(root), "--kind", "triton", "--model", "interop/artifact",
         "--gpu-arch", "sm90", "--server", server.address, "--chunk-size", str(_CHUNK),
         "--node-rank", "1", "--max-leases", "2", "--transport", "tcp", "--data-listen",
         "127.0.0.1:0", "--worker-listen", "127.0.0.1:0"], tmp_path, "artifact-publish")
    yield child.ready
    child.stop()


def identity():
    return p2p_pb2.SourceIdentity(
        model_name="interop/artifact", tensor_parallel_size=1, pipeline_parallel_size=1,
        expert_parallel_size=1, gpu_arch="sm90",
        mx_source_type=p2p_pb2.MX_SOURCE_TYPE_TRITON_CACHE)


def artifact_id(header, chunks):
    """ModelExpress's canonical JSON (keys in declaration order, compact, raw UTF-8)."""
    doc = {"manifest_version": header.manifest_version,
           "mx_source_type": header.mx_source_type,
           "chunk_size": header.chunk_size,
           "files": [{"file_index": f.file_index, "path": f.path, "size": f.size,
                      "checksum": f.checksum} for f in header.files],
           "chunks": [{"chunk_index": c.chunk_index, "file_index": c.file_index,
                       "file_offset": c.file_offset, "length": c.length,
                       "checksum": c.checksum} for c in chunks]}
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def test_modelexpress_target_reads_and_validates_the_manifest(client, source):
    refs = client.list_ready(identity())
    assert [(r.mx_source_id, r.worker_id) for r in refs] == [
        (source["mx_source_id"], source["worker_id"])]
    record = client.get(refs[0].mx_source_id, refs[0].worker_id).worker
    assert record.WhichOneof("source_payload") == "artifact_source"
    meta = record.artifact_source
    assert (meta.artifact_id, meta.file_count, meta.node_rank) == (source["artifact_id"], 4, 1)
    assert meta.total_size == sum(len(d) for d in _FILES.values())

    with grpc.insecure_channel(record.worker_grpc_endpoint) as channel:
        stub = p2p_pb2_grpc.WorkerServiceStub(channel)
        header = stub.GetArtifactManifestHeader(
            p2p_pb2.GetArtifactManifestHeaderRequest(mx_source_id=refs[0].mx_source_id,
                                                     artifact_id=meta.artifact_id), timeout=5)
        chunks, start = [], 0
        while True:
            page = stub.GetArtifactManifestChunks(
                p2p_pb2.GetArtifactManifestChunksRequest(
                    mx_source_id=refs[0].mx_source_id, artifact_id=meta.artifact_id,
                    start_chunk_index=start, max_chunks=3), timeout=5)
            assert page.start_chunk_index == start
            chunks.extend(page.chunks)
            if not page.next_page_token:
                break
            assert int(page.next_page_token) > start
            start = int(page.next_page_token)

    assert header.artifact_id == meta.artifact_id
    assert header.mx_source_type == p2p_pb2.MX_SOURCE_TYPE_TRITON_CACHE
    assert header.chunk_size == _CHUNK
    assert header.file_count == len(header.files) == 4
    assert header.chunk_count == len(chunks) == 1 + 10 + 1  # b.json, the cubin, kernel.py
    root = source["root"]
    assert [f.path for f in header.files] == sorted(
        f"{root}/{rel}" for rel in _FILES)
    covered = {}
    for i, c in enumerate(chunks):
        assert c.chunk_index == i and 0 < c.length <= header.chunk_size
        assert c.file_offset == covered.get(c.file_index, 0)
        covered[c.file_index] = c.file_offset + c.length
    for f in header.files:
        assert covered.get(f.file_index, 0) == f.size
    assert artifact_id(header, chunks) == header.artifact_id


def test_chunk_leases_are_bounded_and_released(client, source):
    endpoint = client.get(source["mx_source_id"], source["worker_id"]).worker.worker_grpc_endpoint
    ids = dict(mx_source_id=source["mx_source_id"], artifact_id=source["artifact_id"])
    with grpc.insecure_channel(endpoint) as channel:
        stub = p2p_pb2_grpc.WorkerServiceStub(channel)
        first = stub.PrepareArtifactChunk(p2p_pb2.PrepareArtifactChunkRequest(
            chunk_index=1, **ids), timeout=5)
        assert first.lease_id and first.chunk.chunk_index == 1
        assert first.source.length == first.chunk.length and first.source.addr > 0
        stub.PrepareArtifactChunk(p2p_pb2.PrepareArtifactChunkRequest(chunk_index=2, **ids),
                                  timeout=5)
        with pytest.raises(grpc.RpcError) as full:  # --max-leases 2
            stub.PrepareArtifactChunk(p2p_pb2.PrepareArtifactChunkRequest(chunk_index=3, **ids),
                                      timeout=5)
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        released = stub.ReleaseArtifactChunk(p2p_pb2.ReleaseArtifactChunkRequest(
            lease_id=first.lease_id, **ids), timeout=5)
        assert released.chunk.chunk_index == 1
        stub.PrepareArtifactChunk(p2p_pb2.PrepareArtifactChunkRequest(chunk_index=3, **ids),
                                  timeout=5)
        with pytest.raises(grpc.RpcError) as unknown:
            stub.ReleaseArtifactChunk(p2p_pb2.ReleaseArtifactChunkRequest(
                lease_id=first.lease_id, **ids), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as wrong:
            stub.GetArtifactManifestHeader(p2p_pb2.GetArtifactManifestHeaderRequest(
                mx_source_id=source["mx_source_id"], artifact_id="0" * 64), timeout=5)
        assert wrong.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as tensors:
            stub.GetTensorManifest(p2p_pb2.GetTensorManifestRequest(), timeout=5)
        assert tensors.value.code() == grpc.StatusCode.FAILED_PRECONDITION
