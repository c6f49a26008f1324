"""Errors the SDK raises: what went wrong, in words a member can act on, typed by gRPC status.

Every error is a `CleanRoomError` (so `except CleanRoomError` keeps working) and, more precisely, the subclass of
its status (`NotFoundError`, `PermissionDeniedError`, `InvalidArgumentError`, ...), with `code` the status name.
Connection failures (status UNAVAILABLE) say which of the usual causes it is and how to fix it: a certificate
that the given CA did not sign, or nothing listening at the address.
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING

# gRPC loads where an error is translated (by then it is loaded): a blinding worker imports this module for
# WorkersLostError and must not pay for gRPC (tests/unit/cleanroom_client/test_blinding.py).
if TYPE_CHECKING:
    import grpc

#: The `ErrorInfo` reason of a refused privacy budget (PROTOCOL.md, "Errors").
BUDGET_REASON = "PRIVACY_BUDGET_EXHAUSTED"


@dataclass(frozen=True)
class Problem:
    """One problem of a refused request: the field's path (e.g. `tables.brand.users`) and what is wrong."""

    field: str
    description: str


@dataclass(frozen=True)
class BudgetShortfall:
    """A refused privacy budget: whose ledger (`member`), `epsilon` or `delta`, what was asked, left and total."""

    member: str
    resource: str
    requested: float
    left: float
    total: float


class CleanRoomError(Exception):
    """A call to the clean room failed; `code` is the gRPC status name (e.g. 'INVALID_ARGUMENT')."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")

    @classmethod
    def from_rpc(cls, err: grpc.RpcError) -> CleanRoomError:
        """Translate a gRPC error into the subclass of its status, with its structured details as fields."""
        import grpc

        code = err.code() if isinstance(err, grpc.Call) else None
        details = err.details() if isinstance(err, grpc.Call) else str(err)
        name = code.name if code else "UNKNOWN"
        message = details or ""
        if name == "UNAVAILABLE":
            message = unavailable_hint(message)
        error = _BY_CODE.get(name, CleanRoomError)(name, message)
        if isinstance(err, grpc.Call):
            _read_details(error, err)
        return error


def _read_details(error: CleanRoomError, call: grpc.Call) -> None:
    """Fill `problems` and `budget` from the status details (google.rpc BadRequest, ErrorInfo), if sent."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    try:
        status = rpc_status.from_call(call)
    except ValueError:  # details that do not match the status: ignore them, keep the message
        return
    if status is None:
        return
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR) and isinstance(error, InvalidArgumentError):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            error.problems = tuple(Problem(v.field, v.description) for v in request.field_violations)
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and isinstance(error, ResourceExhaustedError):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.reason == BUDGET_REASON:
                m = info.metadata
                error.budget = BudgetShortfall(
                    m.get("member", ""),
                    m.get("resource", ""),
                    float(m.get("requested", "nan")),
                    float(m.get("left", "nan")),
                    float(m.get("total", "nan")),
                )


class InvalidArgumentError(CleanRoomError):
    """The request or an uploaded table is malformed or outside the policy; the message says what to change.

    `problems`: each problem with its field path when the server sent them (e.g. every problem of a policy).
    """

    problems: tuple[Problem, ...] = ()


class NotFoundError(CleanRoomError):
    """No such collaboration, audience or upload (or not one you may see)."""


class AlreadyExistsError(CleanRoomError):
    """A collaboration or upload by that name exists already."""


class PermissionDeniedError(CleanRoomError):
    """Your principal may not do this (the policy's abilities, or your role)."""


class UnauthenticatedError(CleanRoomError):
    """The token or client certificate was not accepted: check CLEANROOM_TOKEN, or ask the operator for a new one."""


class FailedPreconditionError(CleanRoomError):
    """Not in this state: e.g. the policy is not approved by everyone yet, or changed since you read it."""


class ResourceExhaustedError(CleanRoomError):
    """A limit was reached: your privacy budget, a request size, or concurrent streams.

    `budget`: for a privacy budget, whose ledger and the figures (asked, left, total); None for other limits.
    """

    budget: BudgetShortfall | None = None


class AbortedError(CleanRoomError):
    """The query was charged and failed (the same for every failure after the charge), or a conflict: retry."""


class UnavailableError(CleanRoomError):
    """The server could not be reached, or TLS failed; the message names the likely cause and its fix."""


class DeadlineExceededError(CleanRoomError):
    """The call took longer than its deadline (e.g. waiting for the peer to match)."""


class InternalError(CleanRoomError):
    """The server failed; it logged the cause. Your data already stored is intact."""


class UnimplementedError(CleanRoomError):
    """The server does not offer this call (an older server)."""


_BY_CODE: dict[str, type[CleanRoomError]] = {
    "INVALID_ARGUMENT": InvalidArgumentError,
    "OUT_OF_RANGE": InvalidArgumentError,
    "NOT_FOUND": NotFoundError,
    "ALREADY_EXISTS": AlreadyExistsError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "UNAUTHENTICATED": UnauthenticatedError,
    "FAILED_PRECONDITION": FailedPreconditionError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "ABORTED": AbortedError,
    "UNAVAILABLE": UnavailableError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "INTERNAL": InternalError,
    "UNIMPLEMENTED": UnimplementedError,
}


def unavailable_hint(details: str) -> str:
    """One line with the likely cause of a connection failure and its fix, then gRPC's own words."""
    lowered = details.lower()
    if "handshake" in lowered or "certificate" in lowered or "ssl" in lowered:
        hint = (
            "TLS failed: the server's certificate is not signed by the CA you gave (CLEANROOM_CA / --ca), or the "
            "name you connect to is not in it; pass the CA file your operator sent"
        )
    elif "connection refused" in lowered or "failed to connect" in lowered:
        hint = (
            "cannot reach the server: nothing answers at that address; check CLEANROOM_TARGET / --target "
            "(host:port) and that the server is running"
        )
    else:
        hint = "the server is unavailable; retry, and check the address and the network"
    return f"{hint} ({' '.join(details.split())})"


RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED"})


class RefreshInProgressError(AbortedError):
    """Another `refresh()`, `retire()` or `cancel_refresh()` of this collaboration runs now on this machine.

    Raised by the SDK itself, before anything is read or sent: one such call at a time holds the collaboration's
    lock file in the state directory. Wait for the other call to return, then call again (a repeat of a completed
    refresh returns its summary).
    """

    def __init__(self, message: str) -> None:
        super().__init__("ABORTED", message)


class WorkersLostError(BrokenProcessPool):
    """A process of the blinding pool ended abruptly: a worker (killed, out of memory) or the fork server it came from.

    The executor has replaced its pool, so calling `match()` (or `refresh()`) again resumes from what the server
    has. A `BrokenProcessPool`, as before, for callers that catch that.
    """
