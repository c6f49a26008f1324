"""Server assembly: a room, the servicers, health, reflection, TLS, and the operator's local socket.

`create_server` binds and starts; tests pass port 0 and read the port back. The request path of every RPC is:
error mapping (interceptor, outermost, so it answers the front door's refusals too) -> the front door
(credentials from the headers, before any message is read; half-open and idle calls cut; rates; `frontdoor.py`) ->
limits on every request string and float (interceptor; refusals audited) -> authenticate (token or client
certificate) -> servicer parses the request ->
authorize in the domain (member, ability, auditor assignment; refusals audited) -> domain call, whose audit entry
commits in the same transaction as its effect, before the response leaves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cleanroom_client.keyfile import read_private_file
from cleanroom_client.protocol import (
    MAX_MESSAGE_BYTES,
    PUBLIC_SERVICES,
    analytics_pb2_grpc,
    audit_pb2_grpc,
    collaboration_pb2_grpc,
    matching_pb2_grpc,
)

from ..analytics.audiences import Audiences
from ..collaborations import Collaborations
from ..errors import InvalidArgumentError, UnauthenticatedError
from ..room import Room
from ..storage import StorageLimits, Store
from .admin_socket import ADMIN_SOCKET, serve_admin
from .analytics_servicer import AnalyticsServicer
from .audit_servicer import AuditServicer
from .auth import Authenticator, StreamLimiter, TokenOrCertificateAuthenticator
from .collaboration_servicer import CollaborationServicer
from .errors import ErrorMappingInterceptor
from .frontdoor import DoorExecutor, FrontDoorInterceptor, Watchdog
from .limits import OnRefusal, RequestLimitsInterceptor, named_collaboration
from .matching_servicer import MatchingServicer
from .rates import REFUSAL_RATE, Rate, RateLimiter
from .receipts import ReceiptInterceptor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsConfig:
    """PEM bytes of the server's certificate chain and key, and optionally the CA that signs client certificates."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert_chain: Path, private_key: Path, client_ca: Path | None = None) -> TlsConfig:
        """Read the PEM files; PermissionError when the key is readable by group or others (as the audit key)."""
        return cls(
            cert_chain.read_bytes(), read_private_file(private_key), client_ca.read_bytes() if client_ca else None
        )


@dataclass(frozen=True)
class ServerConfig:
    """Where the server keeps its data, where it listens, how it secures and limits connections."""

    data_dir: Path
    address: str = "127.0.0.1:0"
    #: None only with `insecure=True` (local development).
    tls: TlsConfig | None = None
    insecure: bool = False
    max_workers: int = 32
    streams_per_principal: int = 8
    #: Seconds a stream may go without a message either way (an upload's next chunk, a download's next read).
    stream_idle_timeout: float = 120.0
    #: Seconds a unary call may wait for its request message after its headers (a half-open call).
    request_timeout: float = 10.0
    #: DuckDB's memory cap and spill directory (see `StorageLimits`); the defaults are DuckDB's.
    storage: StorageLimits = field(default_factory=StorageLimits)
    #: Streams open at once, all principals together; None: all workers but `unary_reserve(max_workers)`.
    max_streams: int | None = None
    #: Streams open at once for one collaboration, all its members together; None: `collaboration_share(max_streams)`.
    streams_per_collaboration: int | None = None
    #: RPCs accepted at once (running or queued for a worker); beyond, RESOURCE_EXHAUSTED at once.
    #: None: `RPC_QUEUE_FACTOR` times `max_workers`.
    max_concurrent_rpcs: int | None = None
    #: Refused calls a principal may make at once and their refill (`rates.REFUSAL_RATE` unless set): a server that
    #: must let a flooding principal back sooner (or later) says so here.
    refusal_rate: Rate = REFUSAL_RATE


#: RPCs accepted per worker thread (the rest of the queue beyond the running ones) before refusing new ones.
RPC_QUEUE_FACTOR = 4


