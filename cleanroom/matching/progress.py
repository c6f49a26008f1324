"""Durable progress of resumable, chunked uploads: the owner of the `uploads` and `row_counts` tables.

Invariant: a chunk's rows and the advance of `next_chunk` are written in one transaction, so after any crash
`next_chunk` is exactly the number of chunks whose rows are stored, and the member resumes from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from cleanroom_client.protocol import DOUBLE_BLINDED, POINTS, TABLE_KIND

from ..errors import FailedPreconditionError
from ..storage.database import first, integer

#: What other modules use; the upload kinds are re-exported from the protocol module.
__all__ = [
    "DOUBLE_BLINDED",
    "POINTS",
    "TABLE_KIND",
    "UploadProgress",
    "any_upload",
    "appended_rows",
    "check_next_chunk",
    "committed_set_sizes",
    "forget_period",
    "list_progress",
    "read_progress",
    "record_total_rows",
    "save_progress",
    "sealed",
    "total_rows",
]


@dataclass(frozen=True)
class UploadProgress:
    """Where one upload stands."""

    kind: str
    next_chunk: int
    rows: int
    committed: bool
    #: 0: the match; p >= 1: refresh period p (each period's uploads are separate).
    period: int = 0


def read_progress(
    cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, kind: str, period: int = 0
) -> UploadProgress | None:
    """The progress row of one upload of `period`, if it started."""
    row = first(
        cur.execute(
            "SELECT next_chunk, rows, committed FROM uploads"
            " WHERE collab = ? AND member = ? AND kind = ? AND period = ?",
            [collaboration_id, member, kind, period],
        )
    )
    return UploadProgress(kind, row[0], row[1], row[2], period) if row else None


def list_progress(
    cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, period: int = 0
) -> list[UploadProgress]:
    """Every upload of a member in `period`, by kind."""
    rows = cur.execute(
        "SELECT kind, next_chunk, rows, committed, period FROM uploads"
        " WHERE collab = ? AND member = ? AND period = ? ORDER BY kind",
        [collaboration_id, member, period],
    ).fetchall()
    return [UploadProgress(*r) for r in rows]


def committed_set_sizes(cur: duckdb.DuckDBPyConnection, collaboration_id: str, kind: str = POINTS) -> dict[str, int]:
    """Each member's set size from its committed upload of `kind` in the match (the points: disclosed at the match)."""
    rows = cur.execute(
        "SELECT member, set_size FROM uploads WHERE collab = ? AND kind = ? AND committed AND period = 0",
        [collaboration_id, kind],
    ).fetchall()
    return {str(member): int(size or 0) for member, size in rows}


def any_upload(cur: duckdb.DuckDBPyConnection, collaboration_id: str) -> bool:
    """Whether any member has started any upload in the collaboration."""
    return first(cur.execute("SELECT 1 FROM uploads WHERE collab = ? LIMIT 1", [collaboration_id])) is not None


def check_next_chunk(progress: UploadProgress | None, chunk_index: int, what: str) -> bool:
    """Validate `chunk_index` against stored progress; True when it restarts the upload from chunk 0.

    Chunk 0 of an upload that is not committed starts it over (discarding staged chunks); any other chunk must be
    the next one expected.
    """
    if progress is not None and progress.committed:
        raise FailedPreconditionError(f"{what} is already complete; it cannot be uploaded twice")
    expected = progress.next_chunk if progress else 0
    if chunk_index == 0:
        return progress is not None
    if chunk_index != expected:
        raise FailedPreconditionError(
            f"{what}: chunk {chunk_index} is out of order; the server expects chunk {expected} next "
            "(ask GetMatchStatus and resume from there, or start again at chunk 0)"
        )
    return False


def save_progress(
    cur: duckdb.DuckDBPyConnection,
    collaboration_id: str,
    member: str,
    progress: UploadProgress,
    set_size: int | None = None,
) -> None:
    """Insert or replace the progress row (call inside the chunk's transaction)."""
    cur.execute(
        "DELETE FROM uploads WHERE collab = ? AND member = ? AND kind = ? AND period = ?",
        [collaboration_id, member, progress.kind, progress.period],
    )
    cur.execute(
        "INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            collaboration_id,
            member,
            progress.kind,
            progress.next_chunk,
            progress.rows,
            progress.committed,
            set_size,
            progress.period,
        ],
    )


def sealed(cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, period: int) -> bool:
    """Whether the member double-blinded the peer's points of `period`: its side of the period is then final."""
    progress = read_progress(cur, collaboration_id, member, DOUBLE_BLINDED, period)
    return bool(progress and progress.committed)


def appended_rows(cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, period: int) -> dict[str, int]:
    """Rows of each table the member committed in `period`, by table name."""
    rows = cur.execute(
        "SELECT kind, rows FROM uploads WHERE collab = ? AND member = ? AND period = ? AND committed"
        " AND starts_with(kind, ?) ORDER BY kind",
        [collaboration_id, member, period, TABLE_KIND],
    ).fetchall()
    return {str(k).removeprefix(TABLE_KIND): int(n) for k, n in rows}


def total_rows(
    cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, period: int | None = None
) -> int | None:
    """The n of `member`'s committed point uploads up to `period` (all periods when None): its rows are 0 .. n-1.

    None before its first point upload is committed.
    """
    return integer(
        cur.execute(
            "SELECT arg_max(total_rows, period) FROM row_counts WHERE collab = ? AND member = ?"
            " AND (? IS NULL OR period <= ?)",
            [collaboration_id, member, period, period],
        ),
        None,
    )


def record_total_rows(
    cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, period: int, rows: int
) -> None:
    """Store how many rows the member numbers once its point upload of `period` commits."""
    cur.execute(
        "DELETE FROM row_counts WHERE collab = ? AND member = ? AND period = ?", [collaboration_id, member, period]
    )
    cur.execute("INSERT INTO row_counts VALUES (?, ?, ?, ?)", [collaboration_id, member, rows, period])


def forget_period(cur: duckdb.DuckDBPyConnection, collaboration_id: str, period: int) -> None:
    """Forget every upload of a cancelled period and the row counts its point uploads set."""
    cur.execute("DELETE FROM uploads WHERE collab = ? AND period = ?", [collaboration_id, period])
    cur.execute("DELETE FROM row_counts WHERE collab = ? AND period = ?", [collaboration_id, period])
