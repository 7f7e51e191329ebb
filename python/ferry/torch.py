"""torch helpers: publish a model's tensors in place, pull a source's tensors into a model.

The loader flow of an inference engine, in a few lines::

    # source: load, post-process, publish
    model = build_model(); model.load_state_dict(torch.load(path)); post_process(model)
    handle = ferry.torch.publish(model, {"model_name": "org/llama", "dtype": "bfloat16"})
    ...                                   # serve; handle.stop() (or exit) marks it STALE

    # target: dummy init, post-process, pull, fall back when no source exists
    model = build_model(); post_process(model)
    report = ferry.torch.pull_into(model, {"model_name": "org/llama", "dtype": "bfloat16"})
    if not report.ok:
        model.load_state_dict(torch.load(path)); post_process(model)

The server address comes from `server="host:port"` or, as for the `ferry` command, from
FERRY_SERVER / MX_SERVER_ADDRESS; the token and TLS files from FERRY_TOKEN_FILE, FERRY_TLS_CA,
and so on.

Host (CPU) tensors only: this build of ferry moves host memory.

`backend` picks the data path. publish: "ferry" (default: ferry's engine and worker endpoint)
or "nixl" (a NIXL agent, published as ModelExpress's centralized publisher does: nixl_metadata
plus tensor descriptors, so ModelExpress's own targets read it). pull_into: "auto" (default:
per source, what its record offers), "ferry", "nixl" or "transfer_engine" (Mooncake). NIXL and
TransferEngine need their wheels (python/requirements-wheels.txt); a missing one raises
ferry.FailedPreconditionError naming the package to install.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import ipaddress
import logging
import os
import socket
import time
import uuid
import weakref
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ferry import _ferry
from ferry import _foreign
from ferry import _mx_worker
from ferry._identity import IdentityLike, as_identity_dict, client_for

__all__ = ["publish", "pull_into", "PublishHandle", "PullReport", "named_tensors"]

_log = logging.getLogger("ferry.torch")


def _dtype_names() -> Dict[torch.dtype, str]:
    """torch dtype -> the safetensors name ferry's wire uses, built from the module's dtype table
    (`_ferry.dtypes()`, the one list of what ferry moves): each row whose torch name this torch
    knows, with the element size checked against the table's."""
    names: Dict[torch.dtype, str] = {}
    for name, torch_name, size in _ferry.dtypes():
        dtype = getattr(torch, torch_name[len("torch."):], None)
        if not isinstance(dtype, torch.dtype) or str(dtype) != torch_name:
            continue  # this torch has no such dtype (float8_e8m0fnu before torch 2.7, ...)
        try:
            element_size = torch.empty(0, dtype=dtype).element_size()
        except (RuntimeError, TypeError):
            continue  # named but not usable for tensors in this torch
        if element_size != size:
            raise ImportError(f"ferry's dtype table gives {name} ({torch_name}) {size} bytes per "
                              f"element, this torch {element_size}; rebuild ferry")
        names[dtype] = name
    return names


_DTYPE_NAMES = _dtype_names()

ModuleOrStateDict = Union[torch.nn.Module, Mapping[str, torch.Tensor]]


def named_tensors(module_or_state_dict: ModuleOrStateDict) -> Dict[str, torch.Tensor]:
    """The tensors ferry moves: a module's state_dict (parameters and persistent buffers; tied
    weights appear under each name), or the mapping itself."""
    if isinstance(module_or_state_dict, torch.nn.Module):
        return dict(module_or_state_dict.state_dict())
    if isinstance(module_or_state_dict, Mapping):
        out = {}
        for name, t in module_or_state_dict.items():
            if not isinstance(t, torch.Tensor):
                raise _ferry.InvalidArgumentError(
                    f"{name!r} is a {type(t).__name__}, not a torch.Tensor; pass a module or a "
                    f"mapping of names to tensors"
                )
            out[str(name)] = t
        return out
    raise _ferry.InvalidArgumentError(
        f"expected a torch.nn.Module or a mapping of names to tensors, "
        f"got {type(module_or_state_dict).__name__}"
    )


def _storage_span(t: torch.Tensor) -> Tuple[int, int]:
    """(address, bytes) of the allocation holding `t`."""
    if hasattr(t, "untyped_storage"):
        s = t.untyped_storage()
    else:
        s = t.storage()
    return s.data_ptr(), s.nbytes()


def _check_tensor(name: str, t: torch.Tensor) -> str:
    """The wire dtype of `t`, or a ferry.InvalidArgumentError naming the tensor and why."""
    if t.device.type == "meta":
        raise _ferry.InvalidArgumentError(
            f"tensor {name} is on the meta device and has no memory; materialize the model "
            f"(for example module.to_empty(device='cpu')) first"
        )
    if t.device.type not in ("cpu", "cuda"):
        raise _ferry.InvalidArgumentError(
            f"tensor {name} is on {t.device}; ferry moves host (cpu) and CUDA (cuda) memory"
        )
    if t.layout != torch.strided:
        raise _ferry.InvalidArgumentError(
            f"tensor {name} has layout {t.layout}; only dense (strided) tensors can be moved"
        )
    if t.is_conj() or (hasattr(t, "is_neg") and t.is_neg()):
        raise _ferry.InvalidArgumentError(
            f"tensor {name} is a lazy conjugate or negative view; call resolve_conj() / "
            f"resolve_neg() first"
        )
    dtype = _DTYPE_NAMES.get(t.dtype)
    if dtype is None:
        raise _ferry.InvalidArgumentError(
            f"tensor {name} has dtype {t.dtype}, which ferry cannot move; supported: "
            + ", ".join(sorted(str(d) for d in _DTYPE_NAMES))
        )
    return dtype


