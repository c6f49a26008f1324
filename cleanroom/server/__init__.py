"""gRPC wiring: thin servicers over the domain modules, one error mapping, health and reflection."""

from .app import ServerConfig, create_server

__all__ = ["ServerConfig", "create_server"]
