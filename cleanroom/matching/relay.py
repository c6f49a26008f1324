"""The PSI relay: it stores singly blinded points, shuffles them for the peer, and un-shuffles the peer's answer.

Protocol v1 step 5 (protos/PROTOCOL.md). What the server holds, and for how long:
- a member's singly blinded points, from upload until the peer has double-blinded them; then they are deleted;
- the 8-byte tags of the doubly blinded points on each member's rows, which are what the join compares;
- never an identifier, a digest or a key: it only ever receives points blinded by a member's secret scalar.

The shuffle is a uniformly random permutation drawn from the OS's CSPRNG, so the order in which the peer receives
points says nothing about the owner's row order. Every chunk is stored with its progress in one transaction; the
last chunk commits the whole upload in the same transaction, so a half upload is never visible.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from cleanroom_client.blinding import TAG_SIZE
from cleanroom_client.curve import POINT_PROBLEMS, InvalidPointError, check_points
from cleanroom_client.identity import IdentifierType
from cleanroom_client.protocol import ID_TYPE_CODES, POINT_SIZE
from cleanroom_client.renewal import renews_budget

from ..audit import AuditLog
from ..collaborations import Collaboration, check_approved_revision
from ..errors import FailedPreconditionError, InvalidArgumentError
from ..storage import Store
from ..storage.database import first, integer
from . import periods
from .chain import Chain
from .join import (
    add_keys,
    forget_rows,
    is_matched,
    join_matches,
    key_set_sizes,
    keyed_rows_from,
    note_retired_keys,
    rejoin_around,
)
from .progress import (
    POINTS,
    UploadProgress,
    appended_rows,
    check_next_chunk,
    committed_set_sizes,
    list_progress,
    read_progress,
    record_total_rows,
    save_progress,
    sealed,
    total_rows,
)
from .refresh import RefreshPeriods
from .tables import discard_staged, forget_table_rows

#: A hook run when a period retires users (see Relay): (cursor, collaboration, member, rows relation, parameters).
RetireHook = Callable[[duckdb.DuckDBPyConnection, str, str, str, list[object]], None]

#: Points per chunk of an offer (1 MiB of points).
OFFER_CHUNK = 32768
#: Most points, and row slots, one uploaded chunk may carry (2 MiB of points).
MAX_CHUNK_POINTS = 65536
#: Largest first row of a chunk: its last row slot must still be a non-negative int64 row id.
MAX_FIRST_ROW = 2**63 - 1 - MAX_CHUNK_POINTS


class MatchStage(enum.Enum):
    """Where a collaboration's match stands."""

    UPLOADING = "uploading"
    DOUBLE_BLINDING = "double_blinding"
    MATCHED = "matched"


@dataclass(frozen=True)
class MatchStatus:
    """The match from one member's side: its uploads, the peer's offer, and both set sizes."""

    stage: MatchStage
    #: The period this status describes: 0 the match, p >= 1 a refresh.
    period: int
    uploads: tuple[UploadProgress, ...]
    peer_points_ready: bool
    peer_point_chunks: int
    own_set_size: int
    peer_set_size: int
    #: The caller's hop in each chain it takes part in after its upload (another member's; with three or more, its
    #: own final hop too).
    offers: tuple[ChainOffer, ...] = ()
    #: Every member's set size (0 until its points are committed).
    set_sizes: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ChainOffer:
    """The caller's place in one chain: its hop, and whether the points are ready for it or done."""

    origin: str
    hop: int
    hops: int
    ready: bool
    chunks: int
    done: bool

    @property
    def last_hop(self) -> bool:
        """The caller's hop is the final one: it answers with tags."""
        return self.hop == self.hops


def _validate_points(points: bytes, what: str) -> None:
    try:
        codes = check_points(points)
    except InvalidPointError as exc:
        raise InvalidArgumentError(f"{what}: {exc}") from None
    bad = np.flatnonzero(codes)
    if len(bad):
        raise InvalidArgumentError(
            f"{what}, point {bad[0]}: {POINT_PROBLEMS[codes[bad[0]]]} ({len(bad)} invalid points in this chunk)"
        )