def _device_of(t: torch.Tensor) -> int:
    """-1 for host memory, else the CUDA device index of `t` (the current one when unset)."""
    if t.device.type != "cuda":
        return -1
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


def _describe(tensors: Mapping[str, torch.Tensor]):
    """(buffers, spans, span_devices) for the binding: one span per distinct storage, and per
    span -1 (host memory) or the CUDA device holding it."""
    buffers = []
    spans: Dict[int, Tuple[int, int]] = {}
    for name, t in tensors.items():
        dtype = _check_tensor(name, t)
        nbytes = t.numel() * t.element_size()
        address = t.data_ptr() if nbytes else 0
        buffers.append((name, dtype, list(t.shape), address, nbytes))
        if nbytes:
            base, size = _storage_span(t)
            previous = spans.get(base, (0, -1))[0]
            spans[base] = (max(previous, size), _device_of(t))
    ordered = sorted(spans.items())
    return (buffers, [(base, size) for base, (size, _) in ordered],
            [device for _, (_, device) in ordered])


def _synchronize(span_devices: Sequence[int]) -> None:
    """Waits for the work queued on every CUDA device the tensors live on: ferry reads and
    writes device memory on its own streams, outside PyTorch's stream order."""
    for device in sorted(set(d for d in span_devices if d >= 0)):
        torch.cuda.synchronize(device)


def _engine(name: str, transports: Optional[Sequence[str]], data_listen: str,
            advertise_host: str, max_upload_rate: int = 0) -> _ferry.TransferEngine:
    if max_upload_rate and not transports:
        transports = ["tcp"]  # a cap paces the TCP server; shm and UCX reads are one-sided
    return _ferry.TransferEngine(
        name,
        transports=list(transports or []),
        tcp_listen=data_listen,
        advertise_host=advertise_host,
        max_upload_rate=max_upload_rate,
    )


class PublishHandle:
    """Serves published tensors until stop(), which marks the source STALE and closes its
    endpoint. Also a context manager; serving stops at interpreter exit, or when the handle is
    garbage-collected (it keeps the tensors alive while serving)."""

    def __init__(self, source, engine, tensors: Dict[str, torch.Tensor], copies: List[str],
                 backend: str = "ferry"):
        # source: a _ferry.WeightSource (backend "ferry"), a _NixlSource ("nixl") or a
        # _DualSource ("ferry+nixl").
        self._source = source
        self._tensors = tensors
        self.backend: str = backend  # "ferry", "nixl" or "ferry+nixl"
        self.mx_source_id: str = source.mx_source_id
        self.worker_id: str = source.worker_id
        self.endpoint: str = source.endpoint  # worker endpoint ("" for nixl: none is served)
        self.total_bytes: int = source.total_bytes  # sum over names (tied weights per name)
        self.regions: int = source.regions  # registered allocations (storages)
        self.tensors: int = source.tensors
        self.copied: List[str] = copies  # non-contiguous tensors published from a copy
        self._finalizer = weakref.finalize(self, _stop_source, source, engine)

    def stop(self) -> None:
        """Marks the source STALE and stops serving. Idempotent."""
        self._finalizer()
        self._tensors = {}

    @property
    def serving(self) -> bool:
        return self._finalizer.alive

    def __enter__(self) -> "PublishHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "serving" if self.serving else "stopped"
        return (f"<ferry.torch.PublishHandle {state} backend={self.backend} "
                f"mx_source_id={self.mx_source_id} "
                f"worker_id={self.worker_id} endpoint={self.endpoint} tensors={self.tensors} "
                f"bytes={self.total_bytes}>")


def _stop_source(source, engine) -> None:
    source.stop()
    if engine is not None:
        engine.stop()


class _NixlSource:
    """A NIXL agent serving the tensors and the publisher of its record (ModelExpress's
    centralized layout: nixl_metadata, tensor_source and the legacy tensor list)."""

    def __init__(self, client, identity: Dict[str, Any], tensors: Mapping[str, torch.Tensor],
                 spans, worker_rank: int, worker_id: str, accelerator: str,
                 heartbeat_interval: Optional[float]):
        from ferry import _nixl

        name = f"ferry-nixl-rank{worker_rank}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._server = _nixl.NixlServer(name, spans)
        descriptors = []
        for tname, t in tensors.items():
            nbytes = t.numel() * t.element_size()
            # As ModelExpress's build_tensor_protos: data_ptr, bytes, device, str(dtype).
            descriptors.append((tname, t.data_ptr() if nbytes else 0, nbytes, 0, str(t.dtype)))
        try:
            self._publisher = _ferry.Publisher(
                client, identity, worker_rank=worker_rank, accelerator=accelerator,
                worker_id=worker_id, heartbeat_interval=heartbeat_interval,
                nixl_metadata=self._server.metadata, tensors=descriptors, agent_name=name)
            self._publisher.start()
        except BaseException:
            self._server.stop()
            raise
        self.mx_source_id = self._publisher.mx_source_id
        self.worker_id = self._publisher.worker_id
        self.endpoint = ""
        self.total_bytes = sum(d[2] for d in descriptors)
        self.regions = sum(1 for _, size in spans if size)
        self.tensors = len(descriptors)

    def stop(self) -> None:
        """Marks the record STALE, then stops serving. Idempotent."""
        self._publisher.stop()
        self._server.stop()


