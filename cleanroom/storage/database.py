"""The server's single DuckDB file: schema, connections and the write lock.

Everything durable lives in `<data_dir>/cleanroom.duckdb`: collaborations, approvals, upload progress, relay state,
doubly blinded keys, the join and the members' uploaded tables. Only the server's user may read any of it: the
directory is kept at 0700, the file and its write-ahead log at 0600. A write that spans several statements runs in one
transaction (`Database.transaction`), so a crash (even `kill -9`) leaves either all of it or none of it: a
half-finished upload is never visible as finished.

DuckDB allows one writer at a time; writers take `write_lock` so concurrent RPCs queue instead of conflicting.
Readers use their own cursor and see the last committed state.

Memory: `StorageLimits` caps what DuckDB may hold in memory (`memory_limit`) and names the directory it spills to
when a join, sort or aggregate needs more (`temp_directory`); with both set, the 100M x 100M join runs within the
cap (benchmarks/bench_join.py). DuckDB's own defaults are 80% of RAM and `<database file>.tmp`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

DB_FILE = "cleanroom.duckdb"
#: The data directory: only the server's user may list or enter it (it holds tags, tables, the log, token hashes).
DATA_DIR_MODE = 0o700
#: The database file and its write-ahead log: only the server's user may read them.
DB_FILE_MODE = 0o600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collaborations (
    id VARCHAR PRIMARY KEY,
    display_name VARCHAR NOT NULL,
    create_time TIMESTAMP NOT NULL,  -- UTC
    policy_yaml VARCHAR NOT NULL,
    policy_revision BIGINT NOT NULL,
    policy_etag VARCHAR NOT NULL,
    proposer VARCHAR NOT NULL
);
-- One row per member of a collaboration; approved_etag is the policy revision it approved, if any.
CREATE TABLE IF NOT EXISTS members (
    collab VARCHAR NOT NULL,
    member VARCHAR NOT NULL,
    approved_etag VARCHAR
);
-- Progress of each resumable upload. kind: 'points', 'double_blinded' or 'table:<name>'.
CREATE TABLE IF NOT EXISTS uploads (
    collab VARCHAR NOT NULL,
    member VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    next_chunk BIGINT NOT NULL,
    rows BIGINT NOT NULL,
    committed BOOLEAN NOT NULL,
    set_size BIGINT,
    period BIGINT NOT NULL DEFAULT 0  -- 0: the match; p >= 1: refresh p
);
-- The n of each member's committed point upload: its rows are numbered 0 .. n-1, and so are its tables' row_id.
CREATE TABLE IF NOT EXISTS row_counts (
    collab VARCHAR NOT NULL,
    member VARCHAR NOT NULL,
    total_rows BIGINT NOT NULL,
    period BIGINT NOT NULL DEFAULT 0
);
-- Singly blinded points while they are being uploaded (seq: position in upload order).
CREATE TABLE IF NOT EXISTS staged_points (
    collab VARCHAR NOT NULL,
    member VARCHAR NOT NULL,
    seq BIGINT NOT NULL,
    id_type TINYINT NOT NULL,
    row_id BIGINT NOT NULL,
    point BLOB NOT NULL
);
-- A member's committed points in the server's shuffled order (pos), offered to the peer.
CREATE TABLE IF NOT EXISTS offers (
    collab VARCHAR NOT NULL,
    member VARCHAR NOT NULL,
    pos BIGINT NOT NULL,
    id_type TINYINT NOT NULL,
    row_id BIGINT NOT NULL,
    point BLOB NOT NULL
);
-- The peer's blinding applied to an offer, by position, until the offer is un-shuffled.
CREATE TABLE IF NOT EXISTS double_points (
    collab VARCHAR NOT NULL,
    owner VARCHAR NOT NULL,
    pos BIGINT NOT NULL,
    dkey BIGINT NOT NULL
);
-- Three or more members: a hop's blinding of an offer before the last hop, by position, until it is re-shuffled.
CREATE TABLE IF NOT EXISTS chain_points (
    collab VARCHAR NOT NULL,
    owner VARCHAR NOT NULL,
    pos BIGINT NOT NULL,
    point BLOB NOT NULL
);
-- Doubly blinded join keys on the owner's rows.
CREATE TABLE IF NOT EXISTS match_keys (
    collab VARCHAR NOT NULL,
    member VARCHAR NOT NULL,
    id_type TINYINT NOT NULL,
    row_id BIGINT NOT NULL,
    dkey BIGINT NOT NULL
);
-- The one-to-one join of the hub (member_a) with each other member (member_b); id_type: the identifier that decided it.
CREATE TABLE IF NOT EXISTS matches (
    collab VARCHAR NOT NULL,
    member_a VARCHAR NOT NULL,
    row_a BIGINT NOT NULL,
    member_b VARCHAR NOT NULL,
    row_b BIGINT NOT NULL,
    id_type TINYINT NOT NULL,
    period_from BIGINT NOT NULL DEFAULT 0,  -- the pair holds in periods period_from .. period_to - 1
    period_to BIGINT  -- NULL: still holds
);
-- Refresh periods of living collaborations (period 0, the match, has no row).
CREATE TABLE IF NOT EXISTS periods (
    collab VARCHAR NOT NULL,
    period BIGINT NOT NULL,
    open_time TIMESTAMP NOT NULL,  -- UTC
    opener VARCHAR NOT NULL,
    complete_time TIMESTAMP,
    audit_sequence BIGINT,  -- the audit entry that completed the period (a per-period budget counts from it)
    renews BOOLEAN DEFAULT true,  -- whether the period changed data, and so renews a per-period budget
    retire_only BOOLEAN DEFAULT false  -- opened and completed at once by RetireUsers outside a period
);
-- Users a member retires: staged while the period is open, then deleted everywhere when it completes.
CREATE TABLE IF NOT EXISTS retirements (
    collab VARCHAR NOT NULL,
    member VARCHAR NOT NULL,
    period BIGINT NOT NULL,
    row_id BIGINT NOT NULL
);
-- Each member's set size (rows with a doubly blinded key) once a refresh period completes.
CREATE TABLE IF NOT EXISTS period_sizes (
    collab VARCHAR NOT NULL,
    member VARCHAR NOT NULL,
    period BIGINT NOT NULL,
    set_size BIGINT NOT NULL
);
-- The members' uploaded tables: one physical table each, named by `data_table_name`.
CREATE TABLE IF NOT EXISTS data_tables (
    collab VARCHAR NOT NULL,
    member VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    physical VARCHAR NOT NULL,
    rows BIGINT NOT NULL
);
-- Who may call: token_hash is SHA-256 of the bearer token; revoked is set once revoked.
CREATE TABLE IF NOT EXISTS principals (
    name VARCHAR NOT NULL,
    role VARCHAR NOT NULL,
    token_hash VARCHAR NOT NULL,
    created TIMESTAMP NOT NULL,
    revoked TIMESTAMP
);
CREATE TABLE IF NOT EXISTS auditors (
    auditor VARCHAR NOT NULL,
    collab VARCHAR NOT NULL
);
-- The audit chains; collab '' is the server's own chain. time is kept as the exact ISO text that was hashed.
CREATE TABLE IF NOT EXISTS audit_log (
    collab VARCHAR NOT NULL,
    seq BIGINT NOT NULL,
    time VARCHAR NOT NULL,
    principal VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    params_json VARCHAR NOT NULL,
    epsilon DOUBLE NOT NULL,
    response_sha256 VARCHAR NOT NULL,
    prev_hash VARCHAR NOT NULL,
    hash VARCHAR NOT NULL,
    signature BLOB NOT NULL,
    delta DOUBLE NOT NULL DEFAULT 0
);
-- Budget held by queries in flight, per charged member (spent budget is the sum over the audit log).
CREATE TABLE IF NOT EXISTS budget_reservations (
    id VARCHAR NOT NULL,
    collab VARCHAR NOT NULL,
    member VARCHAR NOT NULL,
    epsilon DOUBLE NOT NULL,
    delta DOUBLE NOT NULL,
    query VARCHAR NOT NULL,
    parameters_json VARCHAR NOT NULL
);
-- Audiences released to a member (lookalike, activation): the recipient's own surrogate ids.
CREATE TABLE IF NOT EXISTS audiences (
    collab VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    recipient VARCHAR NOT NULL,
    requester VARCHAR NOT NULL,
    size BIGINT NOT NULL,
    create_time TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS audience_members (
    collab VARCHAR NOT NULL,
    audience VARCHAR NOT NULL,
    row_id BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS match_results (
    collab VARCHAR PRIMARY KEY,
    matched_time TIMESTAMP NOT NULL
);
"""

