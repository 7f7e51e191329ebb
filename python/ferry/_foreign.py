"""Reading a record's data path, and the checks ferry makes before reading a source that is not
ferry's (a NIXL agent or a Mooncake TransferEngine session). The worker endpoint of a
ModelExpress source in P2P metadata mode is read by `_mx_worker.TensorRead`.

What a ModelExpress TensorDescriptor carries is name, address, byte size, device and dtype (the
TransferEngine publisher leaves dtype empty): no shape and no checksum. So ferry checks, before
any byte moves, that the names match exactly, that every byte size equals the local tensor's
numel * element_size, and that every published dtype equals the local one; shapes are covered
only through the byte size, and the bytes themselves cannot be verified.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import torch

from ferry import _ferry

FERRY_BLOB_MAGIC = b"FERRYTI1"  # src/worker/centralized.h: ferry's centralized record

BACKENDS = ("ferry", "nixl", "transfer_engine")

# (source address, destination address, bytes, source device_id)
Read = Tuple[int, int, int, int]


def record_backend(record: Mapping[str, Any]) -> str:
    """The data path a record offers: "ferry", "nixl", "transfer_engine" or "none". "nixl" is
    either layout of ModelExpress's NIXL publisher: centralized (the agent's metadata in
    nixl_metadata, the descriptors in the record) or P2P metadata mode (`p2p_metadata`). A
    ferry source published with backend "ferry+nixl" has the P2P metadata layout too, so its
    record says "nixl" here; pull_into(backend="auto") asks the endpoint which it is
    (torch._serving_kind)."""
    nixl = record["nixl_metadata"]
    if record["backend_metadata"] == "transfer_engine":
        return "transfer_engine"
    if nixl.startswith(FERRY_BLOB_MAGIC):
        return "ferry"
    if nixl:
        return "nixl"
    if record["worker_grpc_endpoint"]:
        return "nixl" if record["metadata_endpoint"] else "ferry"
    return "none"


def p2p_metadata(record: Mapping[str, Any]) -> bool:
    """Whether a "nixl" record is ModelExpress's P2P metadata mode (MX_P2P_METADATA=1, its
    default): no NIXL metadata in the record, a worker endpoint that serves the tensor manifest,
    and the NIXL agent's listener at metadata_endpoint. ferry's own P2P records name no
    metadata_endpoint."""
    return (not record["nixl_metadata"] and bool(record["worker_grpc_endpoint"])
            and bool(record["metadata_endpoint"]))


def check_backend(backend: str) -> None:
    if backend != "auto" and backend not in BACKENDS:
        raise _ferry.InvalidArgumentError(
            f"backend {backend!r} is not one of: auto, " + ", ".join(BACKENDS))


def host_accelerator(record: Mapping[str, Any]) -> bool:
    """Whether the source's tensors are in host memory (this build reads nothing else)."""
    return record["accelerator"] in ("", "cpu")


def plan_reads(descriptors: List[Mapping[str, Any]], targets: Mapping[str, torch.Tensor],
               where: str) -> Tuple[List[Read], Dict[str, str]]:
    """The reads that fill `targets` from `descriptors`, and what was checked. Raises
    ferry.FailedPreconditionError naming the tensor when names, byte sizes or dtypes differ."""
    by_name = {d["name"]: d for d in descriptors}
    if len(by_name) != len(descriptors):
        raise _ferry.FailedPreconditionError(f"{where} publishes a tensor name twice")
    missing = sorted(set(targets) - set(by_name))
    extra = sorted(set(by_name) - set(targets))
    if missing or extra:
        raise _ferry.FailedPreconditionError(
            f"{where} does not hold this model's tensors: {len(missing)} missing there "
            f"(first: {missing[:5]}), {len(extra)} only there (first: {extra[:5]})")
    reads: List[Read] = []
    seen = set()
    dtypes_published = 0
    for name, t in targets.items():
        d = by_name[name]
        nbytes = t.numel() * t.element_size()
        if d["size"] != nbytes:
            raise _ferry.FailedPreconditionError(
                f"tensor {name}: {where} publishes {d['size']} bytes, this model's tensor has "
                f"{nbytes} (shape {list(t.shape)}, {t.dtype})")
        if d["dtype"]:
            dtypes_published += 1
            if d["dtype"] != str(t.dtype):
                raise _ferry.FailedPreconditionError(
                    f"tensor {name}: {where} publishes dtype {d['dtype']}, this model's tensor "
                    f"is {t.dtype}")
        if nbytes == 0:
            continue
        read = (d["addr"], t.data_ptr(), nbytes, d["device_id"])
        if read not in seen:  # tied weights: one read per destination range
            seen.add(read)
            reads.append(read)
    checks = {
        "names": "exact match",
        "sizes": "every tensor's byte size",
        "dtypes": ("every tensor's dtype" if dtypes_published == len(targets) else
                   f"{dtypes_published} of {len(targets)} (the source publishes no dtype for "
                   f"the others)"),
        "shapes": "not published by the source (covered by the byte size only)",
        "checksums": "none: the source publishes no checksum, so the bytes are not verified",
    }
    return reads, checks
