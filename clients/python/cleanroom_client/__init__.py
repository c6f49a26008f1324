"""cleanroom-client: the member SDK of the Cleanroom data clean room.

Identifiers are normalized, hashed to curve25519 and blinded with the member's own key on the member's machine;
only blinded points, random surrogate ids and the columns a member chooses ever leave it.
"""

from .blinding import ChunkExecutor, ProcessPoolChunkExecutor, SerialExecutor
from .client import CleanRoomClient, CollaborationInfo
from .errors import CleanRoomError
from .identity import IdentifierType, InvalidIdentifierError, Normalizer
from .matching import IdentifierCounts, MatchSummary
from .policy import Policy, PolicyError, parse_policy

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
    "parse_policy",
]
