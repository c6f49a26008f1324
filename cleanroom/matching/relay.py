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
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from cleanroom_client.blinding import TAG_SIZE
from cleanroom_client.curve import POINT_PROBLEMS, InvalidPointError, check_points
from cleanroom_client.identity import IdentifierType
from cleanroom_client.protocol import ID_TYPE_CODES, POINT_SIZE

from ..audit import AuditLog
from ..collaborations import Collaboration, check_approved_revision
from ..errors import FailedPreconditionError, InvalidArgumentError
from ..storage import Database
from ..storage.database import first
from .join import add_keys, is_matched, join_matches
from .progress import (
    UploadProgress,
    check_next_chunk,
    committed_set_sizes,
    list_progress,
    read_progress,
    save_progress,
)

#: Points per chunk of an offer (1 MiB of points).
OFFER_CHUNK = 32768
#: Most points, and row slots, one uploaded chunk may carry (2 MiB of points).
MAX_CHUNK_POINTS = 65536
#: Largest first row of a chunk: its last row slot must still be a non-negative int64 row id.
MAX_FIRST_ROW = 2**63 - 1 - MAX_CHUNK_POINTS
POINTS = "points"
DOUBLE_BLINDED = "double_blinded"


class MatchStage(enum.Enum):
    """Where a collaboration's match stands."""

    UPLOADING = "uploading"
    DOUBLE_BLINDING = "double_blinding"
    MATCHED = "matched"


@dataclass(frozen=True)
class MatchStatus:
    """The match from one member's side: its uploads, the peer's offer, and both set sizes."""

    stage: MatchStage
    uploads: tuple[UploadProgress, ...]
    peer_points_ready: bool
    peer_point_chunks: int
    own_set_size: int
    peer_set_size: int


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


def _point_array(points: bytes) -> pa.FixedSizeBinaryArray:
    n = len(points) // POINT_SIZE
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(POINT_SIZE), n, [None, pa.py_buffer(points)])


def _ensure_not_matched(cur: duckdb.DuckDBPyConnection, collaboration_id: str) -> None:
    if is_matched(cur, collaboration_id):
        raise FailedPreconditionError(
            f"the match of collaborations/{collaboration_id} is complete; a second match is not possible "
            "(start a new collaboration to match new data)"
        )


def total_rows(cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str) -> int | None:
    """The n of `member`'s committed point upload (its rows are 0 .. n-1); None before that upload is committed."""
    row = first(
        cur.execute("SELECT total_rows FROM row_counts WHERE collab = ? AND member = ?", [collaboration_id, member])
    )
    return int(row[0]) if row else None


