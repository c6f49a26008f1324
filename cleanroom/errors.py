"""Domain errors. Each names a user mistake (or, for InternalError, a bug) with a message a person can act on.

They are mapped to gRPC status codes in exactly one place (`cleanroom.server.errors`); domain code never imports
grpc.
"""

from __future__ import annotations


class CleanroomError(Exception):
    """Base of all domain errors."""


class InvalidArgumentError(CleanroomError):
    """The request is malformed: fix the request."""


class NotFoundError(CleanroomError):
    """The named resource does not exist (or the caller may not know it exists)."""


class AlreadyExistsError(CleanroomError):
    """A resource with that name exists already."""


class FailedPreconditionError(CleanroomError):
    """The request is well-formed but the collaboration is not in a state that allows it."""


class PermissionDeniedError(CleanroomError):
    """The caller is known but may not do this."""


class UnauthenticatedError(CleanroomError):
    """The caller could not be identified."""


class ResourceExhaustedError(CleanroomError):
    """A budget or limit is used up."""


class QueryFailedError(CleanroomError):
    """A query failed after its budget was reserved (its data may have been read): it was charged, nothing released.

    The message is the same whatever went wrong, so the failure says nothing about the data beyond that it failed.
    """


class InternalError(CleanroomError):
    """A bug in the clean room, never the caller's fault."""
