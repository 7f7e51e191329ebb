"""SourceIdentity: what a source holds, hashed into its mx_source_id."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Union

from ferry import _ferry

# Short names the CLI uses, accepted in identity dicts too.
_ALIASES = {
    "model": "model_name",
    "framework": "backend_framework",
    "tp": "tensor_parallel_size",
    "pp": "pipeline_parallel_size",
    "ep": "expert_parallel_size",
    "extra": "extra_parameters",
}


@dataclasses.dataclass
class SourceIdentity:
    """The identity sources publish under and targets look up (ModelExpress's SourceIdentity).

    Every field a source and its targets set must be equal: they hash to the mx_source_id.
    The defaults match the `ferry` command's (tp/pp/ep 1, framework "unknown").
    """

    model_name: str
    backend_framework: Union[str, int] = "unknown"  # "vllm", "sglang", "trt-llm", "unknown"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    expert_parallel_size: int = 1
    dtype: str = ""
    quantization: str = ""
    revision: str = ""
    mx_version: str = ""
    extra_parameters: Dict[str, str] = dataclasses.field(default_factory=dict)
    # Compile-cache fields (artifacts only).
    backend_framework_version: str = ""
    torch_version: str = ""
    cuda_version: str = ""
    triton_version: str = ""
    gpu_arch: str = ""
    compile_config_digest: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def mx_source_id(self) -> str:
        return mx_source_id(self)


IdentityLike = Union[SourceIdentity, Mapping[str, Any]]


def as_identity_dict(identity: IdentityLike) -> Dict[str, Any]:
    """The identity as a dict of SourceIdentity field names (CLI short names accepted)."""
    if isinstance(identity, SourceIdentity):
        return identity.to_dict()
    if not isinstance(identity, Mapping):
        raise _ferry.InvalidArgumentError(
            f"identity must be a ferry.SourceIdentity or a dict of its fields, "
            f"got {type(identity).__name__}"
        )
    out: Dict[str, Any] = {}
    for key, value in identity.items():
        name = _ALIASES.get(key, key)
        if name in out:
            raise _ferry.InvalidArgumentError(f"identity field {name} is given twice ({key})")
        out[name] = value
    return out


def mx_source_id(identity: IdentityLike) -> str:
    """The 16-hex-character mx_source_id the server computes for `identity`."""
    return _ferry.mx_source_id(as_identity_dict(identity))


def client_for(server: Optional[str], client: Optional[_ferry.MetadataClient]) -> _ferry.MetadataClient:
    """`client` if given, else a MetadataClient for `server` (None: FERRY_SERVER, then
    MX_SERVER_ADDRESS, then localhost:8001; credentials from the same variables as the CLI)."""
    if client is not None:
        if server is not None:
            raise _ferry.InvalidArgumentError("pass server= or client=, not both")
        return client
    return _ferry.MetadataClient(server)
