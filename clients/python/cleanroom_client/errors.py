"""Errors the SDK raises: what went wrong, in words a member can act on."""

from __future__ import annotations

import grpc


class CleanRoomError(Exception):
    """A call to the clean room failed; `code` is the gRPC status name (e.g. 'INVALID_ARGUMENT')."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")

    @classmethod
    def from_rpc(cls, err: grpc.RpcError) -> CleanRoomError:
        """Translate a gRPC error."""
        code = err.code() if isinstance(err, grpc.Call) else None
        details = err.details() if isinstance(err, grpc.Call) else str(err)
        return cls(code.name if code else "UNKNOWN", details or "")


RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED"})