class _DualSource:
    """publish(backend="ferry+nixl"): ferry's WeightSource (engine, worker endpoint with
    ModelExpress's tensor methods and read leases, the record) and the NIXL agent registered over
    the same memory, whose listener hands its metadata to ModelExpress's P2P targets."""

    def __init__(self, source, nixl_server):
        self._source = source
        self._nixl = nixl_server
        self.mx_source_id = source.mx_source_id
        self.worker_id = source.worker_id
        self.endpoint = source.endpoint
        self.total_bytes = source.total_bytes
        self.regions = source.regions
        self.tensors = source.tensors
        self.agent_name = nixl_server.agent_name

    def stop(self) -> None:
        """Marks the record STALE, takes no new read leases, waits up to 10 s for ModelExpress
        targets holding one to release it (their NIXL reads finish), closes the worker endpoint,
        then deregisters the memory from NIXL. Idempotent."""
        try:
            self._source.stop()
        finally:
            self._nixl.stop()


def _nixl_endpoint_host(worker_listen: str, advertise_host: str) -> str:
    """The address ModelExpress's targets dial for the NIXL agent's metadata: the host the worker
    endpoint advertises (advertise_host, else the listen host unless it is a wildcard, else this
    machine's name), as an IP address, since NIXL's listener client takes addresses only
    (inet_pton)."""
    host = advertise_host
    if not host:
        listen_host = worker_listen.rpartition(":")[0].strip("[]")
        host = listen_host if listen_host not in ("", "0.0.0.0", "::", "*") else socket.gethostname()
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        return socket.gethostbyname(host)
    except OSError as e:
        raise _ferry.InvalidArgumentError(
            f"publish(backend='ferry+nixl'): {host!r} does not resolve to an IPv4 address ({e}), "
            f"and NIXL's listener must be named by address; pass advertise_host=<this host's IP>"
        ) from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _publish_dual(metadata_client, identity: Dict[str, Any], served: Dict[str, torch.Tensor],
                  buffers, spans, copies: List[str], *, worker_rank: int, worker_id: str,
                  worker_listen: str, advertise_host: str, transports, data_listen: str,
                  accelerator: str, centralized: bool, heartbeat_interval,
                  checksum_threads: int, tls_cert: str, tls_key: str, tls_client_ca: str,
                  max_upload_rate: int, nixl_listen_port: int) -> PublishHandle:
    from ferry import _nixl
    from ferry._wheels import nixl_api
    nixl_api()  # a missing wheel is refused before anything starts
    if centralized:
        raise _ferry.InvalidArgumentError(
            "publish(backend='ferry+nixl') publishes ModelExpress's P2P metadata layout (its "
            "default: worker endpoint + NIXL listener); centralized=True does not apply")
    host = _nixl_endpoint_host(worker_listen, advertise_host)
    port = nixl_listen_port or _free_port()
    name = f"ferry-nixl-rank{worker_rank}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    nixl_server = _nixl.NixlServer(name, spans, listen_port=port)
    engine = None
    try:
        engine = _engine(f"python publish rank {worker_rank}", transports, data_listen,
                         advertise_host, max_upload_rate)
        source = _ferry.serve_buffers(
            metadata_client, engine, identity, buffers, spans, worker_rank=worker_rank,
            accelerator=accelerator, worker_id=worker_id, worker_listen=worker_listen,
            advertise_host=advertise_host, centralized=False,
            heartbeat_interval=heartbeat_interval, checksum_threads=checksum_threads,
            tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca,
            nixl_agent_name=name, nixl_metadata_endpoint=f"{host}:{port}")
    except BaseException:
        if engine is not None:
            engine.stop()
        nixl_server.stop()
        raise
    return PublishHandle(_DualSource(source, nixl_server), engine, served, copies,
                         backend="ferry+nixl")