def _chunk_rows(first_row: int, present: bytes, n: int, what: str) -> np.ndarray:
    """The row numbers of a chunk's `n` points from its first row and presence bitmap (protocol v1, step 5.1)."""
    if not 0 <= first_row <= MAX_FIRST_ROW:
        raise InvalidArgumentError(f"{what}: first_row must be between 0 and {MAX_FIRST_ROW}, got {first_row}")
    if not present:
        return np.arange(first_row, first_row + n, dtype=np.int64)
    if len(present) > MAX_CHUNK_POINTS // 8:
        raise InvalidArgumentError(f"{what}: `present` covers more than {MAX_CHUNK_POINTS} row slots")
    slots = np.flatnonzero(np.unpackbits(np.frombuffer(present, dtype=np.uint8), bitorder="little"))
    if len(slots) != n:
        raise InvalidArgumentError(f"{what}: `present` marks {len(slots)} rows for {n} points")
    return first_row + slots.astype(np.int64)


def _validate_hop_points(points: bytes, what: str) -> None:
    """A hop's points, each valid by protocol step 4's checks (a zero point, which never matches, included as invalid).

    Every point the server offers was validated, and blinding a valid point gives a valid point: an honest member
    has nothing to reject, so an invalid or zero point here can only drop one of the origin's rows unseen.
    """
    try:
        _validate_points(points, what)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{exc}; every point offered to you was valid, so its blinding is too") from None


def _joined(collaboration: Collaboration) -> tuple[str, ...]:
    """The members as the join takes them: the hub first, then every other member (each joined with the hub)."""
    return (collaboration.policy.hub, *collaboration.policy.spokes)


def _point_array(points: bytes) -> pa.FixedSizeBinaryArray:
    n = len(points) // POINT_SIZE
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(POINT_SIZE), n, [None, pa.py_buffer(points)])


def ensure_open(cur: duckdb.DuckDBPyConnection, collaboration_id: str, period: int) -> None:
    """FAILED_PRECONDITION unless uploads of `period` are still taken.

    They are while the match (period 0) has not completed, and for the open refresh period.
    """
    if period < 0:
        raise InvalidArgumentError(f"period must be 0 (the match) or a refresh period >= 1, got {period}")
    if period == 0:
        if is_matched(cur, collaboration_id):
            raise FailedPreconditionError(
                f"the match of collaborations/{collaboration_id} is complete; a second match is not possible "
                "(a refresh adds new data: OpenRefresh, when the policy allows refreshes)"
            )
        return
    periods.require_open(cur, collaboration_id, period)


