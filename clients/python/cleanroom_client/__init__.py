"""cleanroom-client: the member SDK of the Cleanroom data clean room.

Identifiers are normalized, hashed to curve25519 and blinded with the member's own key on the member's machine;
only blinded points, random surrogate ids and the columns a member chooses ever leave it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .blinding import ChunkExecutor, ProcessPoolChunkExecutor, SerialExecutor
    from .client import CleanRoomClient, CollaborationInfo
    from .errors import CleanRoomError, WorkersLostError
    from .identity import IdentifierType, InvalidIdentifierError, Normalizer
    from .matching import IdentifierCounts, MatchSummary
    from .policy import Policy, PolicyError, parse_policy

#: Where each public name lives. Imported on first use, so that `cleanroom-client` can quiet gRPC's own logging
#: before gRPC loads (its C core reads GRPC_VERBOSITY once, at import).
_HOMES = {
    "ChunkExecutor": "blinding",
    "ProcessPoolChunkExecutor": "blinding",
    "SerialExecutor": "blinding",
    "CleanRoomClient": "client",
    "CollaborationInfo": "client",
    "CleanRoomError": "errors",
    "WorkersLostError": "errors",
    "IdentifierType": "identity",
    "InvalidIdentifierError": "identity",
    "Normalizer": "identity",
    "IdentifierCounts": "matching",
    "MatchSummary": "matching",
    "Policy": "policy",
    "PolicyError": "policy",
    "parse_policy": "policy",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'cleanroom_client' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{home}", __name__), name)


__all__ = [
    "ChunkExecutor",
    "CleanRoomClient",
    "CleanRoomError",
    "CollaborationInfo",
    "IdentifierCounts",
    "IdentifierType",
    "InvalidIdentifierError",
    "MatchSummary",
    "Normalizer",
    "Policy",
    "PolicyError",
    "ProcessPoolChunkExecutor",
    "SerialExecutor",
    "WorkersLostError",
    "parse_policy",
]