def publish(
    module_or_state_dict: ModuleOrStateDict,
    identity: IdentityLike,
    *,
    server: Optional[str] = None,
    client: Optional[_ferry.MetadataClient] = None,
    worker_rank: int = 0,
    worker_id: str = "",
    worker_listen: str = "0.0.0.0:0",
    advertise_host: str = "",
    transports: Optional[Sequence[str]] = None,
    data_listen: str = "0.0.0.0:0",
    accelerator: Optional[str] = None,
    centralized: bool = False,
    heartbeat_interval: Optional[float] = None,
    checksum_threads: int = 2,
    tls_cert: str = "",
    tls_key: str = "",
    tls_client_ca: str = "",
    max_upload_rate: int = 0,
    backend: str = "ferry",
    nixl_listen_port: int = 0,
) -> PublishHandle:
    """Publishes the tensors of a module (its state_dict) or of a mapping, in place.

    Each underlying storage is registered with the transfer engine once, however many tensors
    (views, tied weights) it holds; every tensor is checksummed (XXH3-64) now, so the tensors
    must not change while published. Non-contiguous tensors are published from a contiguous
    copy (listed in handle.copied). Starts the worker endpoint (`worker_listen`), publishes
    READY with heartbeats, and returns the handle that stops serving.

    `transports`: any of "shm", "ucx", "tcp" (default: all this machine offers, UCX only with
    an RDMA device; shared memory serves only engine-allocated memory, so same-host targets
    read published tensors over TCP, or over UCX when "ucx" is named on both sides). `data_listen`: the TCP data listener's host:port. `tls_cert`/`tls_key` (and
    `tls_client_ca` for mutual TLS) serve the worker endpoint over TLS, as `ferry publish`'s
    --worker-tls-* flags. `max_upload_rate` (bytes per second, 0: none) caps what this source
    sends to all targets together, as `ferry publish --max-upload-rate`; it serves over TCP
    only.

    CUDA tensors are served from GPU memory, in place (one region per storage, on the device
    the tensor names): device to device over CUDA IPC to targets on this host, through pinned
    host memory over TCP to others; they are checksummed on the GPU with the tree checksum
    (xxh3-64-tree-64k). `accelerator` defaults to "cuda" when any tensor is on a GPU (so that
    ModelExpress GPU targets list the source), else "cpu".

    `backend="nixl"` serves the tensors from a NIXL agent (UCX, host memory) instead, and
    publishes its record as ModelExpress's centralized publisher does (MX_P2P_METADATA=0):
    `nixl_metadata` = the agent's metadata, the tensors as ModelExpress descriptors (address,
    bytes, device 0, torch dtype name) in `tensor_source` and the legacy list, no worker
    endpoint; ModelExpress targets and `pull_into` read it. Such a source publishes no
    checksums (the descriptor has no field for one), so its readers cannot verify the bytes.
    The ferry-engine arguments (transports, data_listen, worker_listen, centralized, TLS,
    checksum_threads) do not apply to it.

    `backend="ferry+nixl"` serves the same memory both ways under one record, for a fleet that
    moves from ModelExpress to ferry one replica at a time: ferry's engine and worker endpoint
    as with "ferry" (checksummed), and a NIXL agent (UCX, host memory) registered over the same
    tensors with its listener on `nixl_listen_port` (0: a free port). The record is
    ModelExpress's P2P metadata layout (its default, MX_P2P_METADATA=1): worker_grpc_endpoint
    (ferry's endpoint, which also serves ModelExpress's GetTensorManifest, PrepareTensorRead and
    ReleaseTensorRead: the descriptors as ModelExpress's publisher builds them, read leases of
    at most 270 s, 256 at once), metadata_endpoint (the listener, IP:port: the advertised host
    resolved to an address, as NIXL needs one) and agent_name; no nixl_metadata. ModelExpress's
    targets read it over NIXL; ferry's `pull_into` (backend "auto" or "ferry") and `ferry pull`
    read it with ferry's engine and verify checksums; `pull_into(backend="nixl")` reads it over
    NIXL. ModelExpress's targets send no token: a source that requires one (FERRY_TOKEN_FILE)
    refuses their calls (UNAUTHENTICATED). Host tensors only, as "nixl"; stop() marks the
    record STALE, waits up to 10 s for the read leases ModelExpress targets hold to be released,
    closes the endpoint, then deregisters the memory from NIXL.
    """
    if backend not in ("ferry", "nixl", "ferry+nixl", "auto"):
        raise _ferry.InvalidArgumentError(
            f"publish backend {backend!r} is not one of: auto (= ferry), ferry, nixl, ferry+nixl")
    tensors = named_tensors(module_or_state_dict)
    served: Dict[str, torch.Tensor] = {}
    copies = []
    for name, t in tensors.items():
        _check_tensor(name, t)
        if not t.is_contiguous():
            copies.append(name)
            t = t.contiguous()
        served[name] = t.detach()
    if copies:
        _log.warning("publishing %d non-contiguous tensor(s) from a contiguous copy: %s",
                     len(copies), ", ".join(copies[:5]) + (", ..." if len(copies) > 5 else ""))
    buffers, spans, span_devices = _describe(served)
    on_gpu = any(d >= 0 for d in span_devices)
    if accelerator is None:
        accelerator = "cuda" if on_gpu else "cpu"
    metadata_client = client_for(server, client)
    if on_gpu and backend in ("nixl", "ferry+nixl"):
        raise _ferry.InvalidArgumentError(
            f"publish(backend='{backend}') serves host memory only (NIXL's UCX here has no "
            f"CUDA); publish CUDA tensors with backend='ferry', or move them to the CPU first")
    if backend == "ferry+nixl":
        return _publish_dual(
            metadata_client, as_identity_dict(identity), served, buffers, spans, copies,
            worker_rank=worker_rank, worker_id=worker_id, worker_listen=worker_listen,
            advertise_host=advertise_host, transports=transports, data_listen=data_listen,
            accelerator=accelerator, centralized=centralized,
            heartbeat_interval=heartbeat_interval, checksum_threads=checksum_threads,
            tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca,
            max_upload_rate=max_upload_rate, nixl_listen_port=nixl_listen_port)
    if backend == "nixl":
        source = _NixlSource(metadata_client, as_identity_dict(identity), served, spans,
                             worker_rank, worker_id, accelerator, heartbeat_interval)
        return PublishHandle(source, None, served, copies, backend="nixl")
    engine = _engine(f"python publish rank {worker_rank}", transports, data_listen,
                     advertise_host, max_upload_rate)
    try:
        _synchronize(span_devices)  # the tensors' values are final before they are checksummed
        source = _ferry.serve_buffers(
            metadata_client, engine, as_identity_dict(identity), buffers, spans,
            worker_rank=worker_rank, accelerator=accelerator, worker_id=worker_id,
            worker_listen=worker_listen, advertise_host=advertise_host, centralized=centralized,
            heartbeat_interval=heartbeat_interval, checksum_threads=checksum_threads,
            tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca,
            span_devices=span_devices)
    except BaseException:
        engine.stop()
        raise
    return PublishHandle(source, engine, served, copies)


