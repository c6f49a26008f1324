"""Domain errors. Each names a user mistake (or, for InternalError, a bug) with a message a person can act on.

They are mapped to gRPC status codes in exactly one place (`cleanroom.server.errors`); domain code never imports
grpc.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class CleanroomError(Exception):
    """Base of all domain errors."""


class RefusalError(CleanroomError):
    """Base of the errors that turn a request down for what it asks, before any data is read or anything charged.

    Its arguments, the caller's rights, the resource it names, the collaboration's state, a budget or a limit: the
    front door counts each against the caller's refusals (`cleanroom.server.rates`). Not refusals: a query that
    failed after its budget was reserved (`QueryFailedError`: charged), an unknown caller (`UnauthenticatedError`:
    no principal to count against), a bug, a stopping server.
    """


class InvalidArgumentError(RefusalError):
    """The request is malformed: fix the request.

    `problems` lists each problem as "path: what is wrong" (e.g. every problem of a refused policy); callers receive
    them as structured details beside the message.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class NotFoundError(RefusalError):
    """The named resource does not exist (or the caller may not know it exists)."""


class AlreadyExistsError(RefusalError):
    """A resource with that name exists already."""


class FailedPreconditionError(RefusalError):
    """The request is well-formed but the collaboration is not in a state that allows it."""


class PermissionDeniedError(RefusalError):
    """The caller is known but may not do this."""


class UnauthenticatedError(CleanroomError):
    """The caller could not be identified."""


@dataclass(frozen=True)
class BudgetShortfall:
    """Why a privacy budget refused a query: whose ledger, which resource, what was asked and what is left.

    Figures of the budget the policy set and the queries already charged: never of the data.
    """

    member: str
    resource: str  # "epsilon" or "delta"
    requested: float
    left: float
    total: float


class ResourceExhaustedError(RefusalError):
    """A budget or limit is used up; `shortfall` says by how much when it is a privacy budget."""

    def __init__(self, message: str, shortfall: BudgetShortfall | None = None) -> None:
        super().__init__(message)
        self.shortfall = shortfall


class QueryFailedError(CleanroomError):
    """A query failed after its budget was reserved (its data may have been read): it was charged, nothing released.

    The message is the same whatever went wrong, so the failure says nothing about the data beyond that it failed.
    """


class InternalError(CleanroomError):
    """A bug in the clean room, never the caller's fault."""


class UnavailableError(CleanroomError):
    """The server is stopping: the request did nothing and may be sent again once it is back."""
