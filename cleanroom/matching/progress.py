"""Durable progress of a resumable, chunked upload: the owner of the `uploads` table (others read it through here).

Invariant: a chunk's rows and the advance of `next_chunk` are written in one transaction, so after any crash
`next_chunk` is exactly the number of chunks whose rows are stored, and the member resumes from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from ..errors import FailedPreconditionError
from ..storage.database import first


@dataclass(frozen=True)
class UploadProgress:
    """Where one upload stands."""

    kind: str
    next_chunk: int
    rows: int
    committed: bool


def read_progress(
    cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, kind: str
) -> UploadProgress | None:
    """The progress row of one upload, if it started."""
    row = first(
        cur.execute(
            "SELECT next_chunk, rows, committed FROM uploads WHERE collab = ? AND member = ? AND kind = ?",
            [collaboration_id, member, kind],
        )
    )
    return UploadProgress(kind, row[0], row[1], row[2]) if row else None


def list_progress(cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str) -> list[UploadProgress]:
    """Every upload of a member, by kind."""
    rows = cur.execute(
        "SELECT kind, next_chunk, rows, committed FROM uploads WHERE collab = ? AND member = ? ORDER BY kind",
        [collaboration_id, member],
    ).fetchall()
    return [UploadProgress(*r) for r in rows]


def committed_set_sizes(cur: duckdb.DuckDBPyConnection, collaboration_id: str, kind: str = "points") -> dict[str, int]:
    """Each member's set size from its committed upload of `kind` (the points upload: disclosed at the match)."""
    rows = cur.execute(
        "SELECT member, set_size FROM uploads WHERE collab = ? AND kind = ? AND committed", [collaboration_id, kind]
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
        "DELETE FROM uploads WHERE collab = ? AND member = ? AND kind = ?", [collaboration_id, member, progress.kind]
    )
    cur.execute(
        "INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?)",
        [collaboration_id, member, progress.kind, progress.next_chunk, progress.rows, progress.committed, set_size],
    )