@dataclasses.dataclass
class PullReport:
    """What pull_into did. `ok` (also the report's truth value) means every tensor now holds the
    source's verified bytes. Otherwise `outcome` says why and the caller loads the weights
    another way:

    - "no_source": no READY source of this identity and rank; no tensor was touched.
    - "failed": sources were tried and all failed (`message` says what happened at each), or
      the server could not be reached; tensors may hold partial data (`modified`), so load them
      another way.

    `attempts` lists the sources tried by a successful pull, the one that delivered last.
    `bytes` counts what moved: a range shared by several names (tied weights) once.
    `backend` names the data path that delivered ("ferry", "nixl", "transfer_engine"),
    `transport` how ("nixl (UCX, DRAM), P2P metadata" for a ModelExpress source in its default
    mode), and `verification` what was checked: a ferry source's every tensor checksum; for
    NIXL and TransferEngine sources names, byte sizes and published dtypes, and no checksum
    (none is published), which `verification` says, with the manifest's checks and the read
    lease for a source in P2P metadata mode.
    """

    ok: bool
    outcome: str  # "pulled", "no_source" or "failed"
    message: str = ""
    modified: bool = False
    bytes: int = 0
    tensors: int = 0
    seconds: float = 0.0
    transfer_seconds: float = 0.0
    verify_seconds: float = 0.0
    transport: str = ""
    mx_source_id: str = ""
    source_worker_id: str = ""
    source_endpoint: str = ""
    attempts: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    metadata: Dict[str, str] = dataclasses.field(default_factory=dict)
    backend: str = ""
    verification: str = ""

    @property
    def gbps(self) -> float:
        """Bytes per second of the whole call, in GB/s (10^9)."""
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def __bool__(self) -> bool:
        return self.ok


_FERRY_VERIFICATION = "xxh3-64 checksum of every tensor; names, shapes and dtypes"


