"""One side of a wheel interop test, in its own process, run by the interop venv's python
(scripts/interop-venv.sh: NIXL, Mooncake's TransferEngine, ModelExpress 0.7.0).

    wheel_peer.py ROLE --server ADDR --model NAME --out FILE [--seed N] [--backend B] ...

Roles (ModelExpress's and Mooncake's own code on their side, ferry's on the other):
  ferry-nixl-source  ferry.torch.publish(backend="nixl") of TinyTransformer(seed)
  ferry-dual-source  ferry.torch.publish(backend="ferry+nixl"): ferry's engine and a NIXL agent
                     over the same memory, one record in ModelExpress's P2P metadata layout
  mx-nixl-source     ModelExpress's NixlTransferManager + publish_metadata_and_ready
                     (MX_P2P_METADATA=0: its centralized record, nixl_metadata + tensors)
  mx-nixl-p2p-source the same in ModelExpress's default P2P metadata mode (MX_P2P_METADATA=1):
                     its WorkerGrpcServer serves the manifest and read leases, its NIXL agent's
                     listener the metadata; --no-lease: as a source from before read leases
  te-source          Mooncake TransferEngine (P2PHANDSHAKE, TCP) serving the tensors; the record
                     built as ModelExpress's SGLang loader publishes it, by MX's PublisherThread
  mx-nixl-target     ModelExpress's MxClient + NixlTransferManager.receive_from_source
  mx-nixl-p2p-target ModelExpress's P2P metadata read, its own functions in its RdmaStrategy's
                     order: fetch_tensor_manifest and prepare_tensor_read (worker_server.py),
                     NixlTransferManager.fetch_remote_and_wait + receive_from_source, release
  ferry-pull         ferry.torch.pull_into(backend=B)

Sources save their state_dict to OUT.pt, write OUT (JSON) once READY on the server, and serve
until SIGTERM (stop: STALE, exit 0); mx-nixl-p2p-source then writes OUT.stopped (JSON): the
tensor-read calls its worker server logged as served, in order, and whether a read lease was
still outstanding. Targets build TinyTransformer(seed + 1) as a dummy (other values than the
source's), pull, and write OUT (JSON): what the reader reported, `equal_before` and `equal`
(every tensor equals the checkpoint given with --expect, before and after the pull), or on a
ferry.Error its class, message and `unchanged` (no tensor was written).

ModelExpress 0.7.0 ships CUDA and XPU accelerator backends only; `HostBackend` below is its
AcceleratorBackend protocol for host memory (NIXL "DRAM"), the one piece of test glue on the
ModelExpress side.
"""

import argparse
import json
import logging
import os
import re
import signal
import socket
import sys
import time
import uuid

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import tiny_transformer  # noqa: E402

IDENTITY = {"model_name": None, "dtype": "float32"}
READY_TIMEOUT_S = 30


class HostBackend:
    """ModelExpress's AcceleratorBackend protocol (accelerators/base.py) for host memory."""

    name = "cpu"
    torch_device_type = "cpu"
    nixl_mem_type = "DRAM"

    def set_device(self, device_id):
        pass

    def current_device(self):
        return 0

    def synchronize(self, device_id=None):
        pass

    def empty_cache(self):
        pass

    def torch_device(self, device_id):
        return torch.device("cpu")

    def is_accel_tensor(self, tensor):
        return False

    def supports_rdma_p2p(self):
        return True

    def supports_pool_reg(self):
        return False

    def supports_vmm(self):
        return False

    def supports_gds(self):
        return False


