"""Requests built the way ModelExpress's Python client builds them.

Sources: contract section 6.1 (metadata/publish.py, metadata/publisher.py upstream). The real
client publishes with ``status`` and ``updated_at`` unset, mints an 8-hex ``worker_id`` per rank
process, then sends ``UpdateStatus(READY)`` on the same tick; targets call
``ListSources(identity, status_filter=READY)`` and then ``GetMetadata``.
"""

import uuid

import grpc

from model_express import health_pb2, health_pb2_grpc, p2p_pb2, p2p_pb2_grpc

# Contract section 3.1: the "base" identity and its pinned server id.
BASE_SOURCE_ID = "5a5f555570065064"

# The client's channel limit (contract section 1: 100 MiB both ways).
_MAX_MESSAGE = 100 * 1024 * 1024


def base_identity(**overrides):
    """The contract's base identity, with fields replaced by ``overrides``."""
    fields = dict(
        mx_version="0.5.0",
        mx_source_type=p2p_pb2.MX_SOURCE_TYPE_WEIGHTS,
        model_name="deepseek-ai/DeepSeek-V3",
        backend_framework=p2p_pb2.BACKEND_FRAMEWORK_VLLM,
        tensor_parallel_size=8,
        pipeline_parallel_size=1,
        expert_parallel_size=0,
        dtype="bfloat16",
    )
    fields.update(overrides)
    return p2p_pb2.SourceIdentity(**fields)


def new_worker_id():
    """8 lowercase hex characters, as the client mints them (uuid4, one per rank process)."""
    return uuid.uuid4().hex[:8]


def p2p_worker(rank, host="10.0.0.7"):
    """P2P mode (MX_P2P_METADATA=1, the default): endpoints only, no payload, no status/time."""
    return p2p_pb2.WorkerMetadata(
        worker_rank=rank,
        metadata_endpoint=f"{host}:{5600 + rank}",
        agent_name=f"mx-agent-{rank}",
        worker_grpc_endpoint=f"{host}:{6600 + rank}",
        accelerator="cuda",
    )


def tensor_list(count, rank=0):
    """``count`` descriptors shaped like a real layer stack (``str(torch.dtype)`` dtypes)."""
    base = 0x7F3A_0000_0000 + (rank << 36)
    size = 4096 * 7168 * 2
    return [
        p2p_pb2.TensorDescriptor(
            name=f"model.layers.{i // 8}.mlp.experts.{i % 8}.down_proj.weight",
            addr=base + i * size,
            size=size,
            device_id=rank,
            dtype="torch.bfloat16",
        )
        for i in range(count)
    ]


def centralized_worker(rank, tensors, nixl_metadata):
    """Centralized mode (MX_P2P_METADATA=0): NIXL blob plus the tensors written twice."""
    worker = p2p_pb2.WorkerMetadata(
        worker_rank=rank, nixl_metadata=nixl_metadata, accelerator="cuda"
    )
    worker.tensors.extend(tensors)
    worker.tensor_source.tensors.extend(tensors)
    return worker


class MxClient:
    """A thin synchronous client over the generated stubs, one channel per instance."""

    def __init__(self, address):
        self.channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ],
        )
        self.p2p = p2p_pb2_grpc.P2pServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthServiceStub(self.channel)

    def close(self):
        self.channel.close()

    def publish(self, identity, worker, worker_id):
        return self.p2p.PublishMetadata(
            p2p_pb2.PublishMetadataRequest(
                identity=identity, worker=worker, worker_id=worker_id
            ),
            timeout=30,
        )

    def update_status(self, source_id, worker_id, rank, status):
        return self.p2p.UpdateStatus(
            p2p_pb2.UpdateStatusRequest(
                mx_source_id=source_id, worker_id=worker_id, worker_rank=rank, status=status
            ),
            timeout=30,
        )

    def list_ready(self, identity):
        return self.p2p.ListSources(
            p2p_pb2.ListSourcesRequest(
                identity=identity, status_filter=p2p_pb2.SOURCE_STATUS_READY
            ),
            timeout=30,
        ).instances

    def get(self, source_id, worker_id):
        return self.p2p.GetMetadata(
            p2p_pb2.GetMetadataRequest(mx_source_id=source_id, worker_id=worker_id),
            timeout=30,
        )

    def get_health(self):
        return self.health.GetHealth(health_pb2.HealthRequest(), timeout=10)

    def publish_ready(self, identity, worker, worker_id=None):
        """The source's first heartbeat tick: publish, then READY.

        Returns (mx_source_id, worker_id).
        """
        worker_id = worker_id or new_worker_id()
        published = self.publish(identity, worker, worker_id)
        assert published.success, published.message
        updated = self.update_status(
            published.mx_source_id, worker_id, worker.worker_rank, p2p_pb2.SOURCE_STATUS_READY
        )
        assert updated.success, updated.message
        return published.mx_source_id, worker_id