def pull_into(
    module_or_state_dict: ModuleOrStateDict,
    identity: IdentityLike,
    *,
    server: Optional[str] = None,
    client: Optional[_ferry.MetadataClient] = None,
    worker_rank: int = 0,
    accelerator: Optional[str] = None,
    transport: str = "auto",
    backend: str = "auto",
    max_sources: int = 3,
    stripe: int = 1,
    transfer_timeout: float = 300.0,
    stall_timeout: float = 15.0,
    verify_threads: int = 2,
    target_worker_id: str = "",
    worker_tls_ca: str = "",
    worker_tls_client_cert: str = "",
    worker_tls_client_key: str = "",
    te_protocol: str = "tcp",
    te_device: str = "",
) -> PullReport:
    """Fills a module's tensors (its state_dict) or a mapping's, in place, from a READY source of
    `identity` and rank `worker_rank`, and verifies every tensor's checksum.

    Names, shapes and dtypes must match the source's exactly: a mismatch raises
    ferry.FailedPreconditionError naming the tensor, before any byte moves. When no source
    exists the report says "no_source" at once; when every source tried fails (at most
    `max_sources`, in rendezvous order; one that delivers nothing for `stall_timeout` seconds is
    abandoned) it says "failed". Bad arguments and refused credentials raise, also when it is
    the sources that refuse them: ferry.UnauthenticatedError (a token the server or every
    source tried refused), ferry.PermissionDeniedError, ferry.InvalidArgumentError,
    ferry.FailedPreconditionError (every source tried refused for that reason).

    Non-contiguous destination tensors are filled through a contiguous staging copy, written
    into them only after verification. Tensors that share memory (tied weights) are read once.

    CUDA tensors are filled in place in GPU memory (over CUDA IPC from a source on this host,
    through pinned host memory over TCP otherwise) and verified there: on the GPU for sources
    that checksum with xxh3-64-tree-64k, over a host copy for xxh3-64. `accelerator` defaults
    to "" (every source) when any tensor is on a GPU, else "cpu". Only ferry sources fill CUDA
    tensors (backend "auto" then means "ferry").

    `transport`: "auto" (default), "ucx" or "tcp"; "shm" reaches only sources whose memory the
    engine allocated (`ferry publish`), not tensors published in place by ferry.torch.publish.
    `stripe`: sources read at once, as `ferry pull --stripe` (at most `max_sources`); each
    attempt in the report carries the bytes that source delivered.

    `backend`: "auto" (default) reads each source the way its record offers: ferry's engine for
    ferry sources (also one published with backend "ferry+nixl", whose record has
    ModelExpress's P2P layout: ferry asks its worker endpoint whether it serves ferry's
    FerryWorkerService, and a ModelExpress worker answers UNIMPLEMENTED); NIXL for
    ModelExpress's NIXL publisher in either mode, centralized
    (MX_P2P_METADATA=0, or publish(backend="nixl"): the agent's metadata and the descriptors in
    the record) or P2P metadata (its default: a worker endpoint and the agent's listener);
    Mooncake's TransferEngine for a record with a transfer_engine_session_id (SGLang's
    publisher). When every source is ferry's, this is exactly backend="ferry" (rendezvous
    order, failover, checksums). Otherwise sources are tried newest first. "ferry", "nixl" and
    "transfer_engine" read only sources offering that path ("nixl" reads a "ferry+nixl"
    source over NIXL, as ModelExpress's P2P target does: `transport` says "nixl (UCX, DRAM),
    P2P metadata"). NIXL and TransferEngine sources
    publish no checksum and no shape: ferry checks names, byte sizes and published dtypes
    before reading, and the bytes themselves are not verified (report.verification says so).
    From a source in P2P metadata mode ferry reads as ModelExpress's own target does: the
    manifest from its worker endpoint together with a read lease (PrepareTensorRead,
    ModelExpress 0.7.0; GetTensorManifest, unleased, from a source that has no leases), checked
    against the server's record (mx_source_id, worker_id, rank, NIXL agent); the NIXL metadata
    from the agent's listener (`metadata_endpoint`); after the read, ReleaseTensorRead. The
    lease keeps the source from changing its tensors meanwhile; a lease it no longer holds at
    the end fails the read (the bytes are not trusted) and ferry tries the next source. Each
    call to the worker endpoint and the NIXL metadata fetch must answer within `stall_timeout`
    seconds; no credentials are sent to it. `te_protocol` / `te_device`: the TransferEngine's
    protocol ("tcp", or "rdma" with its device name).
    """
    _foreign.check_backend(backend)
    tensors = named_tensors(module_or_state_dict)
    staged: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
    targets: Dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        _check_tensor(name, t)
        if t.is_contiguous():
            targets[name] = t.detach()
        else:
            staging = torch.empty(t.shape, dtype=t.dtype, device=t.device)
            staged[name] = (t, staging)
            targets[name] = staging
    buffers, spans, span_devices = _describe(targets)
    on_gpu = any(d >= 0 for d in span_devices)
    if accelerator is None:
        accelerator = "" if on_gpu else "cpu"
    if on_gpu and backend not in ("auto", "ferry"):
        raise _ferry.InvalidArgumentError(
            f"pull_into(backend={backend!r}) fills host memory only; fill CUDA tensors with "
            f"backend='ferry' or 'auto'")
    if on_gpu:
        backend = "ferry"  # NIXL and TransferEngine sources here fill host memory only
    _synchronize(span_devices)  # nothing queued still writes the destination
    metadata_client = client_for(server, client)
    identity_dict = as_identity_dict(identity)
    ferry_args = dict(
        worker_rank=worker_rank, accelerator=accelerator, transport=transport,
        max_sources=max_sources, transfer_timeout=transfer_timeout, stall_timeout=stall_timeout,
        verify_threads=verify_threads, worker_tls_ca=worker_tls_ca,
        worker_tls_client_cert=worker_tls_client_cert,
        worker_tls_client_key=worker_tls_client_key, stripe=stripe)

    def ferry_pull(worker_id: str) -> Dict[str, Any]:
        engine = _engine(f"python pull rank {worker_rank}",
                         [] if transport == "auto" else [transport], "127.0.0.1:0", "")
        try:
            return _ferry.pull_into_buffers(metadata_client, engine, identity_dict, buffers,
                                            spans, target_worker_id=worker_id,
                                            span_devices=span_devices, **ferry_args)
        finally:
            engine.stop()

    candidates = None
    if backend != "ferry":
        try:
            candidates = _candidates(metadata_client, identity_dict, worker_rank,
                                     target_worker_id)
        except _ferry.Error:
            if backend != "auto":
                raise
            candidates = None  # the ferry path below reports the failure as it always has
    if candidates is not None and backend == "auto":
        # The endpoints of P2P-metadata records are asked at once, not one after another (a
        # dead one costs up to stall_timeout).
        candidates = _each(
            lambda c: (c[0], _serving_kind(metadata_client, c[0], c[1], stall_timeout,
                                           worker_tls_ca, worker_tls_client_cert,
                                           worker_tls_client_key)),
            candidates)
    if candidates is None or (backend == "auto" and
                              all(kind == "ferry" for _, kind in candidates)):
        try:
            result = ferry_pull(target_worker_id)
        except _ferry.NotFoundError as e:
            return PullReport(ok=False, outcome="no_source", message=str(e), backend="ferry")
        except (_ferry.UnavailableError, _ferry.DeadlineExceededError,
                _ferry.DataLossError) as e:
            return PullReport(ok=False, outcome="failed", message=str(e),
                              modified=len(staged) < len(tensors), backend="ferry")
        _copy_staged(staged)
        return _ferry_report(result, len(tensors))

    if backend != "auto":
        offered = [kind for _, kind in candidates]
        candidates = [(r, kind) for r, kind in candidates if kind == backend]
        if not candidates:
            return PullReport(
                ok=False, outcome="no_source", backend=backend,
                message=(f"no READY source of {identity_dict.get('model_name')!r} rank "
                         f"{worker_rank} offers backend {backend!r}"
                         + (f" (they offer: {', '.join(sorted(set(offered)))})" if offered
                            else "")))
    attempts: List[Dict[str, Any]] = []
    refusals: List[_ferry.Error] = []
    modified = False
    start = time.monotonic()

    def mark_modified() -> None:
        nonlocal modified
        modified = True

    for record, kind in candidates[:max(1, max_sources)]:
        wid = record["worker_id"]
        attempt: Dict[str, Any] = {"worker_id": wid, "backend": kind,
                                   "endpoint": record["worker_grpc_endpoint"], "error": None}
        attempts.append(attempt)
        try:
            if kind == "ferry":
                modified = True
                result = ferry_pull(wid)
                _copy_staged(staged)
                report = _ferry_report(result, len(tensors))
                report.attempts = attempts[:-1] + report.attempts
                return report
            got = _read_foreign(record, kind, targets, spans, mark_modified,
                                transfer_timeout=transfer_timeout, stall_timeout=stall_timeout,
                                te_protocol=te_protocol, te_device=te_device)
        except (_ferry.NotFoundError, _ferry.UnavailableError, _ferry.DeadlineExceededError,
                _ferry.DataLossError, _ferry.FailedPreconditionError) as e:
            attempt["error"] = str(e)
            if isinstance(e, _ferry.FailedPreconditionError):
                refusals.append(e)
            _log.warning("pull from worker %s (%s) failed: %s", wid, kind, e)
            continue
        _copy_staged(staged)
        return PullReport(
            ok=True, outcome="pulled", modified=True, bytes=sum(r[2] for r in got.reads),
            tensors=len(tensors), seconds=time.monotonic() - start,
            transfer_seconds=got.transfer_seconds, transport=got.path,
            mx_source_id=record["mx_source_id"], source_worker_id=wid,
            source_endpoint=got.endpoint, attempts=attempts, backend=kind,
            verification="; ".join(f"{k}: {v}" for k, v in got.checks.items()))
    if refusals and len(refusals) == len(attempts):
        raise type(refusals[0])("every source refused: " +
                                "; ".join(a["error"] for a in attempts))
    return PullReport(ok=False, outcome="failed", modified=modified, attempts=attempts,
                      message="; ".join(f"worker {a['worker_id']} ({a['backend']}): "
                                        f"{a['error']}" for a in attempts))


