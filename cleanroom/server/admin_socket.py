"""The operator's AdminService on a Unix socket: the running server's, or one an operator command serves itself.

Light on purpose: an operator command imports this (not the whole server) and starts in a fraction of a second.
"""

from __future__ import annotations

import os
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from cleanroom_client.protocol import admin_pb2_grpc

from .admin_servicer import AdminServicer
from .errors import ErrorMappingInterceptor

if TYPE_CHECKING:
    from ..room import Room

#: The running server's admin socket, in its data directory.
ADMIN_SOCKET = "admin.sock"


def serve_admin(room: Room, path: Path) -> grpc.Server:
    """The operator's AdminService on the Unix socket `path`, readable only by this user.

    The running server serves it on `<data_dir>/admin.sock`; an operator command with no server running serves it
    for itself on a private socket, so every command takes the same path through the same servicer.
    """
    path.unlink(missing_ok=True)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[ErrorMappingInterceptor()])
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(room.store, room.principals), server)
    old = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix:{path}")
    finally:
        os.umask(old)
    server.start()
    os.chmod(path, 0o600)
    return server