#: Columns added after a table's first release, for data directories created before them.
_MIGRATIONS = """
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS period BIGINT DEFAULT 0;
ALTER TABLE row_counts ADD COLUMN IF NOT EXISTS period BIGINT DEFAULT 0;
ALTER TABLE periods ADD COLUMN IF NOT EXISTS renews BOOLEAN DEFAULT true;
ALTER TABLE periods ADD COLUMN IF NOT EXISTS retire_only BOOLEAN DEFAULT false;
ALTER TABLE matches ADD COLUMN IF NOT EXISTS period_from BIGINT DEFAULT 0;
ALTER TABLE matches ADD COLUMN IF NOT EXISTS period_to BIGINT;
"""


def in_memory() -> duckdb.DuckDBPyConnection:
    """A new in-memory database with the server's schema.

    For running the server's own SQL off the server (the conformance kit's expected join, the join vectors), so
    that no second statement of a rule is needed.
    """
    con = duckdb.connect()
    con.execute(_SCHEMA)
    con.execute(_MIGRATIONS)
    return con


def quote_ident(name: str) -> str:
    """A DuckDB identifier, quoted. Names reaching here were validated, quoting is a second line of defence."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class StorageLimits:
    """DuckDB's memory cap and spill directory; None keeps DuckDB's default.

    `memory_limit` is DuckDB's syntax ("4GB", "512MiB"): the buffer manager's cap, which joins, sorts and
    aggregates respect by spilling to `temp_directory`. The process uses somewhat more (Python, gRPC, Arrow buffers
    in flight), so leave headroom below the machine's budget.
    """

    memory_limit: str | None = None
    temp_directory: Path | None = None
    threads: int | None = None

    def config(self) -> dict[str, str | bool | int | float | list[str]]:
        """The settings as DuckDB's connect-time configuration."""
        out: dict[str, str | bool | int | float | list[str]] = {}
        if self.memory_limit:
            out["memory_limit"] = self.memory_limit
        if self.temp_directory is not None:
            out["temp_directory"] = str(self.temp_directory)
        if self.threads:
            out["threads"] = str(self.threads)
        return out