@dataclasses.dataclass
class _ForeignRead:
    """What one read of a NIXL or TransferEngine source did."""

    reads: List[_foreign.Read]
    checks: Dict[str, str]  # what was verified, for report.verification
    transfer_seconds: float
    path: str  # report.transport
    endpoint: str  # report.source_endpoint


def _read_foreign(record: Mapping[str, Any], kind: str, targets: Mapping[str, torch.Tensor],
                  spans, before_first_byte, *, transfer_timeout: float, stall_timeout: float,
                  te_protocol: str, te_device: str) -> _ForeignRead:
    """Fills `targets` from a source that is not ferry's ("nixl" or "transfer_engine"), after
    the checks of _foreign.plan_reads; calls before_first_byte() once they pass, before the
    destination is written. Raises ferry.FailedPreconditionError only for a source that cannot
    or must not be read (nothing was written then), other ferry.Errors for a read that
    failed."""
    wid = record["worker_id"]
    if kind not in ("nixl", "transfer_engine"):
        raise _ferry.FailedPreconditionError(
            f"worker {wid}'s record offers no data path this ferry reads (no NIXL metadata, "
            f"NIXL listener, TransferEngine session or worker endpoint)")
    if not _foreign.host_accelerator(record):
        raise _ferry.FailedPreconditionError(
            f"worker {wid}'s tensors are in {record['accelerator']} memory; this build of ferry "
            f"reads host memory only")
    agent_name = f"ferry-pull-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if kind == "nixl" and _foreign.p2p_metadata(record):
        # ModelExpress's default (MX_P2P_METADATA=1): the manifest and a read lease from the
        # source's worker endpoint, the NIXL metadata from its agent's listener.
        from ferry import _nixl
        from ferry._wheels import nixl_api
        nixl_api()  # a missing wheel is refused before the source is asked for a lease
        where = f"worker {wid} (nixl, P2P metadata)"
        with _mx_worker.TensorRead.open(record, stall_timeout) as tensor_read:
            reads, checks = _foreign.plan_reads(tensor_read.tensors, targets, where)
            before_first_byte()
            seconds = _nixl.read_from_listener(
                agent_name, tensor_read.agent_name, tensor_read.host, tensor_read.port, spans,
                reads, transfer_timeout, stall_timeout)
            tensor_read.release()  # fails the read if the lease lapsed during it
        checks["manifest"] = (f"from {tensor_read.endpoint}, its mx_source_id, worker_id, rank "
                              f"and NIXL agent checked against the server's record")
        checks["lease"] = tensor_read.lease_summary
        return _ForeignRead(reads, checks, seconds, "nixl (UCX, DRAM), P2P metadata",
                            record["worker_grpc_endpoint"])
    reads, checks = _foreign.plan_reads(record["tensors"], targets, f"worker {wid} ({kind})")
    before_first_byte()
    if kind == "nixl":
        from ferry import _nixl
        seconds = _nixl.read(agent_name, record["nixl_metadata"], spans, reads, transfer_timeout)
        return _ForeignRead(reads, checks, seconds, "nixl (UCX, DRAM)", "")
    from ferry import _transfer_engine
    session = record["transfer_engine_session_id"]
    seconds = _transfer_engine.read(session, spans, reads, te_protocol, te_device)
    return _ForeignRead(reads, checks, seconds, f"transfer_engine ({te_protocol})", session)


