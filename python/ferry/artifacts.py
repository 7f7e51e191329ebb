"""Compile caches (torch.compile, Triton, DeepGEMM, ...) published and pulled peer to peer.

    handle = ferry.artifacts.publish("~/.triton/cache", "triton", identity,
                                     signing_key="keys/signing.key")
    result = ferry.artifacts.pull("triton", identity, "~/.triton/cache",
                                  trust=["keys/signing.pub"])

The same flows as `ferry artifact publish` and `ferry artifact pull`: a snapshot sealed into a
manifest (CRC32C per chunk), signed with Ed25519; targets verify the signature before any byte
moves, every CRC after, and install atomically under a node-wide lock.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Dict, Optional, Sequence

from ferry import _ferry
from ferry._identity import IdentityLike, as_identity_dict, client_for

__all__ = ["publish", "pull", "ArtifactHandle", "KINDS"]

KINDS = tuple(_ferry.artifact_kinds().split(", "))


class ArtifactHandle:
    """Serves a cache snapshot until stop() (which marks the source STALE); also a context
    manager, and stopped at interpreter exit or when garbage-collected."""

    def __init__(self, source: _ferry.ArtifactSource, engine: _ferry.TransferEngine):
        self.artifact_id: str = source.artifact_id
        self.mx_source_id: str = source.mx_source_id
        self.worker_id: str = source.worker_id
        self.endpoint: str = source.endpoint
        self.signed: bool = source.signed
        self.total_size: int = source.total_size
        self.file_count: int = source.file_count
        self._finalizer = weakref.finalize(self, _stop, source, engine)

    def stop(self) -> None:
        self._finalizer()

    @property
    def serving(self) -> bool:
        return self._finalizer.alive

    def __enter__(self) -> "ArtifactHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _stop(source, engine) -> None:
    source.stop()
    engine.stop()


def publish(
    directory: str,
    kind: str,
    identity: IdentityLike,
    *,
    server: Optional[str] = None,
    client: Optional[_ferry.MetadataClient] = None,
    signing_key: Optional[str] = None,
    node_rank: int = 0,
    accelerator: str = "",
    chunk_size: int = 64 << 20,
    worker_listen: str = "0.0.0.0:0",
    advertise_host: str = "",
    transports: Optional[Sequence[str]] = None,
    data_listen: str = "0.0.0.0:0",
    heartbeat_interval: Optional[float] = None,
    tls_cert: str = "",
    tls_key: str = "",
    tls_client_ca: str = "",
) -> ArtifactHandle:
    """Snapshots, seals and (with `signing_key`, a key from `ferry artifact keygen`) signs the
    cache `directory` of `kind` (see KINDS), serves it and publishes READY. Paths may start
    with ~."""
    metadata_client = client_for(server, client)
    engine = _ferry.TransferEngine(f"python artifact publish node {node_rank}",
                                   transports=list(transports or []), tcp_listen=data_listen,
                                   advertise_host=advertise_host)
    try:
        source = _ferry.publish_artifact(
            metadata_client, engine, os.path.expanduser(os.fspath(directory)), kind, as_identity_dict(identity),
            node_rank=node_rank, accelerator=accelerator,
            signing_key=None if signing_key is None else os.path.expanduser(os.fspath(signing_key)),
            chunk_size=chunk_size, worker_listen=worker_listen, advertise_host=advertise_host,
            heartbeat_interval=heartbeat_interval, tls_cert=tls_cert, tls_key=tls_key,
            tls_client_ca=tls_client_ca)
    except BaseException:
        engine.stop()
        raise
    return ArtifactHandle(source, engine)


def pull(
    kind: str,
    identity: IdentityLike,
    into: str,
    *,
    trust: Sequence[str] = (),
    allow_unsigned: bool = False,
    server: Optional[str] = None,
    client: Optional[_ferry.MetadataClient] = None,
    node_rank: int = 0,
    accelerator: str = "",
    transport: str = "auto",
    max_sources: int = 3,
    transfer_timeout: float = 600.0,
    stall_timeout: float = 15.0,
    state_dir: Optional[str] = None,
    lock_timeout: float = 1800.0,
    failure_ttl: float = 120.0,
    force: bool = False,
    worker_tls_ca: str = "",
    worker_tls_client_cert: str = "",
    worker_tls_client_key: str = "",
) -> Dict[str, Any]:
    """Pulls the cache of `kind` for `identity` and installs it into `into` atomically.

    Only artifacts signed by a key in `trust` (public key files) are installed, unless
    `allow_unsigned`. Returns {"installed", "artifact_id", "bytes", "files", "trust", "signer",
    "seconds", ...}; "installed" is False when another pull on this node already installed it.
    Raises ferry.NotFoundError when no source exists (fall back to compiling), and another
    ferry.Error when every source failed or trust was refused; `into` is then untouched.
    """
    metadata_client = client_for(server, client)
    engine = _ferry.TransferEngine(
        f"python artifact pull node {node_rank}",
        transports=[] if transport == "auto" else [transport], tcp_listen="127.0.0.1:0")
    try:
        return _ferry.pull_artifact(
            metadata_client, engine, kind, as_identity_dict(identity), os.path.expanduser(os.fspath(into)),
            trust=[os.path.expanduser(os.fspath(t)) for t in trust], allow_unsigned=allow_unsigned,
            node_rank=node_rank, accelerator=accelerator, transport=transport,
            max_sources=max_sources, transfer_timeout=transfer_timeout,
            stall_timeout=stall_timeout, state_dir=state_dir, lock_timeout=lock_timeout,
            failure_ttl=failure_ttl, force=force, worker_tls_ca=worker_tls_ca,
            worker_tls_client_cert=worker_tls_client_cert,
            worker_tls_client_key=worker_tls_client_key)
    finally:
        engine.stop()
