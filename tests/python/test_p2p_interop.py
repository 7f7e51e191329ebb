"""ferry-server driven by generated Python stubs, the way ModelExpress's Python client does.

Each test gets a fresh server (memory store). Expected values come from the compatibility
contract (shared/spec/modelexpress-p2p-contract.md, sections 2, 3, 5 and 6); the few places
where ferry deliberately differs from upstream are marked "ferry:".
"""

import threading
import time
import urllib.request

import grpc
import pytest

from model_express import p2p_pb2
from mx_client import (
    BASE_SOURCE_ID,
    MxClient,
    base_identity,
    centralized_worker,
    new_worker_id,
    p2p_worker,
    tensor_list,
)

READY = p2p_pb2.SOURCE_STATUS_READY
STALE = p2p_pb2.SOURCE_STATUS_STALE
INITIALIZING = p2p_pb2.SOURCE_STATUS_INITIALIZING


def now_ms():
    return int(time.time() * 1000)


def published_message(model_name, source_id, worker_id, rank, tensors):
    return (
        f"Published metadata for '{model_name}' (source_id={source_id}, "
        f"worker_id={worker_id}, worker_rank={rank}, {tensors} tensors)"
    )


# --- PublishMetadata ----------------------------------------------------------------------------


def test_publish_base_identity_returns_pinned_source_id(client):
    worker_id = new_worker_id()
    resp = client.publish(base_identity(), p2p_worker(0), worker_id)
    assert resp.success, resp.message
    assert resp.mx_source_id == BASE_SOURCE_ID
    assert resp.worker_id == worker_id
    assert resp.message == published_message(
        "deepseek-ai/DeepSeek-V3", BASE_SOURCE_ID, worker_id, 0, 0
    )


# A sample of shared/spec/vectors/source-identity.json (the server's values), sent over the wire
# so that string encoding between a Python client and the server is covered too.
IDENTITY_VECTORS = [
    ("minimal", p2p_pb2.SourceIdentity(model_name="m"), "cfe71ebe7cba7d9a"),
    ("revision", base_identity(revision="abc123def4567890"), "d0c184b2a9a34c82"),
    ("case-colliding-extra", base_identity(extra_parameters={"foo": "b", "Foo": "a"}),
     "bf71fb9340cd940a"),
    ("lora", base_identity(mx_source_type=p2p_pb2.MX_SOURCE_TYPE_LORA), "6656058841e004bd"),
    ("framework-unknown", base_identity(backend_framework=p2p_pb2.BACKEND_FRAMEWORK_UNKNOWN),
     "b5cfc9cf9f574e82"),
    ("json-escaping", base_identity(model_name='org/m"od\\el\nv2\t\x01', quantization="awq"),
     "49204407821e00fa"),
    # Non-ASCII: the upstream Python client's local hash differs; the server value wins.
    ("latin", base_identity(model_name="Org/Mod\u00e8le-\u00dcn\u00efcode"), "41f54385cca877f3"),
    ("dotted-capital-i", base_identity(model_name="\u0130stanbul/Model"), "6617a19641d7b9bd"),
]


@pytest.mark.parametrize(
    "identity,expected", [v[1:] for v in IDENTITY_VECTORS], ids=[v[0] for v in IDENTITY_VECTORS]
)
def test_publish_source_id_matches_server_vectors(client, identity, expected):
    resp = client.publish(identity, p2p_worker(0), new_worker_id())
    assert resp.success, resp.message
    assert resp.mx_source_id == expected


@pytest.mark.parametrize(
    "request_fields,message",
    [
        ({"worker_id": "w1", "worker": p2p_worker(0)}, "identity is required"),
        ({}, "identity is required"),
        (
            {"identity": p2p_pb2.SourceIdentity(mx_version="0.5.0"), "worker_id": "w1"},
            "identity.model_name is required",
        ),
        ({"identity": base_identity(), "worker": p2p_worker(0)}, "worker_id is required"),
        ({"identity": base_identity(), "worker_id": "w1"}, "worker is required"),
    ],
    ids=["no-identity", "empty-request", "no-model-name", "no-worker-id", "no-worker"],
)
def test_publish_validation(client, request_fields, message):
    resp = client.p2p.PublishMetadata(p2p_pb2.PublishMetadataRequest(**request_fields))
    assert not resp.success
    assert resp.message == message
    assert resp.mx_source_id == ""
    assert resp.worker_id == ""


def test_publish_does_not_create_anything_on_validation_failure(client):
    client.p2p.PublishMetadata(p2p_pb2.PublishMetadataRequest(identity=base_identity()))
    assert list(client.p2p.ListSources(p2p_pb2.ListSourcesRequest()).instances) == []