class Database:
    """The DuckDB file of a data directory, created with its schema on first open."""

    def __init__(self, data_dir: Path, limits: StorageLimits | None = None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=DATA_DIR_MODE)
        os.chmod(data_dir, DATA_DIR_MODE)  # also an existing directory made before this rule
        self.path = data_dir / DB_FILE
        self.limits = limits or StorageLimits()
        if self.limits.temp_directory is not None:
            self.limits.temp_directory.mkdir(parents=True, exist_ok=True)
        self._con = duckdb.connect(str(self.path), config=self.limits.config())
        self.write_lock = threading.RLock()
        self._pending = threading.local()
        with self.transaction() as cur:
            cur.execute(_SCHEMA)
            cur.execute(_MIGRATIONS)

    def _restrict(self) -> None:
        """Keep the database file and its WAL (which DuckDB creates anew after each checkpoint) at 0600."""
        for path in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                if path.stat().st_mode & 0o777 != DB_FILE_MODE:
                    os.chmod(path, DB_FILE_MODE)
            except FileNotFoundError:
                pass

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for reading (and, under `write_lock`, writing) from the calling thread."""
        return self._con.cursor()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Hold the write lock and run the block in one transaction: all of it commits, or none of it.

        Callbacks registered with `after_commit` during the block run after the commit, still under the write lock
        (so in commit order); a rolled back transaction drops them.
        """
        with self.write_lock:
            cur = self._con.cursor()
            self._pending.callbacks = []
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
            except BaseException:
                self._pending.callbacks = None
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
                self._restrict()
                callbacks, self._pending.callbacks = self._pending.callbacks, None
                for callback in callbacks:
                    callback()
            finally:
                self._pending.callbacks = None
                cur.close()

    def after_commit(self, callback: Callable[[], object]) -> None:
        """Run `callback` once the current transaction (of this thread) commits."""
        callbacks = getattr(self._pending, "callbacks", None)
        if callbacks is None:
            raise RuntimeError("after_commit outside a transaction")
        callbacks.append(callback)

    def close(self) -> None:
        """Checkpoint and close the file."""
        with self.write_lock:
            self._con.execute("CHECKPOINT")
            self._con.close()


def first(result: duckdb.DuckDBPyConnection) -> tuple[Any, ...] | None:
    """The first row of an executed query, consuming the whole result (DuckDB refuses new work until then)."""
    rows = result.fetchall()
    return rows[0] if rows else None