def collaboration_share(total_streams: int) -> int:
    """Streams one collaboration may hold: a third of all, so two others always find slots beside it."""
    return max(1, total_streams // 3)


def unary_reserve(max_workers: int) -> int:
    """Worker threads no stream may take, so unary calls are answered whatever streams are open."""
    return max(2, max_workers // 4)


#: Seconds `RunningServer.stop` waits, after the grace period and the interrupt, for the files to close.
STOP_TIMEOUT = 5.0
#: SIGTERM's promise: `cleanroom serve` has exited this many seconds after the signal, whatever was running
#: (1 s grace for calls in flight + the interrupt + at most `STOP_TIMEOUT` to close; past it, the process exits
#: anyway, and what was committed replays from the write-ahead logs at the next start).
STOP_DEADLINE = 10.0


@dataclass
class RunningServer:
    """A started server: the public gRPC server and port, the operator's socket server, and the room."""

    server: grpc.Server
    port: int
    admin: grpc.Server
    room: Room
    watchdog: Watchdog

    @property
    def store(self) -> Store:
        """The room's files: the catalogue and the collaborations'."""
        return self.room.store

    def stop(self, grace: float | None = 1.0, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop serving and close the files, within `grace` + `timeout` seconds whatever is running.

        New calls are refused at once; calls in flight have `grace` seconds to finish; then every running statement
        is interrupted (its transaction rolls back; a query whose data was read is charged at the next open) and
        the files are checkpointed and closed, waiting at most `timeout` for handlers to let go. Returns False when
        a file stayed open (a handler busy outside the database): the caller exits anyway, and what was committed
        replays from the write-ahead log at the next start.
        """
        stopped = self.server.stop(grace)
        stopped.wait(grace)
        self.watchdog.close()
        self.room.interrupt()
        self.admin.stop(None)
        return self.room.close(timeout)


def _audit_refusal(auth: Authenticator, collaborations: Collaborations) -> OnRefusal:
    """Audit a request refused at the edge, as the servicers' refusals are: by whom, what was asked, why.

    A caller without valid credentials is named by nobody, so its refusal is not recorded (it is refused all the
    same); a caller's refusal goes to the chain of the collaboration it names when it belongs there.
    """

    def record(context: grpc.ServicerContext, method: str, request: Message, exc: InvalidArgumentError) -> None:
        try:
            principal = auth.principal(context)
        except UnauthenticatedError:
            return
        collaborations.record_refusal(principal, named_collaboration(request), method, str(exc))

    return record


def create_server(config: ServerConfig) -> RunningServer:
    """Open the data directory, wire every service and start listening on `config.address`."""
    if config.tls is None and not config.insecure:
        raise ValueError("TLS is required: pass a certificate and key, or insecure=True for local development")
    room = Room.open(config.data_dir, config.storage)
    auth = TokenOrCertificateAuthenticator(room.principals)
    total_streams = config.max_streams
    if total_streams is None:
        total_streams = max(1, config.max_workers - unary_reserve(config.max_workers))
    streams = StreamLimiter(
        config.streams_per_principal,
        total_streams,
        config.streams_per_collaboration or collaboration_share(total_streams),
    )
    rates = RateLimiter(refusal_rate=config.refusal_rate)
    watchdog = Watchdog(on_cut=rates.refused)
    front_door = FrontDoorInterceptor(
        auth,
        certificates=config.tls is not None and config.tls.client_ca is not None,
        streams=streams,
        rates=rates,
        watchdog=watchdog,
        request_timeout=config.request_timeout,
        idle_timeout=config.stream_idle_timeout,
    )
    server = grpc.server(
        DoorExecutor(max_workers=config.max_workers),
        maximum_concurrent_rpcs=config.max_concurrent_rpcs or RPC_QUEUE_FACTOR * config.max_workers,
        interceptors=[
            ErrorMappingInterceptor(),
            front_door,
            ReceiptInterceptor(room.trees),
            RequestLimitsInterceptor(_audit_refusal(auth, room.collaborations)),
        ],
        options=[
            # windows stay at their initial size, so a message the server never reads costs it little memory
            ("grpc.http2.bdp_probe", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )
    collaborations = room.collaborations
    collaboration_pb2_grpc.add_CollaborationServiceServicer_to_server(
        CollaborationServicer(collaborations, auth), server
    )
    matching_pb2_grpc.add_MatchingServiceServicer_to_server(
        MatchingServicer(collaborations, room.relay, room.tables, auth, streams), server
    )
    analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(
        AnalyticsServicer(room.queries, collaborations, Audiences(room.store, room.audit), auth), server
    )
    audit_pb2_grpc.add_AuditServiceServicer_to_server(
        AuditServicer(room.audit, collaborations, auth, streams, room.trees), server
    )

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *PUBLIC_SERVICES]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*PUBLIC_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME], server)

    if config.tls is None:
        port = server.add_insecure_port(config.address)
    else:
        credentials = grpc.ssl_server_credentials(
            [(config.tls.private_key, config.tls.cert_chain)],
            root_certificates=config.tls.client_ca,
            require_client_auth=config.tls.client_ca is not None,
        )
        port = server.add_secure_port(config.address, credentials)
    if port == 0:
        watchdog.close()
        room.close()
        raise OSError(f"cannot listen on {config.address}")
    server.start()
    admin = serve_admin(room, room.data_dir / ADMIN_SOCKET)
    return RunningServer(server, port, admin, room, watchdog)
