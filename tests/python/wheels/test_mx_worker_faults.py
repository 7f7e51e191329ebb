"""ferry's reader of ModelExpress worker endpoints (P2P metadata mode, `ferry._mx_worker.TensorRead`)
against a fault-injecting endpoint: a real gRPC server on loopback, built on the WorkerService
stubs generated from proto/ (FERRY_PY_GEN), that answers what a restarted, confused or vanished
source would. The happy paths run against ModelExpress's own WorkerGrpcServer in
test_wheel_interop.py; these need neither NIXL nor the wheels venv (Debian's python).
"""

import contextlib
import os
import socket
import sys
import threading
from concurrent import futures

import grpc
import pytest

sys.path.insert(0, os.environ["FERRY_PYTHON_PACKAGE"])

import ferry  # noqa: E402
from ferry import _mx_worker  # noqa: E402
from model_express import p2p_pb2, p2p_pb2_grpc  # noqa: E402  (FERRY_PY_GEN)

SOURCE = "0123456789abcdef"
WORKER = "w1"
LEASE = "feedc0de" * 4


class FaultyWorker(p2p_pb2_grpc.WorkerServiceServicer):
    """Serves one manifest through PrepareTensorRead, changed by the test to inject a fault;
    records the leases released."""

    def __init__(self):
        self.manifest = p2p_pb2.GetTensorManifestResponse(
            tensors=[p2p_pb2.TensorDescriptor(name="w", addr=4096, size=16, dtype="torch.float32")],
            mx_source_id=SOURCE, metadata_endpoint="127.0.0.1:5555", agent_name="mx-agent",
            worker_rank=0, accelerator="cpu", worker_id=WORKER)
        self.release_code = None  # a status code ReleaseTensorRead fails with
        self.block = None  # a threading.Event PrepareTensorRead waits for
        self.released = []

    def PrepareTensorRead(self, request, context):
        if self.block is not None:
            self.block.wait()
        return p2p_pb2.PrepareTensorReadResponse(lease_id=LEASE, manifest=self.manifest)

    def ReleaseTensorRead(self, request, context):
        if self.release_code is not None:
            context.abort(self.release_code, f"tensor read lease not found: {request.lease_id}")
        self.released.append(request.lease_id)
        return p2p_pb2.ReleaseTensorReadResponse()


@pytest.fixture
def worker():
    servicer = FaultyWorker()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    p2p_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.endpoint = f"127.0.0.1:{port}"
    yield servicer
    if servicer.block is not None:
        servicer.block.set()
    server.stop(0)


def record(endpoint, **changes):
    r = {"mx_source_id": SOURCE, "worker_id": WORKER, "worker_rank": 0,
         "worker_grpc_endpoint": endpoint, "metadata_endpoint": "127.0.0.1:5555",
         "agent_name": "mx-agent", "accelerator": "cpu", "tensors": [], "nixl_metadata": b""}
    r.update(changes)
    return r


def test_a_good_manifest_is_read_under_its_lease(worker):
    with _mx_worker.TensorRead.open(record(worker.endpoint), 5) as read:
        assert [t["name"] for t in read.tensors] == ["w"]
        assert (read.agent_name, read.host, read.port) == ("mx-agent", "127.0.0.1", 5555)
        assert read.lease_id == LEASE and worker.released == []
        read.release()
        assert worker.released == [LEASE]
    assert worker.released == [LEASE]  # once


@pytest.mark.parametrize("field,value,expected", [
    ("worker_id", "w2", "serves worker 'w2', not 'w1'; the source restarted"),
    ("mx_source_id", "fedcba9876543210", "serves mx_source_id 'fedcba9876543210', not the "
                                         "record's '0123456789abcdef'"),
    ("worker_rank", 3, "serves rank 3, the record says 0"),
    ("agent_name", "another-agent", "names agent_name 'another-agent', the record 'mx-agent'"),
    ("metadata_endpoint", "127.0.0.1:bad", "names metadata_endpoint '127.0.0.1:bad'"),
    ("accelerator", "cuda", "its tensors are in cuda memory"),
])
def test_a_manifest_that_contradicts_the_record_is_refused_and_its_lease_released(
        worker, field, value, expected):
    setattr(worker.manifest, field, value)
    with pytest.raises(ferry.FailedPreconditionError) as e:
        _mx_worker.TensorRead.open(record(worker.endpoint), 5)
    assert f"worker w1's endpoint {worker.endpoint}" in str(e.value)
    assert expected in str(e.value)
    assert worker.released == [LEASE]


def test_a_record_naming_other_tensors_than_the_manifest_is_refused(worker):
    tensors = [{"name": "v", "addr": 0, "size": 16, "device_id": 0, "dtype": ""}]
    with pytest.raises(ferry.FailedPreconditionError, match="serves 1 tensors and its record "
                                                            "names 1, not the same names"):
        _mx_worker.TensorRead.open(record(worker.endpoint, tensors=tensors), 5)
    assert worker.released == [LEASE]


@pytest.mark.parametrize("code,error,expected", [
    (grpc.StatusCode.NOT_FOUND, ferry.DataLossError,
     f"no longer held read lease {LEASE} when the read ended .* the bytes are not trusted"),
    # Never a refusal once bytes may have moved, whatever the code.
    (grpc.StatusCode.FAILED_PRECONDITION, ferry.UnavailableError,
     f"ReleaseTensorRead of lease {LEASE} to worker w1's endpoint .* FAILED_PRECONDITION.* "
     f"the bytes are not trusted"),
])
def test_a_lease_release_that_fails_fails_the_read(worker, code, error, expected):
    worker.release_code = code
    read = _mx_worker.TensorRead.open(record(worker.endpoint), 5)
    with pytest.raises(error, match=expected):
        read.release()
    read.close()  # does not try again, does not raise


def test_an_answer_over_the_size_bound_is_refused(worker, monkeypatch):
    monkeypatch.setattr(_mx_worker, "MAX_MANIFEST_BYTES", 4096)
    worker.manifest.tensors.extend(
        p2p_pb2.TensorDescriptor(name=f"t{i}", addr=i, size=4) for i in range(500))
    with pytest.raises(ferry.UnavailableError, match="PrepareTensorRead to worker w1's endpoint "
                                                     ".* RESOURCE_EXHAUSTED"):
        _mx_worker.TensorRead.open(record(worker.endpoint), 5)


def test_a_source_that_does_not_answer_in_time_is_given_up(worker):
    worker.block = threading.Event()
    with pytest.raises(ferry.DeadlineExceededError, match="PrepareTensorRead to worker w1's "
                                                          "endpoint .* DEADLINE_EXCEEDED"):
        _mx_worker.TensorRead.open(record(worker.endpoint), 0.5)


@contextlib.contextmanager
def unserved_port():
    """A loopback port bound and not listening while the block lasts: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_an_unreachable_endpoint_is_unavailable():
    with unserved_port() as port:
        with pytest.raises(ferry.UnavailableError, match="PrepareTensorRead to worker w1's "
                                                         "endpoint .* UNAVAILABLE"):
            _mx_worker.TensorRead.open(record(f"127.0.0.1:{port}"), 5)
