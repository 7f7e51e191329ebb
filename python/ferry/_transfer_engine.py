"""Mooncake's TransferEngine as a reader: loads a source's tensors from its session, the way
SGLang's and ModelExpress's TransferEngine targets do (engines/sglang/loader.py)."""

from __future__ import annotations

import socket
import time
from typing import List, Sequence, Tuple

from ferry import _ferry
from ferry._wheels import transfer_engine_class

# (source address, destination address, bytes, source device_id)
Read = Tuple[int, int, int, int]


def local_address_towards(session_id: str) -> str:
    """The local IP address this host uses to reach the session's host (what the engine
    advertises to it)."""
    host = session_id.rsplit(":", 1)[0].strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))  # UDP: picks a route, sends nothing
            return s.getsockname()[0]
    except OSError as e:
        raise _ferry.UnavailableError(
            f"no route to the TransferEngine session {session_id!r}: {e}") from None


def read(session_id: str, local_spans: Sequence[Tuple[int, int]], reads: List[Read],
         protocol: str = "tcp", device_name: str = "") -> float:
    """Reads every (src, dst, bytes, device) range from the session `session_id`
    ("host:rpc_port") into local memory inside `local_spans`, with one synchronous batch read
    over `protocol` ("tcp", or "rdma" with `device_name`). Raises ferry.UnavailableError naming
    the step that failed; the destination may then hold part of the data. Mooncake's sync read
    has no deadline of its own: its transport timeouts bound it. Returns the seconds of the
    batch read."""
    engine = transfer_engine_class()()
    local = local_address_towards(session_id)
    rc = engine.initialize(local, "P2PHANDSHAKE", protocol, device_name)
    if rc != 0:
        raise _ferry.UnavailableError(
            f"Mooncake TransferEngine.initialize({local!r}, 'P2PHANDSHAKE', {protocol!r}, "
            f"{device_name!r}) returned {rc}")
    registered = []
    try:
        for address, size in local_spans:
            if size == 0:
                continue
            rc = engine.register_memory(address, size)
            if rc != 0:
                raise _ferry.UnavailableError(
                    f"Mooncake TransferEngine.register_memory of {size} bytes returned {rc}")
            registered.append(address)
        t0 = time.monotonic()
        rc = engine.batch_transfer_sync_read(session_id, [d for _, d, _, _ in reads],
                                             [s for s, _, _, _ in reads],
                                             [n for _, _, n, _ in reads])
        if rc < 0:
            raise _ferry.UnavailableError(
                f"Mooncake batch_transfer_sync_read of {len(reads)} range(s) from session "
                f"{session_id} returned {rc}")
        return time.monotonic() - t0
    finally:
        for address in registered:
            engine.unregister_memory(address)
