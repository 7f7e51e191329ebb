"""ModelExpress's client with a token configured, against ferry-server --auth-tokens.

The upstream client (modelexpress/auth.py, contract section 8) reads a token file and adds
``authorization: Bearer <token>`` to every call through a channel interceptor. This reproduces
that interceptor over the generated stubs.
"""

import grpc
import pytest

from model_express import health_pb2, health_pb2_grpc, p2p_pb2, p2p_pb2_grpc
from mx_client import base_identity, new_worker_id, p2p_worker

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef"


def _stubs(address, token=None):
    channel = grpc.insecure_channel(address)
    if token is not None:
        channel = grpc.intercept_channel(channel, _TokenInterceptor(token))
    return channel, p2p_pb2_grpc.P2pServiceStub(channel), health_pb2_grpc.HealthServiceStub(channel)


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Adds the bearer header; ClientCallDetails is a namedtuple-like object in grpcio."""

    def __init__(self, token):
        self._token = token

    def intercept_unary_unary(self, continuation, details, request):
        metadata = list(details.metadata or []) + [("authorization", f"Bearer {self._token}")]
        new_details = _CallDetails(
            details.method, details.timeout, metadata, details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))
        return continuation(new_details, request)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


@pytest.fixture
def auth_server(start_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# test deployment\n{ALICE} alice\n{BOB} bob\n")
    return start_server("--auth-tokens", str(tokens))


def test_client_with_token_runs_the_whole_flow(auth_server):
    channel, p2p, _ = _stubs(auth_server.address, ALICE)
    worker_id = new_worker_id()
    published = p2p.PublishMetadata(
        p2p_pb2.PublishMetadataRequest(
            identity=base_identity(), worker=p2p_worker(0), worker_id=worker_id),
        timeout=10)
    assert published.success, published.message
    assert published.mx_source_id == "5a5f555570065064"
    updated = p2p.UpdateStatus(
        p2p_pb2.UpdateStatusRequest(mx_source_id=published.mx_source_id, worker_id=worker_id,
                                    worker_rank=0, status=p2p_pb2.SOURCE_STATUS_READY),
        timeout=10)
    assert updated.success, updated.message
    listed = p2p.ListSources(
        p2p_pb2.ListSourcesRequest(identity=base_identity(),
                                   status_filter=p2p_pb2.SOURCE_STATUS_READY),
        timeout=10).instances
    assert [i.worker_id for i in listed] == [worker_id]
    got = p2p.GetMetadata(
        p2p_pb2.GetMetadataRequest(mx_source_id=published.mx_source_id, worker_id=worker_id),
        timeout=10)
    assert got.found and got.worker.worker_grpc_endpoint == "10.0.0.7:6600"
    channel.close()


def test_missing_or_unknown_token_is_unauthenticated_and_health_is_exempt(auth_server):
    for token in (None, "not-a-known-token-at-all"):
        channel, p2p, health = _stubs(auth_server.address, token)
        with pytest.raises(grpc.RpcError) as err:
            p2p.ListSources(p2p_pb2.ListSourcesRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert health.GetHealth(health_pb2.HealthRequest(), timeout=10).status == "ok"
        channel.close()


def test_another_principal_cannot_change_the_record(auth_server):
    alice_ch, alice, _ = _stubs(auth_server.address, ALICE)
    bob_ch, bob, _ = _stubs(auth_server.address, BOB)
    worker_id = new_worker_id()
    published = alice.PublishMetadata(
        p2p_pb2.PublishMetadataRequest(
            identity=base_identity(), worker=p2p_worker(0), worker_id=worker_id),
        timeout=10)
    assert published.success
    with pytest.raises(grpc.RpcError) as err:
        bob.UpdateStatus(
            p2p_pb2.UpdateStatusRequest(mx_source_id=published.mx_source_id,
                                        worker_id=worker_id, worker_rank=0,
                                        status=p2p_pb2.SOURCE_STATUS_STALE),
            timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "alice" in err.value.details()
    # Bob may still read it.
    got = bob.GetMetadata(
        p2p_pb2.GetMetadataRequest(mx_source_id=published.mx_source_id, worker_id=worker_id),
        timeout=10)
    assert got.found and got.worker.status == p2p_pb2.SOURCE_STATUS_INITIALIZING
    alice_ch.close()
    bob_ch.close()
