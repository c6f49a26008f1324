"""Server assembly: the database, the domain services, the servicers, health and reflection.

`create_server` binds and starts; tests pass port 0 and read the port back. The request path of every RPC is:
error mapping (interceptor) -> authenticate (`Authenticator`) -> servicer parses the request -> domain call.
The trust issue adds authorization and the audit entry at the domain call; the DP issue adds the query pipeline
behind AnalyticsService, which until then answers UNIMPLEMENTED like AuditService.
"""

from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cleanroom_client._proto import (
    analytics_pb2,
    analytics_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    collaboration_pb2,
    collaboration_pb2_grpc,
    matching_pb2,
    matching_pb2_grpc,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..collaborations import Collaborations
from ..matching import Relay, TableUploads
from ..storage import Database
from .auth import Authenticator, MetadataPrincipal
from .collaboration_servicer import CollaborationServicer
from .errors import ErrorMappingInterceptor
from .matching_servicer import MatchingServicer

#: The transport's hard limit; the servicers refuse anything over 4 MiB with a clear message first.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Where the server keeps its data and where it listens."""

    data_dir: Path
    address: str = "127.0.0.1:0"
    max_workers: int = 16
    authenticator: Authenticator = field(default_factory=MetadataPrincipal)


@dataclass
class RunningServer:
    """A started server: its gRPC server, the bound port and the database it owns."""

    server: grpc.Server
    port: int
    db: Database

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving, then close the database."""
        self.server.stop(grace).wait()
        self.db.close()


def create_server(config: ServerConfig) -> RunningServer:
    """Open the data directory, wire every service and start listening on `config.address`."""
    db = Database(config.data_dir)
    collabs = Collaborations(db)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers),
        interceptors=[ErrorMappingInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    auth = config.authenticator
    collaboration_pb2_grpc.add_CollaborationServiceServicer_to_server(CollaborationServicer(collabs, auth), server)
    matching_pb2_grpc.add_MatchingServiceServicer_to_server(
        MatchingServicer(collabs, Relay(db), TableUploads(db), auth), server
    )
    # Not yet implemented: the generated base classes answer every method with UNIMPLEMENTED.
    analytics = analytics_pb2_grpc.AnalyticsServiceServicer()  # type: ignore[abstract]
    audit = audit_pb2_grpc.AuditServiceServicer()  # type: ignore[abstract]
    analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(analytics, server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(audit, server)

    services = [
        collaboration_pb2.DESCRIPTOR.services_by_name["CollaborationService"].full_name,
        matching_pb2.DESCRIPTOR.services_by_name["MatchingService"].full_name,
        analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name,
        audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    ]
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *services]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)

    port = server.add_insecure_port(config.address)
    if port == 0:
        db.close()
        raise OSError(f"cannot listen on {config.address}")
    server.start()
    return RunningServer(server, port, db)
