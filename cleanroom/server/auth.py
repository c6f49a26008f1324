"""Who is calling: every RPC resolves its principal first, by bearer token or by verified client certificate.

A token comes in the `authorization` metadata as `Bearer <token>`; the server compares its SHA-256 with the stored
hash. With mutual TLS (`--client-ca`), a client certificate verified against that CA names the principal by its
common name, which must be a registered, unrevoked principal. A token, when present, takes precedence. Anything
else is UNAUTHENTICATED.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

import grpc

from ..errors import ResourceExhaustedError, UnauthenticatedError
from ..principals import Principal, Principals

AUTHORIZATION = "authorization"
T = TypeVar("T")


class Authenticator(Protocol):
    """Resolves the principal of a call, or raises UnauthenticatedError."""

    def principal(self, context: grpc.ServicerContext) -> Principal:
        """The caller."""
        ...


class TokenOrCertificateAuthenticator:
    """Bearer tokens, and client certificates when the server runs mutual TLS."""

    def __init__(self, principals: Principals) -> None:
        self._principals = principals

    def principal(self, context: grpc.ServicerContext) -> Principal:
        """The caller, by token first, then by certificate."""
        for key, value in context.invocation_metadata():
            if key == AUTHORIZATION:
                text = value if isinstance(value, str) else value.decode()
                scheme, _, token = text.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    raise UnauthenticatedError("the authorization metadata must read 'Bearer <token>'")
                return self._principals.by_token(token.strip())
        names = context.auth_context().get("x509_common_name")
        if isinstance(names, list) and names:
            return self._principals.by_name(names[0].decode())
        raise UnauthenticatedError(
            "no credentials: send 'authorization: Bearer <token>' (CLEANROOM_TOKEN) or a client certificate"
        )


class StreamLimiter:
    """At most `limit` concurrent streams per principal and `total` in all.

    A stream holds one of the server's worker threads for as long as it is open; keeping `total` below the
    number of workers leaves threads for unary calls whatever streams are open (or idle), and the per-principal
    limit keeps one caller from taking all of `total`.
    """

    def __init__(self, limit: int, total: int | None = None) -> None:
        self.limit = limit
        self.total = total if total is not None else limit
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, principal: Principal) -> Iterator[None]:
        """Hold one stream slot for the duration of the block; RESOURCE_EXHAUSTED when none is free."""
        with self._lock:
            if self._open[principal.name] >= self.limit:
                raise ResourceExhaustedError(
                    f"you ({principal.name}) already have {self.limit} streams open; finish or cancel one first"
                )
            if self._open.total() >= self.total:
                raise ResourceExhaustedError(
                    f"the server has {self.total} streams open, its most; try again in a moment"
                )
            self._open[principal.name] += 1
        try:
            yield
        finally:
            with self._lock:
                self._open[principal.name] -= 1


def watch_idle(requests: Iterator[T], context: grpc.ServicerContext, timeout: float) -> Iterator[T]:
    """Yield the client's messages; cancel the call when none arrives for `timeout` seconds.

    An abandoned upload thus frees its thread and its stream slot; chunks already stored stay stored.
    """
    timer: threading.Timer | None = None

    def arm() -> None:
        nonlocal timer
        if timer is not None:
            timer.cancel()
        timer = threading.Timer(timeout, context.cancel)
        timer.daemon = True
        timer.start()

    try:
        arm()
        for message in requests:
            arm()
            yield message
    finally:
        if timer is not None:
            timer.cancel()
