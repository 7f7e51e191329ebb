"""NIXL on host memory: a source agent that serves published tensors, and one-shot readers.

Both use NIXL's UCX backend with DRAM descriptors, as ModelExpress's NixlTransferManager does
(nixl_transfer.py): a source registers its memory and publishes the agent's metadata blob; a
target loads that blob (add_remote_agent), or in ModelExpress's P2P metadata mode fetches it from
the source agent's listener (fetch_remote_metadata), prepares descriptor lists on both sides and
posts one READ. Not thread-safe: one caller per object.
"""

from __future__ import annotations

import logging
import time
from typing import List, Optional, Sequence, Tuple

from ferry import _ferry
from ferry._wheels import nixl_api

_log = logging.getLogger("ferry.nixl")

BACKENDS = ["UCX"]
MEM_TYPE = "DRAM"

# (source address, destination address, bytes, source device_id)
Read = Tuple[int, int, int, int]


def _agent(name: str, listen: bool = False):
    """A NIXL agent; with `listen`, its listener thread runs (on a free port): NIXL receives the
    metadata that fetch_remote_metadata asks a peer for on that thread, so a P2P reader needs it."""
    api = nixl_api()
    try:
        if listen:
            config = api.nixl_agent_config(backends=BACKENDS, enable_listen_thread=True,
                                           listen_port=0)
        else:
            config = api.nixl_agent_config(backends=BACKENDS)
        return api.nixl_agent(name, config)
    except Exception as e:
        raise _ferry.UnavailableError(
            f"could not create NIXL agent {name!r} with the UCX backend: {e}; check that NIXL's "
            f"UCX plugin loads (NIXL_PLUGIN_DIR) and UCX_TLS allows a host-memory transport"
        ) from None


def _listening_agent(name: str, port: int):
    """A NIXL agent whose listener serves its metadata on `port` (all interfaces)."""
    api = nixl_api()
    try:
        config = api.nixl_agent_config(backends=BACKENDS, enable_listen_thread=True,
                                       listen_port=port)
        return api.nixl_agent(name, config)
    except Exception as e:
        raise _ferry.UnavailableError(
            f"could not create NIXL agent {name!r} with the UCX backend and its listener on "
            f"port {port}: {e}; choose another nixl_listen_port, and check that NIXL's UCX "
            f"plugin loads (NIXL_PLUGIN_DIR)") from None


def _register(agent, spans: Sequence[Tuple[int, int]], what: str):
    regions = [(address, size, 0, "") for address, size in spans if size > 0]
    if not regions:
        return None
    try:
        return agent.register_memory(regions, mem_type=MEM_TYPE, backends=BACKENDS)
    except Exception as e:
        raise _ferry.UnavailableError(
            f"NIXL could not register {len(regions)} {what} region(s) of host memory: {e}"
        ) from None


class NixlServer:
    """A NIXL agent serving `spans` (address, bytes) of host memory until stop(). The memory
    must stay alive until then. `metadata` is the blob a record's nixl_metadata carries. With
    `listen_port`, the agent's listener runs on that port and hands the metadata to targets that
    fetch it (ModelExpress's P2P metadata mode)."""

    def __init__(self, name: str, spans: Sequence[Tuple[int, int]],
                 listen_port: Optional[int] = None):
        self.agent_name = name
        self.listen_port = listen_port
        self._agent = _listening_agent(name, listen_port) if listen_port else _agent(name)
        self._registered = _register(self._agent, spans, "published")
        self.metadata: bytes = self._agent.get_agent_metadata()

    def stop(self) -> None:
        """Deregisters the memory and drops the agent. Idempotent."""
        if self._agent is None:
            return
        if self._registered is not None:
            self._agent.deregister_memory(self._registered)
        self._registered = None
        self._agent = None


def read(name: str, metadata: bytes, local_spans: Sequence[Tuple[int, int]],
         reads: List[Read], timeout: float) -> float:
    """Reads every (src, dst, bytes, device) range from the agent described by `metadata` into
    local memory (inside `local_spans`), as one NIXL READ. Raises ferry.UnavailableError naming
    the step that failed (loading the peer's metadata, preparing, the transfer's status) or
    ferry.DeadlineExceededError after `timeout` seconds; the destination may then hold part of
    the data. Returns the seconds from posting the READ to its completion."""
    agent = _agent(name)
    registered = _register(agent, local_spans, "destination")
    remote: Optional[str] = None
    try:
        try:
            remote = agent.add_remote_agent(metadata)
        except Exception as e:
            raise _ferry.UnavailableError(
                f"the source's nixl_metadata ({len(metadata)} bytes) is not NIXL agent metadata "
                f"this NIXL can load: {e}") from None
        return _read_from(agent, remote, reads, timeout)
    finally:
        _forget(agent, remote)
        if registered is not None:
            agent.deregister_memory(registered)


