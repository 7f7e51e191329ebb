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
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ferry import _ferry
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
    if t.device.type != "cpu":
        raise _ferry.InvalidArgumentError(
            f"tensor {name} is on {t.device}; this build of ferry moves host (CPU) memory only"
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


def _describe(tensors: Mapping[str, torch.Tensor]):
    """(buffers, spans) for the binding: one span per distinct storage."""
    buffers = []
    spans: Dict[int, int] = {}
    for name, t in tensors.items():
        dtype = _check_tensor(name, t)
        nbytes = t.numel() * t.element_size()
        address = t.data_ptr() if nbytes else 0
        buffers.append((name, dtype, list(t.shape), address, nbytes))
        if nbytes:
            base, size = _storage_span(t)
            spans[base] = max(spans.get(base, 0), size)
    return buffers, sorted(spans.items())


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

    def __init__(self, source: _ferry.WeightSource, engine: _ferry.TransferEngine,
                 tensors: Dict[str, torch.Tensor], copies: List[str]):
        self._source = source
        self._tensors = tensors
        self.mx_source_id: str = source.mx_source_id
        self.worker_id: str = source.worker_id
        self.endpoint: str = source.endpoint
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
        return (f"<ferry.torch.PublishHandle {state} mx_source_id={self.mx_source_id} "
                f"worker_id={self.worker_id} endpoint={self.endpoint} tensors={self.tensors} "
                f"bytes={self.total_bytes}>")


def _stop_source(source, engine) -> None:
    source.stop()
    engine.stop()


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
    accelerator: str = "cpu",
    centralized: bool = False,
    heartbeat_interval: Optional[float] = None,
    checksum_threads: int = 2,
    tls_cert: str = "",
    tls_key: str = "",
    tls_client_ca: str = "",
    max_upload_rate: int = 0,
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
    """
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
    buffers, spans = _describe(served)
    metadata_client = client_for(server, client)
    engine = _engine(f"python publish rank {worker_rank}", transports, data_listen,
                     advertise_host, max_upload_rate)
    try:
        source = _ferry.serve_buffers(
            metadata_client, engine, as_identity_dict(identity), buffers, spans,
            worker_rank=worker_rank, accelerator=accelerator, worker_id=worker_id,
            worker_listen=worker_listen, advertise_host=advertise_host, centralized=centralized,
            heartbeat_interval=heartbeat_interval, checksum_threads=checksum_threads,
            tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca)
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

    @property
    def gbps(self) -> float:
        """Bytes per second of the whole call, in GB/s (10^9)."""
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def __bool__(self) -> bool:
        return self.ok


def pull_into(
    module_or_state_dict: ModuleOrStateDict,
    identity: IdentityLike,
    *,
    server: Optional[str] = None,
    client: Optional[_ferry.MetadataClient] = None,
    worker_rank: int = 0,
    accelerator: str = "cpu",
    transport: str = "auto",
    max_sources: int = 3,
    stripe: int = 1,
    transfer_timeout: float = 300.0,
    stall_timeout: float = 15.0,
    verify_threads: int = 2,
    target_worker_id: str = "",
    worker_tls_ca: str = "",
    worker_tls_client_cert: str = "",
    worker_tls_client_key: str = "",
    _batch_bytes: int = 0,
    _batch_pause: float = 0.0,
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

    `transport`: "auto" (default), "ucx" or "tcp"; "shm" reaches only sources whose memory the
    engine allocated (`ferry publish`), not tensors published in place by ferry.torch.publish.
    `stripe`: sources read at once, as `ferry pull --stripe` (at most `max_sources`); each
    attempt in the report carries the bytes that source delivered.
    """
    tensors = named_tensors(module_or_state_dict)
    staged: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
    targets: Dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        _check_tensor(name, t)
        if t.is_contiguous():
            targets[name] = t.detach()
        else:
            staging = torch.empty(t.shape, dtype=t.dtype)
            staged[name] = (t, staging)
            targets[name] = staging
    buffers, spans = _describe(targets)
    metadata_client = client_for(server, client)
    engine = _engine(f"python pull rank {worker_rank}", [] if transport == "auto" else [transport],
                     "127.0.0.1:0", "")
    try:
        result = _ferry.pull_into_buffers(
            metadata_client, engine, as_identity_dict(identity), buffers, spans,
            worker_rank=worker_rank, accelerator=accelerator, transport=transport,
            max_sources=max_sources, transfer_timeout=transfer_timeout,
            stall_timeout=stall_timeout, verify_threads=verify_threads,
            target_worker_id=target_worker_id, worker_tls_ca=worker_tls_ca,
            worker_tls_client_cert=worker_tls_client_cert,
            worker_tls_client_key=worker_tls_client_key, batch_bytes=_batch_bytes,
            batch_pause=_batch_pause, stripe=stripe)
    except _ferry.NotFoundError as e:
        return PullReport(ok=False, outcome="no_source", message=str(e))
    except (_ferry.UnavailableError, _ferry.DeadlineExceededError, _ferry.DataLossError) as e:
        return PullReport(ok=False, outcome="failed", message=str(e), modified=len(staged) < len(tensors))
    finally:
        engine.stop()
    with torch.no_grad():
        for name, (t, staging) in staged.items():
            t.copy_(staging)
    return PullReport(
        ok=True,
        outcome="pulled",
        modified=True,
        bytes=result["bytes"],
        tensors=len(tensors),
        seconds=result["seconds"],
        transfer_seconds=result["transfer_seconds"],
        verify_seconds=result["verify_seconds"],
        transport=result["transport"],
        mx_source_id=result["mx_source_id"],
        source_worker_id=result["source_worker_id"],
        source_endpoint=result["source_endpoint"],
        attempts=result["attempts"],
        metadata=result["metadata"],
    )
