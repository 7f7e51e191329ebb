"""ModelExpress's released Python client (modelexpress==0.7.0 from PyPI), imported for tests.

The package's top-level ``__init__`` imports its GDS and engine loaders, which need torch>=2.1
(float8 dtypes) and CUDA; this machine's torch is Debian's 1.13 CPU build, and PyPI's torch>=2.6
is the multi-GiB CUDA wheel set. So the package object is created from its installed location
without running ``__init__``, and its submodules (``modelexpress.client``,
``modelexpress.metadata.publisher``, ``modelexpress.source_selection``, ...) are then imported
the ordinary way: the code under test is the released code, unchanged.
"""

import importlib
import importlib.metadata
import importlib.util
import sys

EXPECTED_VERSION = "0.7.0"


def load():
    """Returns the ``modelexpress`` package module (without its ``__init__`` run)."""
    if "modelexpress" in sys.modules:
        return sys.modules["modelexpress"]
    version = importlib.metadata.version("modelexpress")
    if version != EXPECTED_VERSION:
        raise RuntimeError(
            f"modelexpress {version} is installed in {sys.prefix}; these tests pin "
            f"{EXPECTED_VERSION} (python/requirements-interop.txt): rebuild the venv with "
            "scripts/interop-venv.sh")
    spec = importlib.util.find_spec("modelexpress")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"modelexpress is not importable from {sys.executable}")
    package = importlib.util.module_from_spec(spec)
    sys.modules["modelexpress"] = package
    return package


def module(name):
    """``modelexpress.<name>`` from the released package, e.g. ``module("client")``."""
    load()
    return importlib.import_module(f"modelexpress.{name}")
