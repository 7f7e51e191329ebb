"""What source.py and target.py share: importing ferry, the identity flags, JSON files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict

import model

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def import_ferry():
    """The ferry package: from sys.path (PYTHONPATH), else from the build tree
    ($FERRY_BUILD_DIR/python, default build/python under the repository root). Exits with a
    message saying how to build it when neither has it."""
    try:
        import ferry
        import ferry.torch  # noqa: F401
        return ferry
    except ImportError as first:
        build = os.environ.get("FERRY_BUILD_DIR", "build")
        path = os.path.join(REPO_ROOT, build, "python")
        if not os.path.isdir(os.path.join(path, "ferry")):
            sys.exit(f"error: cannot import ferry ({first}) and {path}/ferry does not exist; "
                     f"build it with ./scripts/build.sh (or ninja -C build ferry_python), or set "
                     f"PYTHONPATH to the build's python/ folder")
        sys.path.insert(0, path)
        try:
            import ferry
            import ferry.torch  # noqa: F401
        except ImportError as e:
            sys.exit(f"error: cannot import ferry from {path}: {e}; rebuild it with "
                     f"./scripts/build.sh (and run with the python it was built for, "
                     f"/usr/bin/python3)")
        return ferry


def add_identity_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "identity (must be equal on source and target: it hashes to the mx_source_id)")
    group.add_argument("--model", default="tiny-llama",
                       help="model name (default: %(default)s)")
    group.add_argument("--dtype", default="float32", choices=sorted(model.DTYPES),
                       help="dtype of the weights in memory (default: %(default)s)")
    group.add_argument("--revision", default="", help="checkpoint revision (default: none)")


def add_server_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", metavar="HOST:PORT",
                        help="ferry-server address (default: $FERRY_SERVER, then "
                             "$MX_SERVER_ADDRESS, then localhost:8001)")


def identity_from(args: argparse.Namespace):
    """The identity both sides use. The post-processed layout is part of it: a target that
    post-processes differently looks for other sources."""
    ferry = import_ferry()
    return ferry.SourceIdentity(model_name=args.model, dtype=args.dtype, revision=args.revision,
                                extra_parameters={"layout": model.LAYOUT})


def write_json(path: str, obj: Dict[str, Any]) -> None:
    """Writes `obj` to `path` atomically (readers never see a partial file)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def describe_error(e: Exception) -> str:
    """`ClassName (CODE): message` of a ferry.Error."""
    # getattr: the errors the package's Python layer raises (argument checks) have no .code.
    code = getattr(e, "code", None)
    return f"{type(e).__name__}{f' ({code})' if code else ''}: {e}"


def log(*parts: Any) -> None:
    """Progress lines, on stderr (stdout is kept for --json)."""
    print(*parts, file=sys.stderr, flush=True)