def write_json(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.rename(tmp, path)


def model_state(args, seed=None):
    model = tiny_transformer.build(args.seed if seed is None else seed, dim=args.dim, layers=2,
                                   ff=128)
    return model, model.state_dict()


def dummy_state(args):
    """A target's model before its pull: other values than every source's (seed + 1)."""
    return model_state(args, args.seed + 1)


def equal_to(state, path):
    expected = torch.load(path)
    if set(expected) != set(state):
        return False
    return all(torch.equal(state[k], expected[k]) for k in expected)


def mx_identity(args):
    from modelexpress import p2p_pb2
    return p2p_pb2.SourceIdentity(model_name=args.model, dtype="float32",
                                  tensor_parallel_size=1, pipeline_parallel_size=1,
                                  expert_parallel_size=1)


def wait_mx_ready(client, args, worker_id):
    """Until the server lists `worker_id` READY (the publisher thread's first tick), with a
    deadline: the condition itself, polled, not a fixed sleep."""
    from modelexpress import p2p_pb2
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        r = client.list_sources(mx_identity(args), p2p_pb2.SOURCE_STATUS_READY)
        for ref in r.instances:
            if ref.worker_id == worker_id:
                return ref.mx_source_id
        time.sleep(0.05)
    raise SystemExit(f"worker {worker_id} not READY on {args.server} in {READY_TIMEOUT_S}s")


def serve_until_sigterm(stop):
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    stop()
    return 0


def ferry_nixl_source(args):
    import ferry.torch
    _, state = model_state(args)
    torch.save(state, args.out + ".pt")
    handle = ferry.torch.publish(state, {"model_name": args.model, "dtype": "float32"},
                                 server=args.server, backend="nixl", heartbeat_interval=1.0)
    write_json(args.out, {"mx_source_id": handle.mx_source_id, "worker_id": handle.worker_id,
                          "backend": handle.backend, "tensors": handle.tensors,
                          "bytes": handle.total_bytes, "regions": handle.regions})
    return serve_until_sigterm(handle.stop)


def ferry_dual_source(args):
    import ferry.torch
    _, state = model_state(args)
    torch.save(state, args.out + ".pt")
    # The worker endpoint and the NIXL listener on loopback (as MX_WORKER_HOST for MX's source).
    handle = ferry.torch.publish(state, {"model_name": args.model, "dtype": "float32"},
                                 server=args.server, backend="ferry+nixl",
                                 worker_listen="127.0.0.1:0", heartbeat_interval=1.0)
    write_json(args.out, {"mx_source_id": handle.mx_source_id, "worker_id": handle.worker_id,
                          "backend": handle.backend, "tensors": handle.tensors,
                          "bytes": handle.total_bytes, "regions": handle.regions,
                          "endpoint": handle.endpoint})
    return serve_until_sigterm(handle.stop)


def start_mx_nixl_source(args, **manager_options):
    """ModelExpress's own source: its NixlTransferManager over host memory registers the model
    and its publish code publishes it (the layout MX_P2P_METADATA chose) and marks it READY.
    Returns (mx_source_id, worker_id, manager, tensors)."""
    from modelexpress.client import MxClient
    from modelexpress.metadata import publish
    from modelexpress.nixl_transfer import NixlTransferManager
    _, state = model_state(args)
    torch.save(state, args.out + ".pt")
    worker_id = uuid.uuid4().hex[:8]
    manager = NixlTransferManager(f"mx-source-{worker_id}", device_id=0,
                                  accelerator_backend=HostBackend(), **manager_options)
    manager.initialize()
    tensors = {k: v.contiguous() for k, v in state.items()}
    manager.register_tensors(tensors)
    client = MxClient(args.server)
    publish.publish_metadata_and_ready(client, manager, tensors, worker_rank=0, device_id=0,
                                       identity=mx_identity(args), worker_id=worker_id,
                                       accelerator="cpu")
    return wait_mx_ready(client, args, worker_id), worker_id, manager, tensors


def mx_nixl_source(args):
    os.environ["MX_P2P_METADATA"] = "0"  # ModelExpress's centralized record (its own env knob)
    from modelexpress.metadata import publish
    mx_source_id, worker_id, manager, tensors = start_mx_nixl_source(args)
    write_json(args.out, {"mx_source_id": mx_source_id, "worker_id": worker_id,
                          "tensors": len(tensors)})

    def stop():
        publish._heartbeat_threads[0].stop()  # STALE; no manager.shutdown() (see main())
    return serve_until_sigterm(stop)


class ServedCalls(logging.Handler):
    """The tensor-read calls ModelExpress's WorkerServiceServicer logs as served
    ("PrepareTensorRead served: 29 tensors, lease_id=... (worker_rank=0)"), in order: what the
    source saw of its readers, from its own code."""

    RPCS = ("GetTensorManifest", "PrepareTensorRead", "ReleaseTensorRead")

    def __init__(self):
        super().__init__(logging.INFO)
        self.calls = []

    def emit(self, record):
        rpc, served, rest = record.getMessage().partition(" served:")
        if served and rpc in self.RPCS:
            lease = re.search(r"lease_id=(\w+)", rest)
            self.calls.append({"rpc": rpc, "lease_id": lease.group(1) if lease else None})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mx_nixl_p2p_source(args):
    # ModelExpress's own knobs: P2P metadata (its default, named here for the reader), this
    # host's address in the record, the worker server on port MX_WORKER_GRPC_PORT + device 0 =
    # any free one (WorkerGrpcServer binds port 0 to a free port).
    os.environ["MX_P2P_METADATA"] = "1"
    os.environ["MX_WORKER_HOST"] = "127.0.0.1"
    os.environ["MX_WORKER_GRPC_PORT"] = "0"
    from modelexpress import p2p_pb2_grpc
    from modelexpress.metadata import publish, worker_server
    if args.no_lease:
        # As a source from before read leases (ModelExpress < 0.7.0): the generated base class
        # answers both calls UNIMPLEMENTED.
        for rpc in ("PrepareTensorRead", "ReleaseTensorRead"):
            setattr(worker_server.WorkerServiceServicer, rpc,
                    getattr(p2p_pb2_grpc.WorkerServiceServicer, rpc))
    served = ServedCalls()
    server_log = logging.getLogger("modelexpress.metadata.worker_server")
    server_log.setLevel(logging.INFO)
    server_log.addHandler(served)
    # NIXL's listener needs a port named up front (ModelExpress: MX_METADATA_PORT + device).
    mx_source_id, worker_id, manager, tensors = start_mx_nixl_source(args, listen_port=free_port())
    server = publish._worker_servers[0]
    write_json(args.out, {"mx_source_id": mx_source_id, "worker_id": worker_id,
                          "tensors": len(tensors), "agent_name": manager.agent_name,
                          "worker_grpc_endpoint": f"127.0.0.1:{server.port}"})

    def stop():
        try:
            server.drain_tensor_reads(0)  # raises while a lease is outstanding
            drain = "no read lease outstanding"
        except TimeoutError as e:
            drain = str(e)
        write_json(args.out + ".stopped", {"served": served.calls, "drain": drain})
        publish._heartbeat_threads[0].stop()  # STALE, worker server stopped
    return serve_until_sigterm(stop)


def te_source(args):
    from mooncake.engine import TransferEngine
    from modelexpress import p2p_pb2
    from modelexpress.client import MxClient
    from modelexpress.metadata.payload import tensor_source_metadata
    from modelexpress.metadata.publisher import PublisherThread
    _, state = model_state(args)
    torch.save(state, args.out + ".pt")
    engine = TransferEngine()
    rc = engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
    if rc != 0:
        raise SystemExit(f"TransferEngine.initialize returned {rc}")
    session_id = f"127.0.0.1:{engine.get_rpc_port()}"
    registered = set()
    descriptors = []
    for name, t in state.items():  # as ModelExpress's SGLang loader registers and describes
        size = t.numel() * t.element_size()
        if size and t.data_ptr() not in registered:
            if engine.register_memory(t.data_ptr(), size) != 0:
                raise SystemExit(f"register_memory failed for {name}")
            registered.add(t.data_ptr())
        descriptors.append(p2p_pb2.TensorDescriptor(name=name, addr=t.data_ptr(), size=size,
                                                    device_id=0))
    worker = p2p_pb2.WorkerMetadata(worker_rank=0, transfer_engine_session_id=session_id,
                                    tensor_source=tensor_source_metadata(descriptors),
                                    accelerator="cpu")
    client = MxClient(args.server)
    worker_id = uuid.uuid4().hex[:8]
    publisher = PublisherThread(
        mx_client=client, worker_id=worker_id, worker_rank=0,
        publish_fn=lambda: client.publish_metadata(mx_identity(args), worker, worker_id))
    publisher.start()
    mx_source_id = wait_mx_ready(client, args, worker_id)
    write_json(args.out, {"mx_source_id": mx_source_id, "worker_id": worker_id,
                          "session_id": session_id, "tensors": len(descriptors)})

    def stop():
        publisher.stop()
        for address in registered:
            engine.unregister_memory(address)
    return serve_until_sigterm(stop)


def the_ready_source(args):
    """ModelExpress's client and the one READY source of the identity (exits otherwise)."""
    from modelexpress import p2p_pb2
    from modelexpress.client import MxClient
    client = MxClient(args.server)
    refs = client.list_sources(mx_identity(args), p2p_pb2.SOURCE_STATUS_READY).instances
    if len(refs) != 1:
        raise SystemExit(f"expected one READY source, found {len(refs)}")
    return client, refs[0]


def mx_nixl_target(args):
    from modelexpress.metadata.payload import worker_tensor_descriptors
    from modelexpress.nixl_transfer import NixlTransferManager
    from modelexpress.types import TensorDescriptor
    _, state = dummy_state(args)
    equal_before = equal_to(state, args.expect)
    client, ref = the_ready_source(args)
    meta = client.get_metadata(mx_source_id=ref.mx_source_id, worker_id=ref.worker_id)
    worker = meta.worker
    manager = NixlTransferManager(f"mx-target-{uuid.uuid4().hex[:8]}", device_id=0,
                                  accelerator_backend=HostBackend())
    manager.initialize()
    manager.register_tensors(state)
    source_tensors = [TensorDescriptor(name=t.name, addr=t.addr, size=t.size,
                                       device_id=t.device_id, dtype=t.dtype)
                      for t in worker_tensor_descriptors(worker)]
    total_bytes, count, _ = manager.receive_from_source(
        source_metadata=worker.nixl_metadata, source_tensors=source_tensors,
        timeout_seconds=60, require_exact_match=True)
    # No manager.shutdown(): it dies of SIGSEGV in NIXL 1.5.1 here (see main()).
    write_json(args.out, {
        "bytes": total_bytes, "tensors": count,
        "backend_metadata": worker.WhichOneof("backend_metadata"),
        "worker_grpc_endpoint": worker.worker_grpc_endpoint,
        "descriptor_dtypes": sorted({t.dtype for t in source_tensors}),
        "equal_before": equal_before, "equal": equal_to(state, args.expect)})
    return 0


def mx_nixl_p2p_target(args):
    """ModelExpress's target in P2P metadata mode, its own code unchanged: the record from the
    server, the manifest from the worker endpoint (fetch_tensor_manifest, what RdmaStrategy
    prefetches; prepare_tensor_read, the leased manifest), the NIXL metadata from the agent's
    listener (fetch_remote_and_wait), the read (receive_from_source), the lease released."""
    from modelexpress.metadata.worker_server import fetch_tensor_manifest, prepare_tensor_read
    from modelexpress.nixl_transfer import NixlTransferManager
    from modelexpress.types import TensorDescriptor
    _, state = dummy_state(args)
    equal_before = equal_to(state, args.expect)
    client, ref = the_ready_source(args)
    worker = client.get_metadata(mx_source_id=ref.mx_source_id, worker_id=ref.worker_id).worker
    endpoint = worker.worker_grpc_endpoint
    prefetched, _ = fetch_tensor_manifest(endpoint, ref.mx_source_id, worker_id=ref.worker_id)
    lease, _ = prepare_tensor_read(endpoint, ref.mx_source_id, worker_id=ref.worker_id)
    manifest = lease.manifest
    manager = NixlTransferManager(f"mx-target-{uuid.uuid4().hex[:8]}", device_id=0,
                                  listen_port=free_port(), accelerator_backend=HostBackend())
    manager.initialize()
    manager.register_tensors(state)
    source_tensors = [TensorDescriptor(name=t.name, addr=t.addr, size=t.size,
                                       device_id=t.device_id, dtype=t.dtype)
                      for t in manifest.tensors]
    host, port = (manifest.metadata_endpoint or worker.metadata_endpoint).rsplit(":", 1)
    agent_name = manifest.agent_name or worker.agent_name
    manager.fetch_remote_and_wait(remote_agent_name=agent_name, ip=host, port=int(port),
                                  timeout_seconds=30)
    total_bytes, count, _ = manager.receive_from_source(
        source_metadata=b"", source_tensors=source_tensors, timeout_seconds=60,
        remote_agent_name=agent_name, require_exact_match=True)
    lease.close()  # ReleaseTensorRead: raises if the source no longer held the lease
    write_json(args.out, {
        "bytes": total_bytes, "tensors": count, "lease_id": lease._lease_id,
        "backend_metadata": worker.WhichOneof("backend_metadata"),
        "worker_grpc_endpoint": endpoint, "metadata_endpoint": worker.metadata_endpoint,
        "agent_name": worker.agent_name, "manifest_agent_name": manifest.agent_name,
        "manifest_metadata_endpoint": manifest.metadata_endpoint,
        "manifest_worker_id": manifest.worker_id,
        "prefetched_equals_leased": [p.SerializeToString() for p in prefetched] ==
                                    [t.SerializeToString() for t in manifest.tensors],
        "descriptor_dtypes": sorted({t.dtype for t in source_tensors}),
        "descriptors_match_source": all(
            t.addr != 0 and t.device_id == 0 for t in source_tensors if t.size),
        "equal_before": equal_before, "equal": equal_to(state, args.expect)})
    return 0


def ferry_pull(args):
    import ferry
    import ferry.torch
    model, state = dummy_state(args)
    before = {k: v.clone() for k, v in state.items()}
    equal_before = equal_to(state, args.expect) if args.expect else None
    start = time.monotonic()
    try:
        report = ferry.torch.pull_into(model, {"model_name": args.model, "dtype": "float32"},
                                       server=args.server, backend=args.backend,
                                       transfer_timeout=60)
    except ferry.Error as e:
        unchanged = all(torch.equal(state[k], before[k]) for k in before)
        write_json(args.out, {"error": type(e).__name__, "message": str(e),
                              "unchanged": unchanged, "elapsed": time.monotonic() - start})
        return 0
    out = {k: getattr(report, k) for k in ("ok", "outcome", "message", "backend", "transport",
                                            "bytes", "tensors", "verification",
                                            "source_worker_id", "source_endpoint", "attempts")}
    out["elapsed"] = time.monotonic() - start
    out["equal_before"] = equal_before
    out["equal"] = equal_to(model.state_dict(), args.expect) if args.expect else None
    write_json(args.out, out)
    return 0


ROLES = {
    "ferry-nixl-source": ferry_nixl_source,
    "ferry-dual-source": ferry_dual_source,
    "mx-nixl-p2p-target": mx_nixl_p2p_target,
    "mx-nixl-source": mx_nixl_source,
    "mx-nixl-p2p-source": mx_nixl_p2p_source,
    "te-source": te_source,
    "mx-nixl-target": mx_nixl_target,
    "ferry-pull": ferry_pull,
}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=sorted(ROLES))
    p.add_argument("--server", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--backend", default="auto")
    p.add_argument("--expect", default="")
    p.add_argument("--no-lease", action="store_true")
    args = p.parse_args()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    code = ROLES[args.role](args)
    # Every role's work is finished and written by now (sources marked STALE and deregistered).
    # Leave without exit-time destructors: on this machine any process that created a NIXL
    # 1.5.1 agent (nixl_cu13 or nixl_cu12, UCX backend) dies of SIGSEGV in them, with or
    # without ferry loaded, e.g.
    #   python -c "import nixl_cu13._api as a; a.nixl_agent('y', a.nixl_agent_config())"
    # exits 139. The tests check the peers' results and exit codes, not NIXL's teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