class Relay(RefreshPeriods):
    """Relay state of all collaborations, each in its collaboration's file."""

    def __init__(
        self, store: Store, audit: AuditLog, offer_chunk: int = OFFER_CHUNK, on_retire: Sequence[RetireHook] = ()
    ) -> None:
        self._store = store
        self._audit = audit
        self.offer_chunk = offer_chunk
        #: Called in the transaction that completes a period, for data the relay does not own (released audiences):
        #: (cursor, collaboration, member, relation of its rows, parameters).
        self._on_retire = tuple(on_retire)

    def upload_points(
        self,
        collaboration: Collaboration,
        member: str,
        chunk_index: int,
        id_type: IdentifierType,
        first_row: int,
        present: bytes,
        points: bytes,
        last: bool,
        total_rows: int = 0,
        period: int = 0,
    ) -> UploadProgress:
        """Store one chunk of a member's singly blinded points; the last chunk commits and shuffles them.

        `total_rows` (read on the last chunk only) is the number of rows the member numbers; every point's row must
        be below it, and so must every `row_id` of the member's tables later. In a refresh period only new rows
        carry points: rows numbered from the member's previous `total_rows` on.
        """
        what = f"chunk {chunk_index}"
        try:
            if id_type.value not in collaboration.policy.identifiers:
                raise InvalidArgumentError(
                    f"{what}: the policy lets the join use {', '.join(collaboration.policy.identifiers)}, "
                    f"not {id_type.value}"
                )
            if len(points) % POINT_SIZE:
                raise InvalidArgumentError(f"{what}: points must be 32 bytes each")
            n = len(points) // POINT_SIZE
            if n > MAX_CHUNK_POINTS:
                raise InvalidArgumentError(f"{what}: {n} points; at most {MAX_CHUNK_POINTS} per chunk")
            row_ids = _chunk_rows(first_row, present, n, what)
            _validate_points(points, what)
        except InvalidArgumentError as exc:
            self._audit.record(collaboration.id, member, "refused", {"attempted": "upload.points", "reason": str(exc)})
            raise
        with self._store.of(collaboration.id).transaction() as cur:
            check_approved_revision(cur, collaboration)
            ensure_open(cur, collaboration.id, period)
            if period:
                self._check_new_rows(cur, collaboration, member, row_ids, what)
            progress = read_progress(cur, collaboration.id, member, POINTS, period)
            if check_next_chunk(progress, chunk_index, "your point upload"):
                cur.execute("DELETE FROM staged_points WHERE collab = ? AND member = ?", [collaboration.id, member])
                progress = None
            if progress is None:
                self._audit.append(cur, collaboration.id, member, "upload.start", {"kind": POINTS, "period": period})
            seq0 = progress.rows if progress else 0
            chunk = pa.table(
                {
                    "seq": pa.array(np.arange(seq0, seq0 + n, dtype=np.int64)),
                    "id_type": pa.array(np.full(n, ID_TYPE_CODES[id_type], dtype=np.int8)),
                    "row_id": pa.array(row_ids),
                    "point": _point_array(points),
                }
            )
            cur.register("chunk", chunk)
            cur.execute(
                "INSERT INTO staged_points SELECT ?, ?, seq, id_type, row_id, point FROM chunk",
                [collaboration.id, member],
            )
            cur.unregister("chunk")
            new = UploadProgress(POINTS, chunk_index + 1, seq0 + n, False, period)
            set_size = None
            if last:
                set_size = self._commit_points(cur, collaboration.id, member, seq0 + n, total_rows, period)
                new = UploadProgress(POINTS, chunk_index + 1, seq0 + n, True, period)
                self._audit.append(
                    cur,
                    collaboration.id,
                    member,
                    "upload.commit",
                    {"kind": POINTS, "points": seq0 + n, "rows": set_size, "period": period},
                )
            save_progress(cur, collaboration.id, member, new, set_size)
        return new

    @staticmethod
    def _check_new_rows(
        cur: duckdb.DuckDBPyConnection, collaboration: Collaboration, member: str, row_ids: np.ndarray, what: str
    ) -> None:
        """In a refresh, points may only name new rows, and only when the policy lets the member add users."""
        spec = collaboration.policy.refresh
        if len(row_ids) and (spec is None or not spec.allows(member, "users")):
            raise InvalidArgumentError(
                f"{what}: the policy's refresh does not list {member}.users, so you may not add users "
                "(send an empty point upload: one chunk without points, marked `last`)"
            )
        before = total_rows(cur, collaboration.id, member) or 0
        if len(row_ids) and int(row_ids.min()) < before:
            raise InvalidArgumentError(
                f"{what}: a refresh carries points of new users only, numbered from {before} (your earlier "
                f"uploads numbered rows 0 .. {before - 1}); got row {int(row_ids.min())}"
            )

    def _commit_points(
        self,
        cur: duckdb.DuckDBPyConnection,
        collaboration_id: str,
        member: str,
        total: int,
        numbered: int,
        period: int = 0,
    ) -> int:
        top = first(
            cur.execute(
                "SELECT max(row_id) FROM staged_points WHERE collab = ? AND member = ?", [collaboration_id, member]
            )
        )
        highest = -1 if not top or top[0] is None else int(top[0])
        total_rows_before = total_rows(cur, collaboration_id, member, period - 1)
        before = total_rows_before or 0
        if numbered < 0 or highest >= numbered or numbered < before:
            raise InvalidArgumentError(
                f"the last chunk's total_rows is {numbered}, but a point names row {highest}"
                + (f" and your earlier uploads numbered {before} rows" if total_rows_before else "")
                + ": set total_rows to the number of rows you numbered (every user, with or without an identifier, "
                "the earlier ones included) on the chunk marked `last`"
            )
        record_total_rows(cur, collaboration_id, member, period, numbered)
        dupes = first(
            cur.execute(
                "SELECT count(*) - count(DISTINCT (id_type, row_id)) FROM staged_points"
                " WHERE collab = ? AND member = ?",
                [collaboration_id, member],
            )
        )
        if dupes and dupes[0]:
            raise InvalidArgumentError(
                f"{dupes[0]} rows carry the same identifier type twice; each row has at most one identifier per "
                "type. Start the upload again at chunk 0."
            )
        # pos_of_seq[seq] is a uniformly random permutation (argsort of independent uniform 64-bit keys).
        keys = np.frombuffer(os.urandom(8 * total), dtype=np.uint64)
        perm = pd.DataFrame({"seq": np.arange(total, dtype=np.int64), "pos": np.argsort(keys).astype(np.int64)})
        cur.register("perm", perm)
        cur.execute(
            "INSERT INTO offers SELECT s.collab, s.member, p.pos, s.id_type, s.row_id, s.point"
            " FROM staged_points s JOIN perm p USING (seq) WHERE s.collab = ? AND s.member = ? ORDER BY p.pos",
            [collaboration_id, member],
        )
        cur.unregister("perm")
        cur.execute("DELETE FROM staged_points WHERE collab = ? AND member = ?", [collaboration_id, member])
        return integer(
            cur.execute(
                "SELECT count(DISTINCT row_id) FROM offers WHERE collab = ? AND member = ?", [collaboration_id, member]
            ),
            0,
        )

    def _offer_size(self, cur: duckdb.DuckDBPyConnection, collaboration_id: str, owner: str, period: int) -> int | None:
        progress = read_progress(cur, collaboration_id, owner, POINTS, period)
        return progress.rows if progress and progress.committed else None

    def _origin(self, collaboration: Collaboration, member: str, origin: str) -> str:
        """The member whose points `member` names: `origin`, or (two members, `origin` empty) the peer.

        With three or more members a member names itself for the final hop of its own chain.
        """
        names = collaboration.policy.chain
        if not origin:
            if len(names) != 2:
                raise InvalidArgumentError(
                    "name the origin, the member whose points these are (GetMatchStatus lists them in `offers`)"
                )
            return collaboration.policy.peer_of(member)
        allowed = Chain(names).origins(member)
        if origin not in allowed:
            raise InvalidArgumentError(
                f"origin {origin[:64]!r} is not one of the chains you take part in ({', '.join(allowed)})"
            )
        return origin

    def _ready_size(
        self, cur: duckdb.DuckDBPyConnection, collaboration: Collaboration, origin: str, hop: int, period: int
    ) -> int | None:
        """The size of `origin`'s offer once it stands at `hop` (its points and every earlier hop committed)."""
        size = self._offer_size(cur, collaboration.id, origin, period)
        if size is None:
            return None
        chain = Chain(collaboration.policy.chain)
        for h in range(1, hop):
            done = read_progress(cur, collaboration.id, chain.at(origin, h), chain.kind(origin), period)
            if not (done and done.committed):
                return None
        return size

    def _require_ready(
        self, cur: duckdb.DuckDBPyConnection, collaboration: Collaboration, member: str, origin: str, period: int
    ) -> int:
        size = self._ready_size(
            cur, collaboration, origin, Chain(collaboration.policy.chain).hop(origin, member), period
        )
        if size is not None:
            return size
        if self._offer_size(cur, collaboration.id, origin, period) is None:
            raise FailedPreconditionError(f"{origin} has not finished uploading its points yet; retry later")
        raise FailedPreconditionError(
            f"{origin}'s points are still with the members before you in its chain; retry later"
        )

    def _chain_done(
        self, cur: duckdb.DuckDBPyConnection, collaboration: Collaboration, member: str, origin: str, period: int
    ) -> bool:
        """Whether `member` committed its hop in `origin`'s chain."""
        done = read_progress(cur, collaboration.id, member, Chain(collaboration.policy.chain).kind(origin), period)
        return bool(done and done.committed)

    def offer_chunks(self, collaboration: Collaboration, member: str, period: int = 0, origin: str = "") -> int:
        """The chunks of `origin`'s offer at `member`'s hop; FailedPrecondition until the earlier hops are done."""
        origin = self._origin(collaboration, member, origin)
        return self._chunks(
            self._require_ready(self._store.of(collaboration.id).cursor(), collaboration, member, origin, period)
        )

    def _chunks(self, size: int) -> int:
        """Chunks in an offer of `size` points; an empty offer still has one (empty) chunk to answer."""
        return max(1, -(-size // self.offer_chunk))

    def fetch_peer_chunk(
        self, collaboration: Collaboration, member: str, chunk_index: int, period: int = 0, origin: str = ""
    ) -> bytes:
        """Chunk `chunk_index` of `origin`'s shuffled points at `member`'s hop, 32 bytes each."""
        origin = self._origin(collaboration, member, origin)
        total = self.offer_chunks(collaboration, member, period, origin)
        if not 0 <= chunk_index < total:
            raise InvalidArgumentError(f"chunk {chunk_index} is out of range; the offer has {total} chunks")
        start = chunk_index * self.offer_chunk
        cur = self._store.of(collaboration.id).cursor()
        if self._chain_done(cur, collaboration, member, origin, period):
            raise FailedPreconditionError(
                "you have already double-blinded the peer's points"
                if len(collaboration.members) == 2
                else f"you have already blinded {origin}'s points"
            )
        table = cur.sql(
            "SELECT point FROM offers WHERE collab = ? AND member = ? AND pos >= ? AND pos < ? ORDER BY pos",
            params=[collaboration.id, origin, start, start + self.offer_chunk],
        ).to_arrow_table()
        return b"".join(table.column("point").to_pylist())

    def _double_done(self, cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, period: int) -> bool:
        return sealed(cur, collaboration_id, member, period)

    def submit_double_blinded(
        self,
        collaboration: Collaboration,
        member: str,
        chunk_index: int,
        tags: bytes,
        last: bool,
        period: int = 0,
        origin: str = "",
        points: bytes = b"",
    ) -> UploadProgress:
        """Store the caller's blinding of one offered chunk of `origin`'s points; the last chunk passes them on.

        At the final hop (the peer's with two members, the origin's own with more) the caller sends 8-byte tags,
        opaque 64-bit values with nothing to validate but their number, and the final chunk un-shuffles them onto
        the origin's rows. At a hop before it (three or more members) the caller sends 32-byte points, each a valid
        point (the server validated every point it offered, so an honest member rejects none: a zero point, which
        would silently drop the origin's row, is refused), and the final chunk shuffles them again for the next.
        """
        origin = self._origin(collaboration, member, origin)
        chain = Chain(collaboration.policy.chain)
        hop = chain.hop(origin, member)
        last_hop = hop == chain.final
        kind = chain.kind(origin)
        what = (
            f"double-blinded chunk {chunk_index}"
            if len(chain.members) == 2
            else f"chunk {chunk_index} of {origin}'s points"
        )
        if last_hop:
            if points:
                raise InvalidArgumentError(f"{what}: yours is the final hop of {origin}'s chain: send `tags`")
            if len(tags) % TAG_SIZE:
                raise InvalidArgumentError(f"{what}: tags must be {TAG_SIZE} bytes each")
            n = len(tags) // TAG_SIZE
        else:
            if tags:
                raise InvalidArgumentError(
                    f"{what}: yours is hop {hop} of {chain.final} in {origin}'s chain: send `blinded_points`, not tags"
                )
            if len(points) % POINT_SIZE:
                raise InvalidArgumentError(f"{what}: blinded_points must be {POINT_SIZE} bytes each")
            n = len(points) // POINT_SIZE
            _validate_hop_points(points, what)
        with self._store.of(collaboration.id).transaction() as cur:
            check_approved_revision(cur, collaboration)
            ensure_open(cur, collaboration.id, period)
            size = self._require_ready(cur, collaboration, member, origin, period)
            if period and self._offer_size(cur, collaboration.id, member, period) is None:
                raise FailedPreconditionError(
                    "upload your own points first (UploadBlindedPoints up to the chunk marked `last`): "
                    "double-blinding the peer's points seals your side"
                )
            total = self._chunks(size)
            progress = read_progress(cur, collaboration.id, member, kind, period)
            if check_next_chunk(progress, chunk_index, "your double-blinded upload"):
                cur.execute("DELETE FROM double_points WHERE collab = ? AND owner = ?", [collaboration.id, origin])
                cur.execute("DELETE FROM chain_points WHERE collab = ? AND owner = ?", [collaboration.id, origin])
                progress = None
            if progress is None:
                self._audit.append(cur, collaboration.id, member, "upload.start", {"kind": kind, "period": period})
            if chunk_index >= total:
                raise InvalidArgumentError(f"{what} is out of range; the offer has {total} chunks")
            start = chunk_index * self.offer_chunk
            expected = min(self.offer_chunk, size - start)
            if n != expected:
                unit = "tags" if last_hop else "points"
                raise InvalidArgumentError(f"{what}: carries {n} {unit}; the offered chunk had {expected} points")
            final = chunk_index == total - 1
            if last != final:
                raise InvalidArgumentError(
                    f"{what}: `last` must be set on chunk {total - 1}, the final chunk of the offer, and only there"
                )
            positions = pa.array(np.arange(start, start + n, dtype=np.int64))
            if last_hop:
                chunk = pa.table({"pos": positions, "dkey": pa.array(np.frombuffer(tags, dtype="<i8"))})
                cur.register("chunk", chunk)
                cur.execute("INSERT INTO double_points SELECT ?, ?, pos, dkey FROM chunk", [collaboration.id, origin])
            else:
                chunk = pa.table({"pos": positions, "point": _point_array(points)})
                cur.register("chunk", chunk)
                cur.execute("INSERT INTO chain_points SELECT ?, ?, pos, point FROM chunk", [collaboration.id, origin])
            cur.unregister("chunk")
            new = UploadProgress(kind, chunk_index + 1, start + n, final, period)
            if final:
                if last_hop:
                    self._unshuffle(cur, collaboration.id, origin)
                else:
                    self._reshuffle(cur, collaboration.id, origin, size)
                self._audit.append(
                    cur,
                    collaboration.id,
                    member,
                    "upload.commit",
                    {"kind": kind, "points": size, "period": period},
                )
            save_progress(cur, collaboration.id, member, new)
            if final and last_hop:
                self._join_if_ready(cur, collaboration, member, period)
        return new

    def _reshuffle(self, cur: duckdb.DuckDBPyConnection, collaboration_id: str, origin: str, size: int) -> None:
        """Replace `origin`'s offered points by the hop's blinding of them, in a new uniformly random order."""
        keys = np.frombuffer(os.urandom(8 * size), dtype=np.uint64)
        perm = pd.DataFrame({"pos": np.arange(size, dtype=np.int64), "new_pos": np.argsort(keys).astype(np.int64)})
        cur.register("perm", perm)
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE reshuffled AS"
            " SELECT o.collab, o.member, p.new_pos AS pos, o.id_type, o.row_id, c.point"
            " FROM offers o JOIN chain_points c ON c.collab = o.collab AND c.owner = o.member AND c.pos = o.pos"
            " JOIN perm p ON p.pos = o.pos WHERE o.collab = ? AND o.member = ?",
            [collaboration_id, origin],
        )
        cur.unregister("perm")
        cur.execute("DELETE FROM offers WHERE collab = ? AND member = ?", [collaboration_id, origin])
        cur.execute("INSERT INTO offers SELECT * FROM reshuffled ORDER BY pos")
        cur.execute("DROP TABLE reshuffled")
        cur.execute("DELETE FROM chain_points WHERE collab = ? AND owner = ?", [collaboration_id, origin])

    def _unshuffle(self, cur: duckdb.DuckDBPyConnection, collaboration_id: str, owner: str) -> None:
        add_keys(
            cur,
            "SELECT o.collab, o.member, o.id_type, o.row_id, d.dkey"
            " FROM offers o JOIN double_points d ON o.collab = d.collab AND o.member = d.owner AND o.pos = d.pos"
            " WHERE o.collab = ? AND o.member = ? AND d.dkey <> 0",
            [collaboration_id, owner],
        )
        cur.execute("DELETE FROM offers WHERE collab = ? AND member = ?", [collaboration_id, owner])
        cur.execute("DELETE FROM double_points WHERE collab = ? AND owner = ?", [collaboration_id, owner])

    def _join_if_ready(
        self, cur: duckdb.DuckDBPyConnection, collaboration: Collaboration, member: str, period: int
    ) -> None:
        chain = Chain(collaboration.policy.chain)
        if not all(
            self._chain_done(cur, collaboration, chain.at(origin, chain.final), origin, period)
            for origin in chain.members
        ):
            return
        types = [IdentifierType(t) for t in collaboration.policy.identifiers]
        if not period:
            join_matches(cur, collaboration.id, _joined(collaboration), types)
            self._audit.append(cur, collaboration.id, member, "match.complete", {})
            return
        self._complete(cur, collaboration, member, period)

    def _complete(
        self,
        cur: duckdb.DuckDBPyConnection,
        collaboration: Collaboration,
        member: str,
        period: int,
        retire_only: bool = False,
    ) -> None:
        """Complete refresh `period`: delete its retired users everywhere, rejoin, record the sizes.

        A period of retirements alone rejoins only around the retired rows (`rejoin_around`: what a whole join would
        record, at the cost of what is retired); a refresh with new rows rejoins all keys.
        """
        members = tuple(sorted(m.name for m in collaboration.members))
        types = [IdentifierType(t) for t in collaboration.policy.identifiers]
        counts: dict[str, dict[str, int]] = {}
        keyed: dict[str, int] = {}  # per member, its retired rows that carried a key (retire_only)
        for m in members:
            retired, params = periods.retired_rows(collaboration.id, m, period)
            counts[m] = {
                # what was stored, never the difference of claimed totals (a claim of 2^62 rows changes nothing)
                "new_rows": keyed_rows_from(
                    cur, collaboration.id, m, total_rows(cur, collaboration.id, m, period - 1) or 0
                ),
                "retired": periods.retirement_count(cur, collaboration.id, m, period),
                **{f"rows.{t}": n for t, n in appended_rows(cur, collaboration.id, m, period).items()},
            }
            # The member's own retired users leave the audiences released to it. The peer's users stay in theirs even
            # when they were paired with a retired user: removing them would tell the peer, exactly and for no
            # epsilon, which of its users was paired with someone who left.
            for hook in self._on_retire:
                hook(cur, collaboration.id, m, retired, params)
            if retire_only:
                keyed[m] = note_retired_keys(cur, collaboration.id, m, retired, params, types)
            forget_rows(cur, collaboration.id, m, retired, params)
            forget_table_rows(cur, collaboration.id, m, retired, params)
            if not retire_only:  # a retirement alone leaves uploads in progress (the match's, say) alone
                discard_staged(cur, collaboration, m)
        if retire_only:  # only retired rows changed: recompute around them, not the whole join (issue 29)
            rejoin_around(cur, collaboration.id, _joined(collaboration), types, period)
        else:  # new rows can break or make pairs anywhere: the rule is global
            join_matches(cur, collaboration.id, _joined(collaboration), types, period)
        # A period of retirements alone takes the retired keyed rows off the last recorded sizes (counting all keys
        # again cost more than the rejoin around them); the first period after the match counts them.
        before = periods.period_set_sizes(cur, collaboration.id, period - 1) if retire_only else None
        if before is not None and set(before) >= set(members):
            sizes = {m: before[m] - keyed.get(m, 0) for m in members}
        else:
            sizes = key_set_sizes(cur, collaboration.id)
            sizes = {m: sizes.get(m, 0) for m in members}
        completed = {"period": period, "members": counts, "set_sizes": sizes}
        completed |= {"retire_only": True} if retire_only else {}
        entry = self._audit.append(cur, collaboration.id, member, "refresh.complete", completed)
        periods.record_complete(cur, collaboration.id, period, sizes, entry.sequence, renews_budget(completed))

    def _forget_points(self, cur: duckdb.DuckDBPyConnection, collaboration_id: str) -> None:
        """Delete every point and tag the relay holds for the collaboration's open period (staged, offered, doubled)."""
        cur.execute("DELETE FROM staged_points WHERE collab = ?", [collaboration_id])
        cur.execute("DELETE FROM offers WHERE collab = ?", [collaboration_id])
        cur.execute("DELETE FROM double_points WHERE collab = ?", [collaboration_id])

    def status(self, collaboration: Collaboration, member: str, period: int | None = None) -> MatchStatus:
        """The match (period 0) or a refresh period as `member` may see it; by default the current period."""
        cur = self._store.of(collaboration.id).cursor()
        chain = Chain(collaboration.policy.chain)
        current = periods.current_period(cur, collaboration.id)
        period = current if period is None else period
        if not 0 <= period <= current:
            raise InvalidArgumentError(
                f"period {period} has not started (or was cancelled); the current period is {current}"
            )
        done = periods.latest_complete(cur, collaboration.id, is_matched(cur, collaboration.id))
        if done is not None and done >= period:
            stage = MatchStage.MATCHED
        elif all(self._offer_size(cur, collaboration.id, m.name, period) is not None for m in collaboration.members):
            stage = MatchStage.DOUBLE_BLINDING
        else:
            stage = MatchStage.UPLOADING
        offers = []
        for origin in chain.origins(member):
            hop = chain.hop(origin, member)
            size = self._ready_size(cur, collaboration, origin, hop, period)
            finished = self._chain_done(cur, collaboration, member, origin, period)
            offers.append(
                ChainOffer(
                    origin, hop, chain.final, size is not None, self._chunks(size) if size is not None else 0, finished
                )
            )
        sizes = (periods.period_set_sizes(cur, collaboration.id, period) if period else None) or committed_set_sizes(
            cur, collaboration.id, POINTS
        )
        peer = offers[0] if len(offers) == 1 else None
        return MatchStatus(
            stage=stage,
            period=period,
            uploads=tuple(list_progress(cur, collaboration.id, member, period)),
            peer_points_ready=peer is not None and peer.ready,
            peer_point_chunks=peer.chunks if peer is not None else 0,
            own_set_size=int(sizes.get(member) or 0),
            peer_set_size=int(sizes.get(peer.origin) or 0) if peer is not None else 0,
            offers=tuple(offers),
            set_sizes={m: int(sizes.get(m) or 0) for m in chain.members},
        )