# Lookups run at once when pull_into(backend="auto") classifies its candidates: a fleet has a
# record per replica, and each GetMetadata (and each endpoint asked whether it serves ferry) is
# a round trip that would otherwise wait for the one before.
_LOOKUP_THREADS = 16


def _each(fn, items: Sequence[Any]) -> List[Any]:
    """[fn(x) for x in items], up to _LOOKUP_THREADS calls at once (the client's calls release
    the GIL), results in order; the first exception, in order, is raised."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    workers = min(_LOOKUP_THREADS, len(items))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                               thread_name_prefix="ferry-lookup") as pool:
        return list(pool.map(fn, items))


def _candidates(client: _ferry.MetadataClient, identity: Dict[str, Any], worker_rank: int,
                worker_id: str) -> List[Tuple[Dict[str, Any], str]]:
    """The READY workers of `identity` at `worker_rank` (only `worker_id` when given), newest
    first, each with its record and the data path the record offers. The records are fetched
    up to _LOOKUP_THREADS at once."""
    refs = [ref for ref in client.list_sources(identity, ready_only=True)
            if ref["worker_rank"] == worker_rank and (not worker_id or
                                                      ref["worker_id"] == worker_id)]

    def fetch(ref: Mapping[str, Any]) -> Optional[Tuple[Dict[str, Any], str]]:
        try:
            record = client.get_metadata(ref["mx_source_id"], ref["worker_id"])
        except _ferry.NotFoundError:
            return None  # gone between the listing and now
        return record, _foreign.record_backend(record)

    return [c for c in _each(fetch, refs) if c is not None]


def _serving_kind(client: _ferry.MetadataClient, record: Mapping[str, Any], kind: str,
                  timeout: float, tls_ca: str, tls_cert: str, tls_key: str) -> str:
    """The data path `pull_into(backend="auto")` takes for a record of `kind`. A record in
    ModelExpress's P2P metadata layout (worker endpoint + NIXL listener) is either a ModelExpress
    worker or a ferry source whose tensors a NIXL agent serves too (publish(backend=
    "ferry+nixl")); the records look alike, so the endpoint is asked: one that serves ferry's
    FerryWorkerService is read with ferry's engine ("ferry": checksums verified), one that
    answers UNIMPLEMENTED over NIXL ("nixl"). The call carries ferry's token and worker TLS
    settings, as ferry's read would; when it fails otherwise, the record's layout decides
    ("nixl"), and that read reports the endpoint's failure."""
    if kind != "nixl" or not _foreign.p2p_metadata(record):
        return kind
    try:
        serves_ferry = _ferry.worker_serves_ferry(
            client, record["worker_grpc_endpoint"], record["mx_source_id"], record["worker_id"],
            timeout=timeout, worker_tls_ca=tls_ca, worker_tls_client_cert=tls_cert,
            worker_tls_client_key=tls_key)
    except _ferry.Error as e:
        _log.warning("could not ask worker %s's endpoint %s whether it serves ferry (%s); "
                     "reading it as ModelExpress's P2P metadata mode", record["worker_id"],
                     record["worker_grpc_endpoint"], e)
        return kind
    return "ferry" if serves_ferry else kind


def _copy_staged(staged: Mapping[str, Tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for t, staging in staged.values():
            t.copy_(staging)


def _ferry_report(result: Mapping[str, Any], tensors: int) -> PullReport:
    return PullReport(
        ok=True,
        outcome="pulled",
        modified=True,
        bytes=result["bytes"],
        tensors=tensors,
        seconds=result["seconds"],
        transfer_seconds=result["transfer_seconds"],
        verify_seconds=result["verify_seconds"],
        transport=result["transport"],
        mx_source_id=result["mx_source_id"],
        source_worker_id=result["source_worker_id"],
        source_endpoint=result["source_endpoint"],
        attempts=list(result["attempts"]),
        metadata=result["metadata"],
        backend="ferry",
        verification=_FERRY_VERIFICATION,
    )
