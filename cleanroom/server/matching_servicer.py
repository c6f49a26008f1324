"""MatchingService: protobuf in, domain call, protobuf out.

Every stream names its collaboration on each message; the first message decides it and later ones must agree.
Each chunk is checked against `MAX_CHUNK_BYTES` before any domain work, so an oversized chunk is a clear
INVALID_ARGUMENT rather than a transport error (the transport's own limit sits above it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import Message

from cleanroom_client.identity import IdentifierType
from cleanroom_client.policy import Ability
from cleanroom_client.protocol import matching_pb2 as pb
from cleanroom_client.protocol import matching_pb2_grpc as pb_grpc

from ..collaborations import Collaboration, Collaborations, parse_name
from ..errors import InvalidArgumentError, PermissionDeniedError
from ..matching import MatchStage, Relay, TableUploads, UploadProgress
from ..principals import Principal
from .auth import Authenticator, StreamLimiter, StreamSlot

MAX_CHUNK_BYTES = 4 * 1024 * 1024

_ID_TYPES = {
    pb.IDENTIFIER_TYPE_EMAIL: IdentifierType.EMAIL,
    pb.IDENTIFIER_TYPE_PHONE: IdentifierType.PHONE,
    pb.IDENTIFIER_TYPE_DEVICE_ID: IdentifierType.DEVICE_ID,
    pb.IDENTIFIER_TYPE_CUSTOM: IdentifierType.CUSTOM,
}
_STAGES = {
    MatchStage.UPLOADING: pb.MatchStatus.STAGE_UPLOADING,
    MatchStage.DOUBLE_BLINDING: pb.MatchStatus.STAGE_DOUBLE_BLINDING,
    MatchStage.MATCHED: pb.MatchStatus.STAGE_MATCHED,
}


def _check_size(request: Message, chunk_index: int) -> None:
    size = request.ByteSize()
    if size > MAX_CHUNK_BYTES:
        raise InvalidArgumentError(
            f"chunk {chunk_index} is {size} bytes; the limit is {MAX_CHUNK_BYTES} bytes per message: "
            "send smaller chunks"
        )


class _UploadStream:
    """The messages of one upload stream, held under one stream slot (see `MatchingServicer._upload`).

    Guarantees, for every message it yields, in this order: the message is within `MAX_CHUNK_BYTES`; it names the
    stream's one collaboration (resolved, and the caller's ability checked, on the first message); the slot is bound
    to that collaboration. `period` checks that every message names the period of the first.
    """

    def __init__(
        self,
        collaborations: Collaborations,
        principal: Principal,
        action: str,
        requests: Iterator[Any],
        held: StreamSlot,
    ) -> None:
        self._collaborations = collaborations
        self.principal = principal
        self._action = action
        self._requests = requests
        self._held = held
        self._parent = ""
        self._collaboration: Collaboration | None = None
        self._period: int | None = None

    def __iter__(self) -> Iterator[tuple[Collaboration, Any]]:
        for req in self._requests:
            _check_size(req, req.chunk_index)
            collaboration = self._resolve(req.parent)
            self._held.bind(collaboration.id)
            yield collaboration, req

    def _resolve(self, parent: str) -> Collaboration:
        if self._collaboration is None:
            self._parent = parent
            self._collaboration = self._collaborations.require_active(
                self.principal, parse_name(parent), Ability.CONTRIBUTE, self._action
            )
        elif parent != self._parent:
            raise InvalidArgumentError(f"every message of a stream must name {self._parent}, got {parent!r}")
        return self._collaboration

    def period(self, period: int) -> int:
        """`period`, if it is the stream's (the first message's); INVALID_ARGUMENT otherwise."""
        if self._period is None:
            self._period = period
        elif period != self._period:
            raise InvalidArgumentError(f"every message of a stream must name period {self._period}, got {period}")
        return period


def _own_table(principal: Principal, table: str) -> str:
    """`users` or `<caller>.users`; a table of another member is never the caller's to write."""
    owner, dot, name = table.rpartition(".")
    if dot and owner != principal.name:
        raise PermissionDeniedError(f"you ({principal.name}) may upload only your own tables, not {table!r}")
    return name