# --- the source lifecycle, P2P mode -------------------------------------------------------------


def test_p2p_mode_lifecycle(client):
    identity = base_identity()
    worker_id = new_worker_id()
    before = now_ms()
    published = client.publish(identity, p2p_worker(3), worker_id)
    assert published.success, published.message

    # ferry: an unset status is stored as INITIALIZING and updated_at comes from the server
    # clock, so the reaper can age a worker that never becomes READY.
    got = client.get(BASE_SOURCE_ID, worker_id)
    assert got.found
    assert got.worker.status == INITIALIZING
    assert before <= got.worker.updated_at <= now_ms()
    assert list(client.list_ready(identity)) == []

    updated = client.update_status(BASE_SOURCE_ID, worker_id, 3, READY)
    assert updated.success, updated.message
    assert updated.message == (
        f"Updated status for source '{BASE_SOURCE_ID}' worker_id '{worker_id}' rank 3"
    )

    [entry] = client.list_ready(identity)
    assert entry.mx_source_id == BASE_SOURCE_ID
    assert entry.worker_id == worker_id
    assert entry.model_name == "deepseek-ai/DeepSeek-V3"
    assert entry.worker_rank == 3
    assert entry.accelerator == "cuda"
    assert not entry.HasField("training_step")
    assert not entry.HasField("layout_signature")

    got = client.get(entry.mx_source_id, entry.worker_id)
    assert got.found
    assert got.mx_source_id == BASE_SOURCE_ID
    assert got.worker_id == worker_id
    assert got.identity == identity
    worker = got.worker
    assert worker.status == READY
    assert worker.updated_at == entry.updated_at
    assert before <= worker.updated_at <= now_ms()
    assert worker.worker_rank == 3
    assert worker.metadata_endpoint == "10.0.0.7:5603"
    assert worker.agent_name == "mx-agent-3"
    assert worker.worker_grpc_endpoint == "10.0.0.7:6603"
    assert worker.accelerator == "cuda"
    assert worker.WhichOneof("backend_metadata") is None
    # source_payload is always set: an empty tensor_source for an endpoint-only record.
    assert worker.WhichOneof("source_payload") == "tensor_source"
    assert len(worker.tensor_source.tensors) == 0
    assert len(worker.tensors) == 0

    stale = client.update_status(BASE_SOURCE_ID, worker_id, 3, STALE)
    assert stale.success, stale.message
    assert list(client.list_ready(identity)) == []
    assert client.get(BASE_SOURCE_ID, worker_id).worker.status == STALE


def test_ready_listing_excludes_stale_and_is_newest_first(client):
    identity = base_identity()
    ids = []
    for rank in range(3):
        ids.append(client.publish_ready(identity, p2p_worker(rank))[1])
        time.sleep(0.005)  # distinct millisecond timestamps
    assert [e.worker_id for e in client.list_ready(identity)] == ids[::-1]

    assert client.update_status(BASE_SOURCE_ID, ids[1], 1, STALE).success
    assert [e.worker_id for e in client.list_ready(identity)] == [ids[2], ids[0]]

    time.sleep(0.005)
    assert client.update_status(BASE_SOURCE_ID, ids[0], 0, READY).success  # heartbeat
    assert [e.worker_id for e in client.list_ready(identity)] == [ids[0], ids[2]]

    stale = client.p2p.ListSources(
        p2p_pb2.ListSourcesRequest(identity=identity, status_filter=STALE)
    )
    assert [e.worker_id for e in stale.instances] == [ids[1]]


