"""ModelExpress's WorkerService as a ferry target calls it, for a source in P2P metadata mode
(ModelExpress's default): the tensor manifest its worker endpoint serves and the read lease that
keeps the source's tensors in place while they are read (`TensorRead`). The checks of the
tensors themselves are `_foreign.plan_reads`, shared with the centralized layout.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ferry import _ferry
from ferry._wheels import grpc_runtime

_log = logging.getLogger("ferry.mx_worker")


# ModelExpress's WorkerService, as its P2P-mode targets call it (metadata/worker_server.py).

_PACKAGE = "model_express.p2p"
_SERVICE = f"/{_PACKAGE}.WorkerService/"
MAX_MANIFEST_BYTES = 256 << 20  # the most a manifest answer may be, as ferry's endpoint sends
MAX_REQUEST_BYTES = 64 << 10  # as ferry's endpoint accepts
MAX_LEASE_ID_BYTES = 256  # ModelExpress's are 32 hex characters
_MAX_DETAIL_CHARS = 512  # of a peer's error text quoted in ours

# The messages ferry sends and reads, field for field as in proto/model_express/p2p.proto (which
# tests/python/wheels/test_wheel_interop.py compares them with). ferry's Python package ships no
# generated stubs, so they are built at first use in a pool of their own, apart from any other
# copy of p2p.proto in the process (ModelExpress's p2p_pb2). Spec: "[repeated|optional] TYPE".
_WORKER_MESSAGES = {
    "TensorDescriptor": [("name", 1, "string"), ("addr", 2, "uint64"), ("size", 3, "uint64"),
                         ("device_id", 4, "uint32"), ("dtype", 5, "string")],
    "GetTensorManifestRequest": [("mx_source_id", 1, "string"),
                                 ("worker_id", 2, "optional string")],
    "GetTensorManifestResponse": [("tensors", 1, "repeated TensorDescriptor"),
                                  ("mx_source_id", 2, "string"),
                                  ("metadata_endpoint", 3, "string"),
                                  ("agent_name", 4, "string"), ("worker_rank", 5, "uint32"),
                                  ("accelerator", 6, "string"),
                                  ("worker_id", 7, "optional string")],
    "PrepareTensorReadRequest": [("mx_source_id", 1, "string"),
                                 ("worker_id", 2, "optional string")],
    "PrepareTensorReadResponse": [("lease_id", 1, "string"),
                                  ("manifest", 2, "GetTensorManifestResponse")],
    "ReleaseTensorReadRequest": [("mx_source_id", 1, "string"),
                                 ("worker_id", 2, "optional string"), ("lease_id", 3, "string")],
    "ReleaseTensorReadResponse": [],
}
_messages: Optional[Dict[str, type]] = None


def worker_messages() -> Dict[str, type]:
    """The message classes of `_WORKER_MESSAGES`, by name."""
    global _messages
    if _messages is not None:
        return _messages
    _, descriptor_pb2, descriptor_pool, message_factory = grpc_runtime()
    field_proto = descriptor_pb2.FieldDescriptorProto
    scalars = {"string": field_proto.TYPE_STRING, "uint64": field_proto.TYPE_UINT64,
               "uint32": field_proto.TYPE_UINT32}
    file = descriptor_pb2.FileDescriptorProto(name="ferry/model_express_worker_service.proto",
                                              package=_PACKAGE, syntax="proto3")
    for message_name, fields in _WORKER_MESSAGES.items():
        message = file.message_type.add(name=message_name)
        for field_name, number, spec in fields:
            words = spec.split()
            field = message.field.add(name=field_name, number=number,
                                      label=(field_proto.LABEL_REPEATED
                                             if words[0] == "repeated"
                                             else field_proto.LABEL_OPTIONAL))
            if words[-1] in scalars:
                field.type = scalars[words[-1]]
            else:
                field.type = field_proto.TYPE_MESSAGE
                field.type_name = f".{_PACKAGE}.{words[-1]}"
            if words[0] == "optional":  # proto3 `optional`: presence, by a synthetic oneof
                field.proto3_optional = True
                field.oneof_index = len(message.oneof_decl)
                message.oneof_decl.add(name=f"_{field_name}")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(file.SerializeToString())
    classes = {}
    for message_name in _WORKER_MESSAGES:
        descriptor = pool.FindMessageTypeByName(f"{_PACKAGE}.{message_name}")
        if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.22
            classes[message_name] = message_factory.GetMessageClass(descriptor)
        else:
            classes[message_name] = message_factory.MessageFactory(pool).GetPrototype(descriptor)
    _messages = classes
    return classes


def _split_endpoint(endpoint: str, what: str) -> Tuple[str, int]:
    """(host, port) of "host:port" or "[v6]:port"; FailedPrecondition naming `what` otherwise."""
    host, _, port = endpoint.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _ferry.FailedPreconditionError(
            f"{what} {endpoint!r} is not host:port; the source published a malformed record")
    return host, int(port)


def _rpc_failed(grpc, rpc: str, where: str, error) -> _ferry.Error:
    """A ferry error for a failed call: its class from the gRPC code (what the caller should do:
    UNAVAILABLE and its kin move on to the next source), its message naming the call and the
    worker."""
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else str(error)) or ""
    if len(details) > _MAX_DETAIL_CHARS:
        details = details[:_MAX_DETAIL_CHARS] + "..."
    name = code.name if code is not None else "UNKNOWN"
    message = f"{rpc} to {where} failed: {name}: {details}"
    c = grpc.StatusCode
    if code == c.DEADLINE_EXCEEDED:
        return _ferry.DeadlineExceededError(message)
    if code == c.NOT_FOUND:
        return _ferry.NotFoundError(message + "; the source no longer serves it: re-list sources")
    if code in (c.FAILED_PRECONDITION, c.INVALID_ARGUMENT, c.UNIMPLEMENTED, c.OUT_OF_RANGE):
        return _ferry.FailedPreconditionError(
            message + "; the source restarted or is not a ModelExpress source in P2P metadata "
            "mode: re-list sources")
    if code == c.UNAUTHENTICATED:
        return _ferry.UnauthenticatedError(message)
    if code == c.PERMISSION_DENIED:
        return _ferry.PermissionDeniedError(message)
    return _ferry.UnavailableError(message)


class TensorRead:
    """One read of a ModelExpress source in P2P metadata mode: the manifest its worker endpoint
    served, checked against the server's record, and the read lease that keeps the source from
    changing or freeing its tensors until release(). Sources without leases (before ModelExpress
    0.7.0: PrepareTensorRead answers UNIMPLEMENTED) are read from GetTensorManifest, unleased.

    Made by open(); a context manager whose exit releases a lease still held, logging (not
    raising) a failure there so that the error that ended the read is the one raised. Calls go
    without credentials (ModelExpress's worker endpoints take none), each with a deadline, and
    answers larger than MAX_MANIFEST_BYTES are refused. Thread-compatible."""

    def __init__(self, grpc, channel, messages, record: Mapping[str, Any], timeout: float):
        self._grpc = grpc
        self._channel = channel
        self._messages = messages
        self._timeout = timeout
        self._mx_source_id: str = record["mx_source_id"]
        self._worker_id: str = record["worker_id"]
        self.endpoint: str = record["worker_grpc_endpoint"]
        self.where = f"worker {self._worker_id}'s endpoint {self.endpoint}"
        self.lease_id = ""  # "" when the source has no leases
        self._released = False
        self.tensors: List[Dict[str, Any]] = []  # as the record's: name, addr, size, ...
        self.agent_name = ""
        self.host = ""  # the NIXL agent's listener
        self.port = 0
        self._manifest = None

    @classmethod
    def open(cls, record: Mapping[str, Any], timeout: float) -> "TensorRead":
        """Takes a read lease and the manifest from the record's worker endpoint (PrepareTensorRead;
        GetTensorManifest when the source has no leases), each call within `timeout` seconds,
        and checks the manifest against `record`. Raises a ferry.Error naming the worker and
        what to do (FailedPrecondition when the source answers for another source or worker, or
        its manifest contradicts the record; Unavailable / DeadlineExceeded when it cannot be
        reached); a lease taken is released first."""
        grpc, *_ = grpc_runtime()
        messages = worker_messages()
        channel = grpc.insecure_channel(record["worker_grpc_endpoint"], options=[
            ("grpc.max_receive_message_length", MAX_MANIFEST_BYTES),
            ("grpc.max_send_message_length", MAX_REQUEST_BYTES)])
        read = cls(grpc, channel, messages, record, timeout)
        try:
            read._prepare()
            read._check(record)
        except BaseException:
            read.close()
            raise
        return read

    def _call(self, rpc: str, **fields):
        request = self._messages[f"{rpc}Request"](mx_source_id=self._mx_source_id, **fields)
        if self._worker_id:
            request.worker_id = self._worker_id  # the source refuses if it is another worker
        method = self._channel.unary_unary(
            _SERVICE + rpc, request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=self._messages[f"{rpc}Response"].FromString)
        return method(request, timeout=self._timeout)

    def _prepare(self) -> None:
        grpc = self._grpc
        try:
            response = self._call("PrepareTensorRead")
            manifest = response.manifest
            self.lease_id = response.lease_id
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise _rpc_failed(grpc, "PrepareTensorRead", self.where, e) from None
            try:  # a source from before read leases: the manifest alone, as its targets read it
                manifest = self._call("GetTensorManifest")
            except grpc.RpcError as e2:
                raise _rpc_failed(grpc, "GetTensorManifest", self.where, e2) from None
        else:
            if not self.lease_id:
                raise _ferry.FailedPreconditionError(
                    f"{self.where} answered PrepareTensorRead without a lease id; it is not a "
                    f"ModelExpress source this ferry can read safely")
            if len(self.lease_id) > MAX_LEASE_ID_BYTES:
                lease_bytes = len(self.lease_id)
                self.lease_id = ""  # not sent back: it expires at the source
                raise _ferry.FailedPreconditionError(
                    f"{self.where} answered PrepareTensorRead with a {lease_bytes}-byte lease "
                    f"id (at most {MAX_LEASE_ID_BYTES})")
        self.tensors = [{"name": t.name, "addr": t.addr, "size": t.size,
                         "device_id": t.device_id, "dtype": t.dtype} for t in manifest.tensors]
        self._manifest = manifest

    def _check(self, record: Mapping[str, Any]) -> None:
        m = self._manifest
        restarted = "the source restarted or the endpoint now serves another: re-list sources"
        if m.mx_source_id != self._mx_source_id:
            raise _ferry.FailedPreconditionError(
                f"{self.where} serves mx_source_id {m.mx_source_id!r}, not the record's "
                f"{self._mx_source_id!r}; {restarted}")
        if m.HasField("worker_id") and m.worker_id != self._worker_id:
            raise _ferry.FailedPreconditionError(
                f"{self.where} serves worker {m.worker_id!r}, not {self._worker_id!r}; "
                f"{restarted}")
        if m.worker_rank != record["worker_rank"]:
            raise _ferry.FailedPreconditionError(
                f"{self.where} serves rank {m.worker_rank}, the record says "
                f"{record['worker_rank']}; {restarted}")
        if m.accelerator not in ("", "cpu"):
            raise _ferry.FailedPreconditionError(
                f"{self.where}: its tensors are in {m.accelerator} memory; this build of ferry "
                f"reads host memory only")
        for field in ("agent_name", "metadata_endpoint"):
            ours, theirs = record[field], getattr(m, field)
            if ours and theirs and ours != theirs:
                raise _ferry.FailedPreconditionError(
                    f"{self.where} names {field} {theirs!r}, the record {ours!r}; {restarted}")
        self.agent_name = m.agent_name or record["agent_name"]
        endpoint = m.metadata_endpoint or record["metadata_endpoint"]
        if not self.agent_name:
            raise _ferry.FailedPreconditionError(
                f"{self.where} names no NIXL agent (agent_name), nor does its record")
        self.host, self.port = _split_endpoint(endpoint, f"{self.where}'s metadata_endpoint")
        if record["tensors"]:  # a record that carries descriptors too must name the same ones
            published = sorted(d["name"] for d in record["tensors"])
            served = sorted(t["name"] for t in self.tensors)
            if published != served:
                raise _ferry.FailedPreconditionError(
                    f"{self.where} serves {len(served)} tensors and its record names "
                    f"{len(published)}, not the same names; {restarted}")

    def release(self) -> None:
        """Releases the lease (nothing without one). Raises ferry.DataLossError when the source
        no longer holds it (it expired, or the source restarted: the tensors may have changed
        during the read, so the bytes read are not trusted) and ferry.UnavailableError when the
        release fails otherwise, as ModelExpress's target fails its load then. Once only."""
        if not self.lease_id or self._released:
            return
        self._released = True
        grpc = self._grpc
        try:
            self._call("ReleaseTensorRead", lease_id=self.lease_id)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise _ferry.DataLossError(
                    f"{self.where} no longer held read lease {self.lease_id} when the read "
                    f"ended (it expired, or the source restarted): its tensors may have changed "
                    f"during the read, so the bytes are not trusted; pull again") from None
            # Whatever the code: the bytes are in place by now, so this is never a refusal.
            failed = _rpc_failed(grpc, f"ReleaseTensorRead of lease {self.lease_id}",
                                 self.where, e)
            raise _ferry.UnavailableError(
                f"{failed}; the lease's hold over the read is unconfirmed, so the bytes are not "
                f"trusted") from None

    def close(self) -> None:
        """Releases a lease still held (logging a failure) and closes the channel. Idempotent."""
        try:
            self.release()
        except _ferry.Error as e:
            _log.warning("%s", e)
        finally:
            self._channel.close()

    def __enter__(self) -> "TensorRead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def lease_summary(self) -> str:
        """What protected the source's memory during the read, for report.verification."""
        if self.lease_id:
            return (f"read lease {self.lease_id} held from PrepareTensorRead to "
                    f"ReleaseTensorRead")
        return ("none: the source answered PrepareTensorRead UNIMPLEMENTED (it predates read "
                "leases), manifest from GetTensorManifest")