def _no_messages() -> InvalidArgumentError:
    return InvalidArgumentError("the stream carried no chunks")


#: Most row numbers one RetireUsers call may carry.
MAX_RETIRE_ROWS = 1_000_000


class MatchingServicer(pb_grpc.MatchingServiceServicer):
    """Thin adapter over the relay and the table uploads."""

    def __init__(
        self,
        collaborations: Collaborations,
        relay: Relay,
        tables: TableUploads,
        auth: Authenticator,
        streams: StreamLimiter,
    ) -> None:
        self._collaborations = collaborations
        self._relay = relay
        self._tables = tables
        self._auth = auth
        self._streams = streams

    @contextmanager
    def _upload(self, requests: Iterator[Any], context: grpc.ServicerContext, action: str) -> Iterator[_UploadStream]:
        """Hold a stream slot for an upload stream of `action`, whose messages it checks (`_UploadStream`).

        A caller that is no member of any collaboration is refused before it gets a slot.
        """
        principal = self._auth.principal(context)
        self._collaborations.require_member_somewhere(principal, action)  # outsiders never get a slot
        with self._streams.slot(principal) as held:
            yield _UploadStream(self._collaborations, principal, action, requests, held)

    def UploadBlindedPoints(
        self, request_iterator: Iterator[pb.UploadBlindedPointsRequest], context: grpc.ServicerContext
    ) -> pb.UploadBlindedPointsResponse:
        """Store chunks of singly blinded points."""
        progress: UploadProgress | None = None
        received = 0
        with self._upload(request_iterator, context, "upload.points") as stream:
            for collaboration, req in stream:
                id_type = _ID_TYPES.get(req.identifier_type)
                if id_type is None:
                    raise InvalidArgumentError(f"chunk {req.chunk_index}: identifier_type must be set to a known type")
                progress = self._relay.upload_points(
                    collaboration,
                    stream.principal.name,
                    req.chunk_index,
                    id_type,
                    req.first_row,
                    req.present,
                    req.points,
                    req.last,
                    req.total_rows,
                    stream.period(req.period),
                )
                received += len(req.points) // 32
        if progress is None:
            raise _no_messages()
        return pb.UploadBlindedPointsResponse(
            points_received=received, next_chunk_index=progress.next_chunk, committed=progress.committed
        )

    def FetchPeerPoints(
        self, request: pb.FetchPeerPointsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.FetchPeerPointsResponse]:
        """Stream the peer's shuffled points."""
        principal = self._auth.principal(context)
        collaboration = self._collaborations.require_active(
            principal, parse_name(request.parent), Ability.CONTRIBUTE, "fetch.peer_points"
        )
        total = self._relay.offer_chunks(collaboration, principal.name, request.period, request.origin)
        if not 0 <= request.start_chunk <= total:
            raise InvalidArgumentError(f"start_chunk {request.start_chunk} is out of range; the offer has {total}")
        with self._streams.slot(principal, collaboration.id):
            for i in range(request.start_chunk, total):
                if not context.is_active():
                    return
                points = self._relay.fetch_peer_chunk(collaboration, principal.name, i, request.period, request.origin)
                yield pb.FetchPeerPointsResponse(chunk_index=i, points=points, total_chunks=total)

    def SubmitDoubleBlindedPoints(
        self, request_iterator: Iterator[pb.SubmitDoubleBlindedPointsRequest], context: grpc.ServicerContext
    ) -> pb.SubmitDoubleBlindedPointsResponse:
        """Store chunks of tags of doubly blinded points."""
        progress: UploadProgress | None = None
        origin: str | None = None
        with self._upload(request_iterator, context, "upload.double_blinded") as stream:
            for collaboration, req in stream:
                if origin is not None and req.origin != origin:
                    raise InvalidArgumentError(f"every message of a stream must name origin {origin!r}")
                origin = req.origin
                progress = self._relay.submit_double_blinded(
                    collaboration,
                    stream.principal.name,
                    req.chunk_index,
                    req.tags,
                    req.last,
                    stream.period(req.period),
                    req.origin,
                    req.blinded_points,
                )
        if progress is None:
            raise _no_messages()
        return pb.SubmitDoubleBlindedPointsResponse(next_chunk_index=progress.next_chunk, committed=progress.committed)

    def UploadTable(
        self, request_iterator: Iterator[pb.UploadTableRequest], context: grpc.ServicerContext
    ) -> pb.UploadTableResponse:
        """Store chunks of a table."""
        progress: UploadProgress | None = None
        table = ""
        with self._upload(request_iterator, context, "upload.table") as stream:
            for collaboration, req in stream:
                if table and req.table != table:
                    raise InvalidArgumentError(f"every message of a stream must name table {table!r}")
                table = req.table
                progress = self._tables.upload_chunk(
                    collaboration,
                    stream.principal.name,
                    _own_table(stream.principal, table),
                    req.chunk_index,
                    req.arrow_ipc,
                    req.last,
                    stream.period(req.period),
                )
        if progress is None:
            raise _no_messages()
        return pb.UploadTableResponse(
            rows_received=progress.rows, next_chunk_index=progress.next_chunk, committed=progress.committed
        )

    def GetMatchStatus(self, request: pb.GetMatchStatusRequest, context: grpc.ServicerContext) -> pb.MatchStatus:
        """The match from the caller's side."""
        principal = self._auth.principal(context)
        collaboration = self._collaborations.require_active(
            principal, parse_name(request.parent), Ability.CONTRIBUTE, "match.status"
        )
        status = self._relay.status(
            collaboration, principal.name, request.period if request.HasField("period") else None
        )
        return pb.MatchStatus(
            stage=_STAGES[status.stage],
            period=status.period,
            uploads=[
                pb.UploadProgress(kind=u.kind, next_chunk_index=u.next_chunk, rows=u.rows, committed=u.committed)
                for u in status.uploads
            ],
            peer_points_ready=status.peer_points_ready,
            peer_point_chunks=status.peer_point_chunks,
            own_set_size=status.own_set_size,
            peer_set_size=status.peer_set_size,
            offers=[
                pb.ChainOffer(
                    origin=o.origin,
                    hop=o.hop,
                    hops=o.hops,
                    ready=o.ready,
                    chunks=o.chunks,
                    last_hop=o.last_hop,
                    done=o.done,
                )
                for o in status.offers
            ],
            set_sizes=dict(status.set_sizes),
        )

    def OpenRefresh(self, request: pb.OpenRefreshRequest, context: grpc.ServicerContext) -> pb.OpenRefreshResponse:
        """Open the next refresh period, or return the open one."""
        principal = self._auth.principal(context)
        collaboration = self._collaborations.require_active(
            principal, parse_name(request.parent), Ability.CONTRIBUTE, "refresh.open"
        )
        return pb.OpenRefreshResponse(period=self._relay.open_refresh(collaboration, principal.name))

    def RetireUsers(self, request: pb.RetireUsersRequest, context: grpc.ServicerContext) -> pb.RetireUsersResponse:
        """Stage the caller's users to retire when the open period completes."""
        principal = self._auth.principal(context)
        collaboration = self._collaborations.require_active(
            principal, parse_name(request.parent), Ability.CONTRIBUTE, "refresh.retire"
        )
        if len(request.row_ids) % 8:
            raise InvalidArgumentError("row_ids must be 8 bytes each (int64, little-endian)")
        if len(request.row_ids) // 8 > MAX_RETIRE_ROWS:
            raise InvalidArgumentError(f"at most {MAX_RETIRE_ROWS} row numbers per call; retire the rest next period")
        rows = np.frombuffer(request.row_ids, dtype="<i8")
        retired, period = self._relay.retire(collaboration, principal.name, request.period, rows)
        return pb.RetireUsersResponse(retired=retired, period=period)

    def CancelRefresh(
        self, request: pb.CancelRefreshRequest, context: grpc.ServicerContext
    ) -> pb.CancelRefreshResponse:
        """Discard the open refresh period."""
        principal = self._auth.principal(context)
        collaboration = self._collaborations.require_active(
            principal, parse_name(request.parent), Ability.CONTRIBUTE, "refresh.cancel"
        )
        self._relay.cancel_refresh(collaboration, principal.name, request.period)
        return pb.CancelRefreshResponse()
