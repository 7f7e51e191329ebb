"""ferry-server driven by ModelExpress's released Python client, modelexpress==0.7.0.

Everything the client sends and reads is its own code from the PyPI wheel: MxClient, the
PublisherThread heartbeat (with a source_load provider), the load_aware and topology_aware
selectors, discover_artifact_source, and its p2p_pb2. Each test runs against the memory store
and a real redis-server (fixture ``store``).
"""

import json
import math
import threading
import time
import types
import uuid

import pytest

import mx_release

p2p_pb2 = mx_release.module("p2p_pb2")
client_mod = mx_release.module("client")
publisher_mod = mx_release.module("metadata.publisher")
selection = mx_release.module("source_selection")
artifact_transfer = mx_release.module("metadata.artifact_transfer")

READY = p2p_pb2.SOURCE_STATUS_READY
STALE = p2p_pb2.SOURCE_STATUS_STALE
BASE_SOURCE_ID = "5a5f555570065064"  # contract 3.1, the base identity's server id
_WAIT_S = 15


def base_identity(**overrides):
    fields = dict(mx_version="0.5.0", mx_source_type=p2p_pb2.MX_SOURCE_TYPE_WEIGHTS,
                  model_name="deepseek-ai/DeepSeek-V3",
                  backend_framework=p2p_pb2.BACKEND_FRAMEWORK_VLLM, tensor_parallel_size=8,
                  pipeline_parallel_size=1, expert_parallel_size=0, dtype="bfloat16")
    fields.update(overrides)
    return p2p_pb2.SourceIdentity(**fields)


def worker(rank=0, host="10.0.0.7", **extra):
    return p2p_pb2.WorkerMetadata(worker_rank=rank, metadata_endpoint=f"{host}:{5600 + rank}",
                                  agent_name=f"mx-agent-{rank}",
                                  worker_grpc_endpoint=f"{host}:{6600 + rank}",
                                  accelerator="cuda", **extra)


def new_worker_id():
    return uuid.uuid4().hex[:8]