def read_from_listener(name: str, remote: str, host: str, port: int,
                       local_spans: Sequence[Tuple[int, int]], reads: List[Read],
                       timeout: float, handshake_timeout: float) -> float:
    """As read(), with the metadata of agent `remote` fetched from its listener at host:port (a
    ModelExpress source in P2P metadata mode; its targets do the same, fetch_remote_and_wait).
    Raises ferry.UnavailableError when no metadata arrives within `handshake_timeout` seconds."""
    agent = _agent(name, listen=True)
    registered = _register(agent, local_spans, "destination")
    fetched = False
    try:
        try:
            agent.fetch_remote_metadata(remote, host, port)
        except Exception as e:
            raise _ferry.UnavailableError(
                f"NIXL could not ask agent {remote!r} at {host}:{port} for its metadata: {e}"
            ) from None
        fetched = True  # metadata that lands after a failure is still dropped below
        deadline = time.monotonic() + handshake_timeout
        while not agent.check_remote_metadata(remote):
            if time.monotonic() > deadline:
                raise _ferry.UnavailableError(
                    f"NIXL agent {remote!r} at {host}:{port} sent no metadata in "
                    f"{handshake_timeout:g} s; check that its listener (the record's "
                    f"metadata_endpoint) is reachable from this host")
            time.sleep(0.001)  # NIXL has no blocking wait for remote metadata
        return _read_from(agent, remote, reads, timeout)
    finally:
        _forget(agent, remote if fetched else None)
        if registered is not None:
            agent.deregister_memory(registered)


def _forget(agent, remote: Optional[str]) -> None:
    """Drops a remote agent's metadata and disconnects from it, if it was loaded."""
    if remote is None:
        return
    try:
        agent.remove_remote_agent(remote)
    except Exception:  # never loaded, or already invalidated by the peer: nothing to release
        pass


def _read_from(agent, remote: str, reads: List[Read], timeout: float) -> float:
    """One prepared READ of every range from `remote` (whose metadata `agent` holds), polled to
    completion or `timeout`; the transfer handle is released either way."""
    handle = None
    try:
        try:
            src = agent.prep_xfer_dlist(agent_name=remote,
                                        xfer_list=[(s, n, dev) for s, _, n, dev in reads],
                                        mem_type=MEM_TYPE, backends=BACKENDS)
            dst = agent.prep_xfer_dlist(agent_name="",
                                        xfer_list=[(d, n, 0) for _, d, n, _ in reads],
                                        mem_type=MEM_TYPE, backends=BACKENDS)
            indices = list(range(len(reads)))
            handle = agent.make_prepped_xfer("READ", dst, indices, src, indices,
                                             backends=BACKENDS)
            posted = time.monotonic()
            state = agent.transfer(handle)
        except Exception as e:
            raise _ferry.UnavailableError(
                f"NIXL could not post the READ of {len(reads)} range(s) from agent {remote!r} "
                f"(an address outside what the source registered?): {e}") from None
        deadline = time.monotonic() + timeout
        spins = 0
        while state not in ("DONE", "SUCCESS"):
            if state in ("ERR", "ERROR", "FAIL"):
                raise _ferry.UnavailableError(
                    f"NIXL READ from agent {remote!r} failed with status {state}")
            if time.monotonic() > deadline:
                raise _ferry.DeadlineExceededError(
                    f"NIXL READ from agent {remote!r} did not complete in {timeout:g} s")
            spins += 1
            if spins > 1000:  # NIXL has no blocking wait: poll, yielding once it takes long
                time.sleep(0.0002)
            state = agent.check_xfer_state(handle)
        return time.monotonic() - posted
    finally:
        if handle is not None:
            try:
                agent.release_xfer_handle(handle)
            except Exception as e:  # a READ still in flight after a deadline; keep its error
                _log.warning("NIXL could not release a transfer handle: %s", e)