class Relay:
    """Relay state of all collaborations, in the server's database."""

    def __init__(self, db: Database, audit: AuditLog, offer_chunk: int = OFFER_CHUNK) -> None:
        self._db = db
        self._audit = audit
        self.offer_chunk = offer_chunk

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
    ) -> UploadProgress:
        """Store one chunk of a member's singly blinded points; the last chunk commits and shuffles them.

        `total_rows` (read on the last chunk only) is the number of rows the member numbers; every point's row must
        be below it, and so must every `row_id` of the member's tables later.
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
        with self._db.transaction() as cur:
            check_approved_revision(cur, collaboration)
            _ensure_not_matched(cur, collaboration.id)
            progress = read_progress(cur, collaboration.id, member, POINTS)
            if check_next_chunk(progress, chunk_index, "your point upload"):
                cur.execute("DELETE FROM staged_points WHERE collab = ? AND member = ?", [collaboration.id, member])
                progress = None
            if progress is None:
                self._audit.append(cur, collaboration.id, member, "upload.start", {"kind": POINTS})
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
            new = UploadProgress(POINTS, chunk_index + 1, seq0 + n, False)
            set_size = None
            if last:
                set_size = self._commit_points(cur, collaboration.id, member, seq0 + n, total_rows)
                new = UploadProgress(POINTS, chunk_index + 1, seq0 + n, True)
                self._audit.append(
                    cur,
                    collaboration.id,
                    member,
                    "upload.commit",
                    {"kind": POINTS, "points": seq0 + n, "rows": set_size},
                )
            save_progress(cur, collaboration.id, member, new, set_size)
        return new

    def _commit_points(
        self, cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, total: int, total_rows: int
    ) -> int:
        top = first(
            cur.execute(
                "SELECT max(row_id) FROM staged_points WHERE collab = ? AND member = ?", [collaboration_id, member]
            )
        )
        highest = -1 if not top or top[0] is None else int(top[0])
        if total_rows < 0 or highest >= total_rows:
            raise InvalidArgumentError(
                f"the last chunk's total_rows is {total_rows}, but a point names row {highest}: set total_rows to the "
                "number of rows you numbered (every user, with or without an identifier) on the chunk marked `last`"
            )
        cur.execute("DELETE FROM row_counts WHERE collab = ? AND member = ?", [collaboration_id, member])
        cur.execute("INSERT INTO row_counts VALUES (?, ?, ?)", [collaboration_id, member, total_rows])
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
        row = first(
            cur.execute(
                "SELECT count(DISTINCT row_id) FROM offers WHERE collab = ? AND member = ?", [collaboration_id, member]
            )
        )
        return int(row[0]) if row else 0

    def _offer_size(self, cur: duckdb.DuckDBPyConnection, collaboration_id: str, owner: str) -> int | None:
        progress = read_progress(cur, collaboration_id, owner, POINTS)
        return progress.rows if progress and progress.committed else None

    def offer_chunks(self, collaboration: Collaboration, member: str) -> int:
        """The number of chunks in the peer's offer; FailedPrecondition while the peer is still uploading."""
        peer = collaboration.policy.peer_of(member)
        size = self._offer_size(self._db.cursor(), collaboration.id, peer)
        if size is None:
            raise FailedPreconditionError(f"{peer} has not finished uploading its points yet; retry later")
        return self._chunks(size)

    def _chunks(self, size: int) -> int:
        """Chunks in an offer of `size` points; an empty offer still has one (empty) chunk to answer."""
        return max(1, -(-size // self.offer_chunk))

    def fetch_peer_chunk(self, collaboration: Collaboration, member: str, chunk_index: int) -> bytes:
        """Chunk `chunk_index` of the peer's shuffled points, 32 bytes each."""
        total = self.offer_chunks(collaboration, member)
        if not 0 <= chunk_index < total:
            raise InvalidArgumentError(f"chunk {chunk_index} is out of range; the offer has {total} chunks")
        start = chunk_index * self.offer_chunk
        cur = self._db.cursor()
        if self._double_done(cur, collaboration.id, member):
            raise FailedPreconditionError("you have already double-blinded the peer's points")
        table = cur.sql(
            "SELECT point FROM offers WHERE collab = ? AND member = ? AND pos >= ? AND pos < ? ORDER BY pos",
            params=[collaboration.id, collaboration.policy.peer_of(member), start, start + self.offer_chunk],
        ).to_arrow_table()
        return b"".join(table.column("point").to_pylist())

    def _double_done(self, cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str) -> bool:
        progress = read_progress(cur, collaboration_id, member, DOUBLE_BLINDED)
        return bool(progress and progress.committed)

    def submit_double_blinded(
        self, collaboration: Collaboration, member: str, chunk_index: int, tags: bytes, last: bool
    ) -> UploadProgress:
        """Store the tags of the caller's blinding of one offered chunk; the last chunk un-shuffles them.

        Tags are opaque 64-bit values: there is nothing to validate but their number.
        """
        peer = collaboration.policy.peer_of(member)
        what = f"double-blinded chunk {chunk_index}"
        if len(tags) % TAG_SIZE:
            raise InvalidArgumentError(f"{what}: tags must be {TAG_SIZE} bytes each")
        with self._db.transaction() as cur:
            check_approved_revision(cur, collaboration)
            _ensure_not_matched(cur, collaboration.id)
            size = self._offer_size(cur, collaboration.id, peer)
            if size is None:
                raise FailedPreconditionError(f"{peer} has not finished uploading its points yet; retry later")
            total = self._chunks(size)
            progress = read_progress(cur, collaboration.id, member, DOUBLE_BLINDED)
            if check_next_chunk(progress, chunk_index, "your double-blinded upload"):
                cur.execute("DELETE FROM double_points WHERE collab = ? AND owner = ?", [collaboration.id, peer])
                progress = None
            if progress is None:
                self._audit.append(cur, collaboration.id, member, "upload.start", {"kind": DOUBLE_BLINDED})
            if chunk_index >= total:
                raise InvalidArgumentError(f"{what} is out of range; the offer has {total} chunks")
            start = chunk_index * self.offer_chunk
            expected = min(self.offer_chunk, size - start)
            n = len(tags) // TAG_SIZE
            if n != expected:
                raise InvalidArgumentError(f"{what}: carries {n} tags; the offered chunk had {expected} points")
            final = chunk_index == total - 1
            if last != final:
                raise InvalidArgumentError(
                    f"{what}: `last` must be set on chunk {total - 1}, the final chunk of the offer, and only there"
                )
            chunk = pa.table(
                {
                    "pos": pa.array(np.arange(start, start + n, dtype=np.int64)),
                    "dkey": pa.array(np.frombuffer(tags, dtype="<i8")),
                }
            )
            cur.register("chunk", chunk)
            cur.execute("INSERT INTO double_points SELECT ?, ?, pos, dkey FROM chunk", [collaboration.id, peer])
            cur.unregister("chunk")
            new = UploadProgress(DOUBLE_BLINDED, chunk_index + 1, start + n, final)
            if final:
                self._unshuffle(cur, collaboration.id, peer)
                self._audit.append(
                    cur, collaboration.id, member, "upload.commit", {"kind": DOUBLE_BLINDED, "points": size}
                )
            save_progress(cur, collaboration.id, member, new)
            if final:
                self._join_if_ready(cur, collaboration, member)
        return new

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

    def _join_if_ready(self, cur: duckdb.DuckDBPyConnection, collaboration: Collaboration, member: str) -> None:
        if all(self._double_done(cur, collaboration.id, m.name) for m in collaboration.members):
            members = tuple(sorted(m.name for m in collaboration.members))
            types = [IdentifierType(t) for t in collaboration.policy.identifiers]
            join_matches(cur, collaboration.id, members, types)  # type: ignore[arg-type]
            self._audit.append(cur, collaboration.id, member, "match.complete", {})

    def status(self, collaboration: Collaboration, member: str) -> MatchStatus:
        """The match as `member` may see it."""
        cur = self._db.cursor()
        peer = collaboration.policy.peer_of(member)
        if is_matched(cur, collaboration.id):
            stage = MatchStage.MATCHED
        elif all(self._offer_size(cur, collaboration.id, m.name) is not None for m in collaboration.members):
            stage = MatchStage.DOUBLE_BLINDING
        else:
            stage = MatchStage.UPLOADING
        peer_size = self._offer_size(cur, collaboration.id, peer)
        sizes = committed_set_sizes(cur, collaboration.id, POINTS)
        return MatchStatus(
            stage=stage,
            uploads=tuple(list_progress(cur, collaboration.id, member)),
            peer_points_ready=peer_size is not None,
            peer_point_chunks=self._chunks(peer_size) if peer_size is not None else 0,
            own_set_size=int(sizes.get(member) or 0),
            peer_set_size=int(sizes.get(peer) or 0),
        )
