"""Who is calling: the seam where every RPC resolves its principal before doing anything else.

Until the trust issue lands, `MetadataPrincipal` takes the principal's name from the `x-cleanroom-principal`
request metadata. It authenticates nothing, so `cleanroom serve` starts only with `--insecure-dev-principals`
and says so loudly. The trust issue replaces it with TLS and bearer tokens behind the same `Authenticator`
interface; no servicer changes.
"""

from __future__ import annotations

import re
from typing import Protocol

import grpc

from ..errors import UnauthenticatedError

PRINCIPAL_METADATA = "x-cleanroom-principal"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class Authenticator(Protocol):
    """Resolves the principal of a call, or raises UnauthenticatedError."""

    def principal(self, context: grpc.ServicerContext) -> str:
        """The caller's principal name."""
        ...


class MetadataPrincipal:
    """Development only: trusts the principal name the caller states in its metadata."""

    def principal(self, context: grpc.ServicerContext) -> str:
        """The name in `x-cleanroom-principal`."""
        for key, value in context.invocation_metadata():
            if key == PRINCIPAL_METADATA:
                name = value if isinstance(value, str) else value.decode()
                if _NAME.match(name):
                    return name
                raise UnauthenticatedError(f"{PRINCIPAL_METADATA} {name!r} is not a principal name")
        raise UnauthenticatedError(f"no principal: set the `{PRINCIPAL_METADATA}` metadata on every call")