def wait_for(what, fn, timeout=_WAIT_S):
    """Polls ``fn`` (a read of server state) until it returns a truthy value; fails naming
    ``what`` and the last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.05)  # polling the server for a state a background thread produces
    pytest.fail(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


def refs_by_worker(mx, identity, status_filter=READY):
    return {r.worker_id: r for r in mx.list_sources(identity, status_filter).instances}


def publish_ready(mx, identity, w, worker_id=None, source_load=None):
    worker_id = worker_id or new_worker_id()
    sid = mx.publish_metadata(identity, w, worker_id)
    assert mx.update_status(sid, worker_id, w.worker_rank, READY, source_load=source_load)
    return sid, worker_id


@pytest.fixture
def mx_for(request):
    clients = []

    def make(server):
        c = client_mod.MxClient(server.address)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


# --- the publisher and its heartbeat ----------------------------------------------------------

def test_publisher_thread_topology_and_load_reach_list_sources(store, start_server, mx_for):
    server = start_server(store)
    mx = mx_for(server)
    identity = base_identity()
    topology = {"region": "us-east", "zone": "us-east-1a", "block": "b7", "rack": "r12"}
    w = worker(rank=0, topology=topology)
    worker_id = new_worker_id()
    readings = [0.25]  # what the source measures; the test changes it between heartbeats
    calls = []

    def load():
        calls.append(readings[0])
        return readings[0]

    publisher = publisher_mod.PublisherThread(
        mx_client=mx, worker_id=worker_id, worker_rank=0,
        publish_fn=lambda: mx.publish_metadata(identity, w, worker_id),
        interval_secs=1, source_load_provider=load)
    publisher.start()
    try:
        ref = wait_for("the published worker READY with its load",
                       lambda: (r := refs_by_worker(mx, identity).get(worker_id)) is not None
                       and r.HasField("source_load") and r)
        assert ref.mx_source_id == BASE_SOURCE_ID
        assert ref.source_load == pytest.approx(0.25)
        assert dict(ref.topology) == topology
        # The next heartbeats carry the new reading; the server passes it through.
        readings[0] = 0.75
        ref = wait_for("the second load reading",
                       lambda: (r := refs_by_worker(mx, identity).get(worker_id)) is not None
                       and r.source_load == pytest.approx(0.75) and r)
        assert dict(ref.topology) == topology  # heartbeats do not touch the topology
        got = mx.get_metadata(BASE_SOURCE_ID, worker_id)
        assert got.found and dict(got.worker.topology) == topology
    finally:
        publisher.stop()
    assert len(calls) >= 2
    # stop() marked it STALE (with a last reading); it is gone from READY listings.
    assert worker_id not in refs_by_worker(mx, identity)
    stale = refs_by_worker(mx, identity, status_filter=STALE)[worker_id]
    assert dict(stale.topology) == topology


def test_source_load_presence_is_kept(store, start_server, mx_for):
    """Unset and 0.0 are different on the wire (optional float): ferry keeps which one it got."""
    server = start_server(store)
    mx = mx_for(server)
    identity = base_identity()
    sid, wid = publish_ready(mx, identity, worker(0))
    ref = refs_by_worker(mx, identity)[wid]
    assert not ref.HasField("source_load")  # never reported
    assert len(ref.topology) == 0
    assert mx.update_status(sid, wid, 0, READY, source_load=0.0)
    ref = refs_by_worker(mx, identity)[wid]
    assert ref.HasField("source_load") and ref.source_load == 0.0
    assert mx.update_status(sid, wid, 0, READY, source_load=1.0)
    assert refs_by_worker(mx, identity)[wid].source_load == 1.0
    # A heartbeat with no reading clears it: the source cannot tell its load now.
    assert mx.update_status(sid, wid, 0, READY)
    assert not refs_by_worker(mx, identity)[wid].HasField("source_load")
    # Not a number: the heartbeat is accepted and counts as no reading.
    assert mx.update_status(sid, wid, 0, READY, source_load=math.nan)
    assert not refs_by_worker(mx, identity)[wid].HasField("source_load")
    # A re-publish starts without a reading.
    assert mx.update_status(sid, wid, 0, READY, source_load=0.5)
    mx.publish_metadata(identity, worker(0), wid)
    assert not refs_by_worker(mx, identity, status_filter=None)[wid].HasField("source_load")


# --- source selection -------------------------------------------------------------------------

def _ctx(identity, worker_id="target01", rank=0):
    # The selectors read ctx.identity.model_name, ctx.worker_id and ctx.worker_rank only.
    return types.SimpleNamespace(identity=identity, worker_id=worker_id, worker_rank=rank)


def test_load_aware_selector_orders_by_reported_load(store, start_server, mx_for, monkeypatch):
    server = start_server(store)
    mx = mx_for(server)
    identity = base_identity()
    loads = {"busy": 0.9, "idle": 0.0, "half": 0.5, "light": 0.2}
    ids = {}
    for name, load in loads.items():
        _, ids[name] = publish_ready(mx, identity, worker(0), source_load=load)
    refs = list(mx.list_sources(identity, READY).instances)
    assert sorted(r.source_load for r in refs) == pytest.approx(sorted(loads.values()))
    # A weight of 10 makes the load term dominate the rendezvous jitter in [0, 1).
    monkeypatch.setenv("MX_P2P_LOAD_WEIGHT", "10")
    ordered = selection.get_selector("load_aware").order(refs, _ctx(identity))
    names = {v: k for k, v in ids.items()}
    assert [names[r.worker_id] for r in ordered] == ["idle", "light", "half", "busy"]

    # All loads zero: exactly rendezvous order.
    for wid in ids.values():
        assert mx.update_status(BASE_SOURCE_ID, wid, 0, READY, source_load=0.0)
    refs = list(mx.list_sources(identity, READY).instances)
    load_order = selection.get_selector("load_aware").order(refs, _ctx(identity))
    hrw_order = selection.get_selector("rendezvous_hash").order(refs, _ctx(identity))
    assert [r.worker_id for r in load_order] == [r.worker_id for r in hrw_order]


def test_topology_aware_selector_prefers_narrowest_shared_domain(store, start_server, mx_for,
                                                                 monkeypatch):
    server = start_server(store)
    mx = mx_for(server)
    identity = base_identity()
    here = {"region": "us", "zone": "us-1a", "block": "b1", "rack": "r3"}
    sources = {
        "other-region": {"region": "eu", "zone": "eu-1a", "block": "b1", "rack": "r3"},
        "same-zone": {"region": "us", "zone": "us-1a", "block": "b2", "rack": "r3"},
        "same-rack": dict(here),
        "same-block": {"region": "us", "zone": "us-1a", "block": "b1", "rack": "r9"},
    }
    ids = {}
    for name, topo in sources.items():
        _, ids[name] = publish_ready(mx, identity, worker(0, topology=topo))
    refs = list(mx.list_sources(identity, READY).instances)
    names = {v: k for k, v in ids.items()}
    assert {names[r.worker_id]: dict(r.topology) for r in refs} == sources
    monkeypatch.setenv("MX_P2P_TOPOLOGY", json.dumps(here))
    monkeypatch.delenv("MX_P2P_TOPOLOGY_LEVELS", raising=False)
    ordered = selection.get_selector("topology_aware").order(refs, _ctx(identity))
    assert [names[r.worker_id] for r in ordered] == [
        "same-rack", "same-block", "same-zone", "other-region"]


# --- artifact discovery -----------------------------------------------------------------------

def test_discover_artifact_source_picks_the_compatible_node(store, start_server, mx_for):
    server = start_server(store)
    mx = mx_for(server)
    identity = base_identity(mx_source_type=p2p_pb2.MX_SOURCE_TYPE_TRITON_CACHE,
                             triton_version="3.1.0", gpu_arch="sm_90")

    def artifact_worker(node_rank, accelerator, host):
        return p2p_pb2.WorkerMetadata(
            worker_rank=0, worker_grpc_endpoint=f"{host}:7000", accelerator=accelerator,
            artifact_source=p2p_pb2.ArtifactSourceMetadata(
                artifact_id=f"{node_rank:064x}", total_size=1 << 20, file_count=3,
                chunk_count=2, node_rank=node_rank))

    publish_ready(mx, identity, artifact_worker(0, "xpu", "10.0.0.1"))
    publish_ready(mx, identity, artifact_worker(1, "cuda", "10.0.0.2"))
    sid, wid = publish_ready(mx, identity, artifact_worker(0, "cuda", "10.0.0.3"))
    found = artifact_transfer.discover_artifact_source(mx, identity, node_rank=0,
                                                       accelerator="cuda")
    assert (found.mx_source_id, found.worker_id) == (sid, wid)
    assert found.worker_grpc_endpoint == "10.0.0.3:7000"
    assert found.artifact_id == f"{0:064x}"
    with pytest.raises(LookupError):
        artifact_transfer.discover_artifact_source(mx, identity, node_rank=2, accelerator="cuda")


# --- fields ferry does not know ---------------------------------------------------------------

def _field_key(number, wire_type):
    return _varint((number << 3) | wire_type)


def _varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number, payload):
    return _field_key(number, 2) + _varint(len(payload)) + payload


# Fields from a future contract: numbers no released message uses, every wire type.
FUTURE_WORKER = (_len_field(1001, b"future-string") + _field_key(1002, 0) + _varint(123456789)
                 + _len_field(1003, _len_field(1, b"nested") + _field_key(2, 0) + _varint(7))
                 + _field_key(1004, 1) + b"\x01\x02\x03\x04\x05\x06\x07\x08"
                 + _field_key(1005, 5) + b"\xaa\xbb\xcc\xdd")
FUTURE_TENSOR = _len_field(60, b"tensor-extension") + _field_key(61, 0) + _varint(1)
FUTURE_IDENTITY = _len_field(500, b"identity-extension")


def _unknown(message):
    """The unknown-field bytes of ``message`` (its serialization without any known field)."""
    copy = type(message)()
    copy.CopyFrom(message)
    for field in copy.DESCRIPTOR.fields:
        copy.ClearField(field.name)
    return copy.SerializeToString()


def _future_records():
    tensor = p2p_pb2.TensorDescriptor.FromString(
        p2p_pb2.TensorDescriptor(name="w", addr=4096, size=64, dtype="torch.bfloat16")
        .SerializeToString() + FUTURE_TENSOR)
    w = worker(0, topology={"rack": "r1"})
    w.tensor_source.tensors.append(tensor)
    w = p2p_pb2.WorkerMetadata.FromString(w.SerializeToString() + FUTURE_WORKER)
    identity = p2p_pb2.SourceIdentity.FromString(
        base_identity(model_name="future/model").SerializeToString() + FUTURE_IDENTITY)
    assert _unknown(w) == FUTURE_WORKER  # the client keeps them on the way out
    return identity, w


def _check_future_record(got):
    assert got.found
    assert _unknown(got.worker) == FUTURE_WORKER
    assert _unknown(got.worker.tensor_source.tensors[0]) == FUTURE_TENSOR
    assert _unknown(got.identity) == FUTURE_IDENTITY
    assert got.worker.tensor_source.tensors[0].name == "w"
    assert dict(got.worker.topology) == {"rack": "r1"}


def test_unknown_fields_round_trip_byte_for_byte(store, start_server, mx_for):
    server = start_server(store)
    mx = mx_for(server)
    identity, w = _future_records()
    sid, wid = publish_ready(mx, identity, w)
    _check_future_record(mx.get_metadata(sid, wid))
    # A heartbeat and a re-read change nothing of them.
    assert mx.update_status(sid, wid, 0, READY, source_load=0.3)
    _check_future_record(mx.get_metadata(sid, wid))


def test_unknown_fields_survive_a_server_restart_on_redis(redis, start_server, mx_for):
    first = start_server(redis.url)
    identity, w = _future_records()
    sid, wid = publish_ready(mx_for(first), identity, w, source_load=0.4)
    first.stop()
    second = start_server(redis.url)
    mx = mx_for(second)
    _check_future_record(mx.get_metadata(sid, wid))
    ref = refs_by_worker(mx, identity)[wid]
    assert dict(ref.topology) == {"rack": "r1"} and ref.source_load == pytest.approx(0.4)


# --- Redis records written before ferry knew topology and source_load -------------------------

def test_redis_record_in_the_previous_format_reads_back(redis, start_server, mx_for):
    """A source hash exactly as ferry wrote it before 0.7.0's fields (docs/protocol.md, "Redis
    key layout"): the summary has no "t" and no "l"."""
    identity = base_identity()
    wid = "0a1b2c3d"
    record = worker(0).SerializeToString()
    now_ms = int(time.time() * 1000)
    summary = json.dumps({"v": "1751234567891234", "o": "", "i": "0",
                          "r": {"0": {"s": "2", "u": str(now_ms), "a": "cuda"}}},
                         separators=(",", ":"))
    redis.call("HSET", f"ferry:src:{BASE_SOURCE_ID}", "identity", identity.SerializeToString(),
               f"w:{wid}", summary)
    redis.call("HSET", f"ferry:rec:{BASE_SOURCE_ID}:{wid}", "0", record)
    redis.call("SADD", "ferry:sources", BASE_SOURCE_ID)
    redis.call("SET", "ferry:version", "1751234567891234")

    server = start_server(redis.url)
    mx = mx_for(server)
    ref = refs_by_worker(mx, identity)[wid]
    assert (ref.mx_source_id, ref.worker_rank, ref.accelerator) == (BASE_SOURCE_ID, 0, "cuda")
    assert ref.updated_at == now_ms
    assert len(ref.topology) == 0 and not ref.HasField("source_load")
    got = mx.get_metadata(BASE_SOURCE_ID, wid)
    assert got.found and got.worker.worker_grpc_endpoint == "10.0.0.7:6600"
    # The new server heartbeats the old record and adds a load to it.
    assert mx.update_status(BASE_SOURCE_ID, wid, 0, READY, source_load=0.6)
    assert refs_by_worker(mx, identity)[wid].source_load == pytest.approx(0.6)
