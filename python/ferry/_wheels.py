"""The optional data-plane wheels (NIXL, Mooncake's TransferEngine) and the gRPC runtime that
reading ModelExpress's worker endpoints needs (grpcio, protobuf), loaded on first use.

ferry's own engine needs none of them. A backend that needs a wheel that is not installed, or that
cannot load on this machine, raises ferry.FailedPreconditionError naming the package to install
and the cause, never an import traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional, Tuple

from ferry import _ferry

# The versions ferry is tested against (python/requirements-wheels.txt).
NIXL_REQUIREMENT = "nixl==1.5.1"
TRANSFER_ENGINE_REQUIREMENT = "mooncake-transfer-engine-non-cuda==0.3.13.post1"

_VENV_HINT = "(into a virtual environment; scripts/wheels-venv.sh makes one with every pin)"

_nixl: Optional[ModuleType] = None
_transfer_engine: Optional[type] = None
_grpc: Optional[Tuple[ModuleType, ...]] = None


def _load_failed(backend: str, requirement: str, cause: BaseException) -> _ferry.Error:
    return _ferry.FailedPreconditionError(
        f"backend '{backend}' needs {requirement.split('==')[0]}, which could not be loaded "
        f"({type(cause).__name__}: {cause}); pip install {requirement} {_VENV_HINT}, or use "
        f"backend='ferry'")


def nixl_api() -> ModuleType:
    """NIXL's Python API module (`nixl_agent`, `nixl_agent_config`), found as ModelExpress finds
    it (_nixl.py): a CUDA-specific wheel's `_api`, else the meta package's."""
    global _nixl
    if _nixl is not None:
        return _nixl
    missing = None
    for package in ("nixl_cu13", "nixl_cu12", "nixl"):
        module_name = f"{package}._api"
        try:
            _nixl = importlib.import_module(module_name)
            return _nixl
        except ModuleNotFoundError as e:
            if e.name not in {package, module_name}:
                raise _load_failed("nixl", NIXL_REQUIREMENT, e) from None
            missing = e
        except Exception as e:  # a wheel that is there but cannot load (library, glibc)
            raise _load_failed("nixl", NIXL_REQUIREMENT, e) from None
    raise _ferry.FailedPreconditionError(
        f"backend 'nixl' needs NIXL's Python package, which is not installed ({missing}); "
        f"pip install {NIXL_REQUIREMENT} {_VENV_HINT}, or use backend='ferry'") from None


def transfer_engine_class() -> type:
    """Mooncake's `mooncake.engine.TransferEngine`."""
    global _transfer_engine
    if _transfer_engine is not None:
        return _transfer_engine
    try:
        module = importlib.import_module("mooncake.engine")
    except ModuleNotFoundError as e:
        if e.name not in {"mooncake", "mooncake.engine"}:
            raise _load_failed("transfer_engine", TRANSFER_ENGINE_REQUIREMENT, e) from None
        raise _ferry.FailedPreconditionError(
            f"backend 'transfer_engine' needs Mooncake's TransferEngine, which is not installed "
            f"({e}); pip install {TRANSFER_ENGINE_REQUIREMENT} {_VENV_HINT} (or another "
            f"mooncake-transfer-engine build for your hardware), or use backend='ferry'"
        ) from None
    except Exception as e:
        raise _load_failed("transfer_engine", TRANSFER_ENGINE_REQUIREMENT, e) from None
    _transfer_engine = module.TransferEngine
    return _transfer_engine


def grpc_runtime() -> Tuple[ModuleType, ModuleType, ModuleType, ModuleType]:
    """(grpc, descriptor_pb2, descriptor_pool, message_factory): what a call to a ModelExpress
    worker endpoint (P2P metadata mode) needs. Any grpcio and protobuf release that ModelExpress
    itself runs with will do; ferry pins none."""
    global _grpc
    if _grpc is not None:
        return _grpc
    try:
        grpc = importlib.import_module("grpc")
        descriptor_pb2 = importlib.import_module("google.protobuf.descriptor_pb2")
        descriptor_pool = importlib.import_module("google.protobuf.descriptor_pool")
        message_factory = importlib.import_module("google.protobuf.message_factory")
    except Exception as e:  # missing, or there but unloadable
        raise _ferry.FailedPreconditionError(
            f"reading a ModelExpress source in P2P metadata mode (its default) calls its worker "
            f"endpoint over gRPC, which needs grpcio and protobuf ({type(e).__name__}: {e}); "
            f"pip install grpcio protobuf, or have the source publish with MX_P2P_METADATA=0"
        ) from None
    _grpc = (grpc, descriptor_pb2, descriptor_pool, message_factory)
    return _grpc
