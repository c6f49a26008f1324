"""gRPC wiring: thin servicers over the domain modules, one error mapping, health and reflection.

`create_server` and `ServerConfig` load the whole server on first use; `cleanroom.server.admin_socket` alone is
what an operator command needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import ServerConfig, create_server

__all__ = ["ServerConfig", "create_server"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'cleanroom.server' has no attribute {name!r}")
