"""The one place where domain errors become gRPC status codes.

`ErrorMappingInterceptor` wraps every handler: a domain error ends the call with its status and message; any
other exception is logged server-side and answered INTERNAL with a generic message, so no traceback (and nothing
of the data it might name) ever reaches the caller. Servicers never call `context.abort` themselves: they raise
domain errors.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..errors import (
    AlreadyExistsError,
    CleanroomError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    QueryFailedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

log = logging.getLogger(__name__)

#: Longest status message a caller receives; longer ones are cut, so no error echoes a large input back.
MAX_DETAIL_CHARS = 500
#: At most this many problems travel as structured details (trailers are small); the message says how many there were.
MAX_PROBLEMS = 20
#: The `ErrorInfo` reason and domain of a refused privacy budget (PROTOCOL.md, "Errors").
BUDGET_REASON, ERROR_DOMAIN = "PRIVACY_BUDGET_EXHAUSTED", "cleanroom"

STATUS: dict[type[CleanroomError], grpc.StatusCode] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    QueryFailedError: grpc.StatusCode.ABORTED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
}


def _short(message: str) -> str:
    return message if len(message) <= MAX_DETAIL_CHARS else message[: MAX_DETAIL_CHARS - 1] + "…"


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a caller receives for `exc`; at most `MAX_DETAIL_CHARS` characters."""
    for kind, code in STATUS.items():
        if isinstance(exc, kind):
            return code, _short(str(exc))
    if isinstance(exc, NotImplementedError):  # the generated base servicers of services still to come
        return grpc.StatusCode.UNIMPLEMENTED, "this method is not implemented by this server version yet"
    return grpc.StatusCode.INTERNAL, "internal error in the clean room; the operator's log has the details"


def details_of(exc: BaseException) -> list[Message]:
    """Structured details a caller receives with the status (google.rpc types any gRPC language can read).

    INVALID_ARGUMENT with problems: a `BadRequest` with one field violation per problem ("path: what is wrong").
    RESOURCE_EXHAUSTED of a privacy budget: an `ErrorInfo` (reason PRIVACY_BUDGET_EXHAUSTED, the figures as
    metadata) and a `QuotaFailure` naming whose ledger. Nothing here depends on data: problems are about the
    request, budget figures about the queries already charged.
    """
    if isinstance(exc, InvalidArgumentError) and exc.problems:
        violations = []
        for problem in exc.problems[:MAX_PROBLEMS]:
            path, sep, what = problem.partition(": ")
            field, description = (path, what) if sep else ("", problem)
            violations.append(
                error_details_pb2.BadRequest.FieldViolation(field=field[:200], description=description[:300])
            )
        return [error_details_pb2.BadRequest(field_violations=violations)]
    if isinstance(exc, ResourceExhaustedError) and exc.shortfall is not None:
        s = exc.shortfall
        info = error_details_pb2.ErrorInfo(
            reason=BUDGET_REASON,
            domain=ERROR_DOMAIN,
            metadata={
                "member": s.member,
                "resource": s.resource,
                "requested": f"{s.requested:.17g}",
                "left": f"{s.left:.17g}",
                "total": f"{s.total:.17g}",
            },
        )
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=f"members/{s.member}", description=f"{s.resource} budget: {s.left:g} of {s.total:g} left"
                )
            ]
        )
        return [info, quota]
    return []


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    if not context.is_active():
        # The client cancelled or went away (e.g. Ctrl-C during a match): routine, nobody to answer.
        log.info("%s: the client cancelled the call (%s)", method, type(exc).__name__)
        return
    code, message = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("unexpected error in %s", method)
    details = details_of(exc)
    if not details:
        context.abort(code, message)
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)
    context.abort_with_status(rpc_status.to_status(status))


def _wrap_unary(fn: Callable[..., Any], method: str) -> Callable[..., Any]:
    @functools.wraps(fn)  # keeps the inner behaviour's marks (the front door's `AT_THE_DOOR`)
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(request, context)
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never leaked
            _abort(context, exc, method)

    return handler


def _wrap_stream(fn: Callable[..., Iterator[Any]], method: str) -> Callable[..., Iterator[Any]]:
    @functools.wraps(fn)  # keeps the inner behaviour's marks (the front door's `AT_THE_DOOR`)
    def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from fn(request, context)
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never leaked
            _abort(context, exc, method)

    return handler


def rewrap(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Callable[..., Any], bool, bool], Callable[..., Any]]
) -> grpc.RpcMethodHandler:
    """The same method handler with its behaviour replaced by `wrap(behaviour, streams_in, streams_out)`.

    The one place that knows gRPC's four kinds of method (unary or streaming request, unary or streaming response),
    for every interceptor that wraps a servicer's behaviour.
    """
    kinds = (
        (handler.unary_unary, False, False, grpc.unary_unary_rpc_method_handler),
        (handler.unary_stream, False, True, grpc.unary_stream_rpc_method_handler),
        (handler.stream_unary, True, False, grpc.stream_unary_rpc_method_handler),
        (handler.stream_stream, True, True, grpc.stream_stream_rpc_method_handler),
    )
    for fn, streams_in, streams_out, make in kinds:
        if fn:
            return make(
                wrap(fn, streams_in, streams_out),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


class BehaviourInterceptor(grpc.ServerInterceptor):
    """An interceptor that serves every method through its own `wrap` of the method's behaviour.

    The one `intercept_service`: an unknown method stays unknown (None), every other handler is rebuilt by
    `serve`, which by default wraps its behaviour with `wrap(fn, method, streams_in, streams_out)` through
    `rewrap` (so no subclass repeats gRPC's four kinds of method).
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Serve the method through `serve`; None (an unknown method) passes through."""
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return self.serve(handler, handler_call_details)

    def serve(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        """The handler that serves the call: by default, `handler` with its behaviour wrapped by `wrap`."""
        method = details.method
        return rewrap(handler, lambda fn, streams_in, streams_out: self.wrap(fn, method, streams_in, streams_out))

    def wrap(self, fn: Callable[..., Any], method: str, streams_in: bool, streams_out: bool) -> Callable[..., Any]:
        """The behaviour `fn` of `method`, wrapped; a subclass that keeps the default `serve` defines it."""
        raise NotImplementedError


class ErrorMappingInterceptor(BehaviourInterceptor):
    """Maps domain errors of every RPC to gRPC status; hides unexpected errors behind INTERNAL."""

    def wrap(self, fn: Callable[..., Any], method: str, streams_in: bool, streams_out: bool) -> Callable[..., Any]:
        """Wrap the method's behaviour in the error mapping."""
        return (_wrap_stream if streams_out else _wrap_unary)(fn, method)