def test_eight_ranks_publish_concurrently(client, server):
    """One source per tensor-parallel rank process, all ticking at once."""
    identity = base_identity()
    results, errors = {}, []

    def rank_process(rank):
        try:
            mx = MxClient(server.address)
            results[rank] = mx.publish_ready(identity, p2p_worker(rank))
            mx.close()
        except Exception as e:  # reported below; a thread cannot fail the test itself
            errors.append(e)

    threads = [threading.Thread(target=rank_process, args=(r,)) for r in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    listed = {e.worker_id: e.worker_rank for e in client.list_ready(identity)}
    assert listed == {wid: rank for rank, (_, wid) in results.items()}
    assert {sid for sid, _ in results.values()} == {BASE_SOURCE_ID}


def test_identity_filter_matches_case_insensitively_and_keeps_last_writers_case(client):
    a = client.publish_ready(base_identity(), p2p_worker(0))[1]
    other = base_identity(model_name="Qwen/Qwen3-8B")
    b = client.publish_ready(other, p2p_worker(0))[1]

    lower = base_identity(model_name="DEEPSEEK-AI/deepseek-v3")
    assert [e.worker_id for e in client.list_ready(lower)] == [a]
    assert [e.worker_id for e in client.list_ready(other)] == [b]

    everything = client.p2p.ListSources(p2p_pb2.ListSourcesRequest()).instances
    assert {e.worker_id for e in everything} == {a, b}
    # An identity with an empty model_name is no source filter.
    unfiltered = client.p2p.ListSources(
        p2p_pb2.ListSourcesRequest(identity=p2p_pb2.SourceIdentity(), status_filter=READY)
    ).instances
    assert {e.worker_id for e in unfiltered} == {a, b}

    # model_name_filter compares with the stored (original-case) name, case-sensitively.
    by_name = client.p2p.ListSources(p2p_pb2.ListSourcesRequest(model_name_filter="Qwen/Qwen3-8B"))
    assert [e.worker_id for e in by_name.instances] == [b]
    by_lower = client.p2p.ListSources(p2p_pb2.ListSourcesRequest(model_name_filter="qwen/qwen3-8b"))
    assert list(by_lower.instances) == []

    # Publishing the same source id with other letter case replaces the stored name.
    client.publish_ready(lower, p2p_worker(1))
    names = {e.model_name for e in client.list_ready(base_identity())}
    assert names == {"DEEPSEEK-AI/deepseek-v3"}


def test_list_limit(client):
    identity = base_identity()
    ids = []
    for rank in range(4):
        ids.append(client.publish_ready(identity, p2p_worker(rank))[1])
        time.sleep(0.005)
    limited = client.p2p.ListSources(
        p2p_pb2.ListSourcesRequest(identity=identity, status_filter=READY, limit=2)
    ).instances
    assert [e.worker_id for e in limited] == [ids[3], ids[2]]


def test_list_rejects_unknown_status_filter(client):
    """ferry (docs/protocol.md, 14.5): upstream reads an unknown enum as "no filter", which
    returns STALE records on a typo; ferry answers INVALID_ARGUMENT naming the value."""
    with pytest.raises(grpc.RpcError) as err:
        client.p2p.ListSources(
            p2p_pb2.ListSourcesRequest(identity=base_identity(), status_filter=42)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "status_filter=42" in err.value.details()


@pytest.mark.parametrize(
    "extra,training_step,layout_signature",
    [
        ({}, None, None),
        ({"version": "41"}, 41, None),
        ({"version": "41", "training_step": "42"}, 42, None),
        ({"version": "41", "training_step": "not-a-number"}, None, None),
        ({"training_step": "+7"}, 7, None),
        ({"training_step": "18446744073709551615"}, 18446744073709551615, None),
        ({"training_step": "18446744073709551616"}, None, None),
        ({"Training_Step": "5"}, None, None),
        ({"layout_signature": ""}, None, None),
        ({"layout_signature": "ABC123"}, None, "ABC123"),
    ],
)
def test_list_derives_training_step_and_layout_signature(
    client, extra, training_step, layout_signature
):
    identity = base_identity(extra_parameters=extra)
    client.publish_ready(identity, p2p_worker(0))
    [entry] = client.list_ready(identity)
    if training_step is None:
        assert not entry.HasField("training_step")
    else:
        assert entry.training_step == training_step
    if layout_signature is None:
        assert not entry.HasField("layout_signature")
    else:
        assert entry.layout_signature == layout_signature


def test_ready_freshness_uses_heartbeat_timeout(start_server):
    """A READY worker whose heartbeat stops drops out of ListSources(READY) at query time."""
    server = start_server("--heartbeat-timeout", "1s", "--reaper-scan-interval", "3600s")
    mx = MxClient(server.address)
    identity = base_identity()
    source_id, worker_id = mx.publish_ready(identity, p2p_worker(0))
    assert len(mx.list_ready(identity)) == 1
    time.sleep(1.3)
    assert list(mx.list_ready(identity)) == []
    assert mx.get(source_id, worker_id).worker.status == READY  # not reaped, only filtered
    assert mx.update_status(source_id, worker_id, 0, READY).success
    assert [e.worker_id for e in mx.list_ready(identity)] == [worker_id]
    mx.close()


def test_reaper_marks_stale_then_deletes(start_server):
    server = start_server(
        "--heartbeat-timeout", "1s", "--reaper-scan-interval", "100ms", "--gc-timeout", "1s"
    )
    mx = MxClient(server.address)
    ready_source, ready_worker = mx.publish_ready(base_identity(), p2p_worker(0))
    # ferry: a worker that never sent READY is INITIALIZING, so it is aged out as well.
    silent_worker = new_worker_id()
    assert mx.publish(base_identity(), p2p_worker(1), silent_worker).success

    def status_of(worker_id):
        got = mx.get(ready_source, worker_id)
        return got.worker.status if got.found else None

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        status_of(ready_worker) != STALE or status_of(silent_worker) != STALE
    ):
        time.sleep(0.05)
    assert (status_of(ready_worker), status_of(silent_worker)) == (STALE, STALE)

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and mx.get(ready_source, ready_worker).found:
        time.sleep(0.05)
    gone = mx.get(ready_source, ready_worker)
    assert not gone.found
    assert (gone.mx_source_id, gone.worker_id) == (ready_source, ready_worker)
    mx.close()


# --- centralized mode and other payloads ---------------------------------------------------------


def test_centralized_mode_keeps_nixl_bytes_and_both_tensor_copies(client):
    tensors = tensor_list(16, rank=1)
    nixl = bytes(range(256)) * 4  # not UTF-8; must come back byte for byte
    worker_id = new_worker_id()
    published = client.publish(base_identity(), centralized_worker(1, tensors, nixl), worker_id)
    assert published.success, published.message
    assert published.message == published_message(
        "deepseek-ai/DeepSeek-V3", BASE_SOURCE_ID, worker_id, 1, 16
    )
    assert client.update_status(BASE_SOURCE_ID, worker_id, 1, READY).success

    got = client.get(BASE_SOURCE_ID, worker_id)
    assert got.found
    assert got.worker.WhichOneof("backend_metadata") == "nixl_metadata"
    assert got.worker.nixl_metadata == nixl
    assert got.worker.WhichOneof("source_payload") == "tensor_source"
    assert list(got.worker.tensor_source.tensors) == tensors
    assert list(got.worker.tensors) == tensors
    assert got.worker.accelerator == "cuda"


def test_two_thousand_tensors_round_trip(client):
    tensors = tensor_list(2000)
    source_id, worker_id = client.publish_ready(
        base_identity(), centralized_worker(0, tensors, b"\x01" * 4096)
    )
    got = client.get(source_id, worker_id)
    assert list(got.worker.tensor_source.tensors) == tensors
    assert list(got.worker.tensors) == tensors


def test_tensor_source_wins_over_legacy_field(client):
    preferred, legacy = tensor_list(2), tensor_list(3, rank=5)
    worker = p2p_worker(0)
    worker.tensor_source.tensors.extend(preferred)
    worker.tensors.extend(legacy)
    source_id, worker_id = client.publish_ready(base_identity(), worker)
    got = client.get(source_id, worker_id).worker
    assert list(got.tensor_source.tensors) == preferred
    assert list(got.tensors) == preferred


def test_legacy_tensors_alone_are_served_in_both_fields(client):
    legacy = tensor_list(3)
    worker = p2p_worker(0)
    worker.tensors.extend(legacy)
    source_id, worker_id = client.publish_ready(base_identity(), worker)
    got = client.get(source_id, worker_id).worker
    assert got.WhichOneof("source_payload") == "tensor_source"
    assert list(got.tensor_source.tensors) == legacy
    assert list(got.tensors) == legacy


def test_transfer_engine_session_id_oneof_is_preserved(client):
    """The SGLang TransferEngine path tells backends apart by the oneof case."""
    identity = base_identity(backend_framework=p2p_pb2.BACKEND_FRAMEWORK_SGLANG)
    worker = p2p_pb2.WorkerMetadata(
        worker_rank=2, transfer_engine_session_id="10.0.0.9:17002", accelerator="cuda"
    )
    worker.tensor_source.tensors.extend(tensor_list(4, rank=2))
    source_id, worker_id = client.publish_ready(identity, worker)
    got = client.get(source_id, worker_id).worker
    assert got.WhichOneof("backend_metadata") == "transfer_engine_session_id"
    assert got.transfer_engine_session_id == "10.0.0.9:17002"
    assert got.nixl_metadata == b""
    assert list(got.tensor_source.tensors) == tensor_list(4, rank=2)


def test_artifact_source_payload(client):
    identity = base_identity(
        mx_source_type=p2p_pb2.MX_SOURCE_TYPE_TORCH_COMPILE_CACHE,
        backend_framework_version="0.11.0",
        torch_version="2.8.0",
        gpu_arch="sm_90",
    )
    artifact = p2p_pb2.ArtifactSourceMetadata(
        artifact_id="ab" * 32, total_size=123_456_789_012, file_count=42, chunk_count=97,
        node_rank=1,
    )
    worker = p2p_worker(0)
    worker.artifact_source.CopyFrom(artifact)
    worker.tensors.extend(tensor_list(2))  # ignored for artifact records
    worker_id = new_worker_id()
    published = client.publish(identity, worker, worker_id)
    assert published.success, published.message
    assert published.message == published_message(
        "deepseek-ai/DeepSeek-V3", published.mx_source_id, worker_id, 0, 0
    )
    assert client.update_status(published.mx_source_id, worker_id, 0, READY).success

    got = client.get(published.mx_source_id, worker_id)
    assert got.found
    assert got.identity == identity
    assert got.worker.WhichOneof("source_payload") == "artifact_source"
    assert got.worker.artifact_source == artifact
    assert len(got.worker.tensors) == 0
    assert [e.worker_id for e in client.list_ready(identity)] == [worker_id]


def test_get_returns_lowest_rank_and_list_the_latest_published_rank(client):
    worker_id = new_worker_id()
    identity = base_identity()
    for rank in (1, 0, 2):
        assert client.publish(identity, p2p_worker(rank), worker_id).success
        assert client.update_status(BASE_SOURCE_ID, worker_id, rank, READY).success
    got = client.get(BASE_SOURCE_ID, worker_id)
    assert got.worker.worker_rank == 0
    [entry] = client.list_ready(identity)
    assert entry.worker_rank == 2


# --- GetMetadata / UpdateStatus edge cases ------------------------------------------------------


def test_get_unknown_echoes_ids(client):
    got = client.get("0123456789abcdef", "deadbeef")
    assert not got.found
    assert (got.mx_source_id, got.worker_id) == ("0123456789abcdef", "deadbeef")
    assert not got.HasField("identity")
    assert not got.HasField("worker")


@pytest.mark.parametrize("source_id,worker_id", [("", "deadbeef"), (BASE_SOURCE_ID, "")])
def test_get_with_empty_ids_returns_nothing(client, source_id, worker_id):
    client.publish_ready(base_identity(), p2p_worker(0))
    got = client.get(source_id, worker_id)
    assert not got.found
    assert (got.mx_source_id, got.worker_id) == ("", "")
    assert not got.HasField("identity")


def test_update_of_unknown_worker_fails_and_creates_nothing(client):
    unknown_source = client.update_status(BASE_SOURCE_ID, "deadbeef", 0, READY)
    assert not unknown_source.success
    assert unknown_source.message.startswith("Failed to update status: ")
    assert f"source '{BASE_SOURCE_ID}' not found" in unknown_source.message
    assert list(client.p2p.ListSources(p2p_pb2.ListSourcesRequest()).instances) == []

    source_id, worker_id = client.publish_ready(base_identity(), p2p_worker(0))
    unknown_worker = client.update_status(source_id, "deadbeef", 0, READY)
    assert not unknown_worker.success
    assert "worker 'deadbeef' not found" in unknown_worker.message
    wrong_rank = client.update_status(source_id, worker_id, 5, READY)
    assert not wrong_rank.success
    assert wrong_rank.message == (
        f"Failed to update status: update_status: rank 5 not found in source '{source_id}' "
        f"worker '{worker_id}'"
    )
    listed = client.p2p.ListSources(p2p_pb2.ListSourcesRequest()).instances
    assert [(e.worker_id, e.worker_rank) for e in listed] == [(worker_id, 0)]


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"worker_id": "w1", "status": READY}, "mx_source_id is required"),
        ({"mx_source_id": BASE_SOURCE_ID, "status": READY}, "worker_id is required"),
        (
            {"mx_source_id": BASE_SOURCE_ID, "worker_id": "w1", "status": 42},
            "invalid status value: 42",
        ),
    ],
    ids=["no-source-id", "no-worker-id", "bad-status"],
)
def test_update_status_validation(client, fields, message):
    resp = client.p2p.UpdateStatus(p2p_pb2.UpdateStatusRequest(**fields))
    assert not resp.success
    assert resp.message == message


# --- the rest of the wire surface ----------------------------------------------------------------


def test_health_and_admin_endpoints(client, server):
    health = client.get_health()
    assert health.status == "ok"
    assert health.version != ""

    base = f"http://127.0.0.1:{server.admin_port}"
    with urllib.request.urlopen(base + "/healthz", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        assert resp.status == 200
        body = resp.read().decode()
    assert "# TYPE" in body
