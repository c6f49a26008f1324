"""Who is calling: every RPC resolves its principal first, by bearer token or by verified client certificate.

A token comes in the `authorization` metadata as `Bearer <token>`; the server compares its SHA-256 with the stored
hash. With mutual TLS (`--client-ca`), a client certificate verified against that CA names the principal by its
common name, which must be a registered, unrevoked principal. A token, when present, takes precedence. Anything
else is UNAUTHENTICATED.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

import grpc

from ..errors import ResourceExhaustedError, UnauthenticatedError
from ..principals import Principal, Principals

AUTHORIZATION = "authorization"


class Authenticator(Protocol):
    """Resolves the principal of a call, or raises UnauthenticatedError."""

    def principal(self, context: grpc.ServicerContext) -> Principal:
        """The caller."""
        ...


class TokenOrCertificateAuthenticator:
    """Bearer tokens, and client certificates when the server runs mutual TLS."""

    def __init__(self, principals: Principals) -> None:
        self._principals = principals

    def by_metadata(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal | None:
        """The holder of the call's bearer token; None when the call carries no `authorization` metadata.

        Needs nothing but the call's headers, so the front door can refuse a caller before reading any message.
        """
        for key, value in metadata:
            if key == AUTHORIZATION:
                text = value if isinstance(value, str) else value.decode()
                scheme, _, token = text.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    raise UnauthenticatedError("the authorization metadata must read 'Bearer <token>'")
                return self._principals.by_token(token.strip())
        return None

    def principal(self, context: grpc.ServicerContext) -> Principal:
        """The caller, by token first, then by certificate."""
        principal = self.by_metadata(context.invocation_metadata())
        if principal is not None:
            return principal
        names = context.auth_context().get("x509_common_name")
        if isinstance(names, list) and names:
            return self._principals.by_name(names[0].decode())
        raise no_credentials()


def no_credentials() -> UnauthenticatedError:
    """The refusal of a call that carries neither a token nor a client certificate."""
    return UnauthenticatedError(
        "no credentials: send 'authorization: Bearer <token>' (CLEANROOM_TOKEN) or a client certificate"
    )


class StreamSlot:
    """One open stream's hold on the limiter; `bind` charges it to a collaboration once the stream names one."""

    def __init__(self, limiter: StreamLimiter, principal: str) -> None:
        self._limiter = limiter
        self.principal = principal
        self.collaboration: str | None = None

    def bind(self, collaboration: str) -> None:
        """Count this stream against `collaboration`'s share; RESOURCE_EXHAUSTED when the share is used up."""
        if self.collaboration is None:
            self._limiter._bind(self, collaboration)


class StreamLimiter:
    """At most `limit` concurrent streams per principal, `per_collaboration` per collaboration, `total` in all.

    A stream holds one of the server's worker threads for as long as it is open; keeping `total` below the
    number of workers leaves threads for unary calls whatever streams are open (or idle). The per-principal
    limit keeps one caller from taking all of `total`; the per-collaboration share keeps the members of one
    collaboration (however many principals they are) from taking the slots another collaboration needs. A
    stream counts against its collaboration from the moment it names one (its first message, or its request);
    the server's own services (health, reflection) share the pseudo-collaboration `SERVER_SERVICES`.
    """

    def __init__(self, limit: int, total: int | None = None, per_collaboration: int | None = None) -> None:
        self.limit = limit
        self.total = total if total is not None else limit
        self.per_collaboration = per_collaboration if per_collaboration is not None else self.total
        self._open: Counter[str] = Counter()
        self._by_collaboration: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, principal: Principal, collaboration: str | None = None) -> Iterator[StreamSlot]:
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
        held = StreamSlot(self, principal.name)
        try:
            if collaboration is not None:
                held.bind(collaboration)
            yield held
        finally:
            with self._lock:
                self._open[principal.name] -= 1
                if held.collaboration is not None:
                    self._by_collaboration[held.collaboration] -= 1

    def _bind(self, held: StreamSlot, collaboration: str) -> None:
        with self._lock:
            if self._by_collaboration[collaboration] >= self.per_collaboration:
                raise ResourceExhaustedError(
                    f"{collaboration!r} has {self.per_collaboration} streams open, its share "
                    "of the server; finish or cancel one first"
                )
            self._by_collaboration[collaboration] += 1
            held.collaboration = collaboration


#: The stream share of the server's own services (health Watch, reflection), counted like a collaboration's.
SERVER_SERVICES = "the server's own services"
