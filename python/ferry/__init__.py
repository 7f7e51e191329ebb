"""ferry: model weights and compile caches pulled peer to peer into a starting inference replica.

The compiled module (ferry._ferry) wraps ferry's C++ library; this package adds the identity
type, the torch helpers (ferry.torch) and the compile-cache functions (ferry.artifacts).
Every blocking call releases the GIL. Failures raise a subclass of ferry.Error whose message
says what failed and what to do; `e.code` is the status code name ("NOT_FOUND", ...).
"""

import os as _os

from ferry import _ferry
from ferry._ferry import (
    AbortedError,
    AlreadyExistsError,
    CancelledError,
    DataLossError,
    DeadlineExceededError,
    Error,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    MetadataClient,
    Peer,
    Publisher,
    Region,
    TransferEngine,
    WeightSource,
    ArtifactSource,
    serve_buffers,
    pull_into_buffers,
    resolve_server_address,
)
from ferry._identity import SourceIdentity, as_identity_dict, mx_source_id

__version__ = "0.1.0"

__all__ = [
    "Error",
    "InvalidArgumentError",
    "NotFoundError",
    "AlreadyExistsError",
    "FailedPreconditionError",
    "UnavailableError",
    "DeadlineExceededError",
    "DataLossError",
    "PermissionDeniedError",
    "UnauthenticatedError",
    "ResourceExhaustedError",
    "CancelledError",
    "AbortedError",
    "OutOfRangeError",
    "UnimplementedError",
    "InternalError",
    "SourceIdentity",
    "mx_source_id",
    "as_identity_dict",
    "MetadataClient",
    "Publisher",
    "TransferEngine",
    "Region",
    "Peer",
    "WeightSource",
    "ArtifactSource",
    "serve_buffers",
    "pull_into_buffers",
    "resolve_server_address",
]

# FERRY_LOG_LEVEL, as for the ferry command (default info); logs go to stderr.
_ferry.init_logging(_os.environ.get("FERRY_LOG_LEVEL", "info"))

from ferry import artifacts  # noqa: E402  (after logging is set up)

publish_artifact = artifacts.publish
pull_artifact = artifacts.pull
__all__ += ["artifacts", "publish_artifact", "pull_artifact"]
