"""One DuckDB file: its schema, its connections, its write lock, and stopping it on demand.

A data directory holds several of these files (`cleanroom.storage.store` says which and why): a small catalogue and
one file per collaboration. Each `Database` is one DuckDB instance with its own buffer pool, write-ahead log and
write lock, so nothing one file does (a long statement, a checkpoint, a held lock) waits on, or makes wait,
another file's work. Only the server's user may read any of it: files and write-ahead logs are kept at 0600. A
write that spans several statements runs in one transaction (`Database.transaction`), so a crash (even `kill -9`)
leaves either all of it or none of it: a half-finished upload is never visible as finished.

DuckDB allows one writer at a time per file; writers take the file's `write_lock` so concurrent RPCs on the same
file queue instead of conflicting. Readers use their own cursor and see the last committed state.

Stopping: every cursor a `Database` hands out is remembered (weakly), so `interrupt` can cancel whatever statement
is running on the file; after `interrupt` the file refuses new work (UnavailableError), the interrupted
transaction rolls back, and `close` checkpoints what was committed.

Parking: the same weak set says whether anyone uses the file right now (a cursor alive, or a transaction holding
the write lock). `park` closes the DuckDB instance of a file no one uses (its threads, memory and descriptors go)
and the next `cursor` opens it again, so a holder of the `Database` never sees the difference. What a file is lives
in the file: nothing of it (schema, committed rows, reservations) is kept per instance. `cleanroom.storage.store`
parks the least recently used files beyond its cap.

Memory: `StorageLimits` caps what DuckDB may hold in memory (`memory_limit`) and names the directory it spills to
when a join, sort or aggregate needs more (`temp_directory`); with both set, the 100M x 100M join runs within the
cap (benchmarks/bench_join.py). The cap is per open file (each is its own DuckDB instance). DuckDB's own
defaults are 80% of RAM and `<database file>.tmp`. An idle open file holds about 4 MB whatever the cap (measured:
it is the instance's own overhead), which is why the number of open files is capped too (`Store`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from ..errors import UnavailableError

#: What `integer` answers where a statement gives no number (0 for a count, None for "there is none").
D = TypeVar("D", int, None)

#: The data directory: only the server's user may list or enter it (it holds tags, tables, the log, token hashes).
DATA_DIR_MODE = 0o700
#: The database file and its write-ahead log: only the server's user may read them.
DB_FILE_MODE = 0o600

#: Both kinds of file keep auditor assignments (the catalogue as an index for listing) and an audit chain.
_AUDITORS = """
CREATE TABLE IF NOT EXISTS auditors (
    auditor VARCHAR NOT NULL,
    collab VARCHAR NOT NULL
);
"""
_AUDIT_LOG = """
-- An audit chain (collab: the collaboration, '' for the server's own chain); time is the exact ISO text hashed.
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
"""

#: The catalogue: who may call, which collaborations exist and who is in them, and the server's own audit chain.
CATALOG_SCHEMA = (
    """
-- Who may call: token_hash is SHA-256 of the bearer token; revoked is set once revoked.
CREATE TABLE IF NOT EXISTS principals (
    name VARCHAR NOT NULL,
    role VARCHAR NOT NULL,
    token_hash VARCHAR NOT NULL,
    created TIMESTAMP NOT NULL,
    revoked TIMESTAMP
);
-- The index of collaborations (their policy and approvals live in each collaboration's own file), kept in step
-- after each commit there; proposer and awaiting serve the limit on pending proposals.
CREATE TABLE IF NOT EXISTS collaboration_index (
    id VARCHAR PRIMARY KEY,
    create_time TIMESTAMP NOT NULL,  -- UTC
    proposer VARCHAR NOT NULL,
    awaiting BOOLEAN NOT NULL  -- some member has not approved the current revision
);
-- The members of each collaboration (fixed when it is created).
CREATE TABLE IF NOT EXISTS memberships (
    collab VARCHAR NOT NULL,
    member VARCHAR NOT NULL
);
-- The index of auditor assignments (the assignment itself, and its audit entry, is in the collaboration's file).
"""
    + _AUDITORS
    + _AUDIT_LOG
)

#: One collaboration's file: its policy and approvals, uploads, relay state, tags, the join, the members' tables,
#: the budget's reservations, released audiences and its audit chain (the budget's ledger).
COLLABORATION_SCHEMA = (
    """
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
"""
    + _AUDITORS
    + _AUDIT_LOG
    + """
CREATE TABLE IF NOT EXISTS match_results (
    collab VARCHAR PRIMARY KEY,
    matched_time TIMESTAMP NOT NULL
);
"""
)


def in_memory() -> duckdb.DuckDBPyConnection:
    """A new in-memory database with the server's schema.

    For running the server's own SQL off the server (the conformance kit's expected join, the join vectors), so
    that no second statement of a rule is needed.
    """
    con = duckdb.connect()
    con.execute(COLLABORATION_SCHEMA)
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
    #: DuckDB's threads per file (the calling thread included); None: the store's default for the kind of file.
    threads: int | None = None
    #: Collaboration files open at once; None: the store's default (`cleanroom.storage.store.MAX_OPEN_FILES`).
    max_open: int | None = None

    def __post_init__(self) -> None:
        for name in ("threads", "max_open"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or unset for the default), not {value}")

    def config(self) -> dict[str, str | bool | int | float | list[str]]:
        """The settings as DuckDB's connect-time configuration.

        DuckDB's asynchronous I/O pool (8 threads per instance by default) serves Parquet and CSV reads only, never
        its own database format, so the server's files start none.
        """
        out: dict[str, str | bool | int | float | list[str]] = {"async_threads": 0}
        if self.memory_limit:
            out["memory_limit"] = self.memory_limit
        if self.temp_directory is not None:
            out["temp_directory"] = str(self.temp_directory)
        if self.threads:
            out["threads"] = str(self.threads)
        return out


#: Told whether a `Database`'s DuckDB instance is now open (True) or closed (False); called under its state lock.
StateListener = Callable[["Database", bool], None]


class Database:
    """One DuckDB file, created with `schema` on first open (the directory must exist).

    `on_state` hears every opening and closing of the file's DuckDB instance, in order (see `StateListener`); it
    must be quick and take no lock of any `Database`.
    """

    def __init__(
        self, path: Path, schema: str, limits: StorageLimits | None = None, on_state: StateListener | None = None
    ) -> None:
        self.path = path
        self.limits = limits or StorageLimits()
        if self.limits.temp_directory is not None:
            self.limits.temp_directory.mkdir(parents=True, exist_ok=True, mode=DATA_DIR_MODE)
        self.write_lock = threading.RLock()
        self._pending = threading.local()
        self._cursors: weakref.WeakSet[duckdb.DuckDBPyConnection] = weakref.WeakSet()
        #: Guards the connection and the cursors: opening, parking, handing out a cursor, interrupting.
        self._state = threading.Lock()
        self._on_state = on_state
        self._stopping = False
        self._closed = False
        #: When a cursor was last handed out (time.monotonic()): the store parks the least recently used first.
        self.last_used = time.monotonic()
        self._con: duckdb.DuckDBPyConnection | None = None
        with self._state:
            self._connect()
        with self.transaction() as cur:
            cur.execute(schema)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """Open the DuckDB instance (under `_state`)."""
        con = self._con = duckdb.connect(str(self.path), config=self.limits.config())
        if self._on_state is not None:
            self._on_state(self, True)
        return con

    @property
    def is_open(self) -> bool:
        """Whether the file's DuckDB instance is open now (parked and closed files are not)."""
        return self._con is not None

    def _restrict(self) -> None:
        """Keep the database file and its WAL (which DuckDB creates anew after each checkpoint) at 0600."""
        for path in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                if path.stat().st_mode & 0o777 != DB_FILE_MODE:
                    os.chmod(path, DB_FILE_MODE)
            except FileNotFoundError:
                pass

    def _check_running(self) -> None:
        if self._stopping:
            raise UnavailableError("the server is stopping; send the request again once it is back")

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for reading (and, under `write_lock`, writing) from the calling thread; `interrupt` stops it.

        Opens the file again if it was parked. While the cursor is alive the file is in use and is not parked.
        """
        with self._state:
            self._check_running()
            con = self._con if self._con is not None else self._connect()
            cur = con.cursor()
            self._cursors.add(cur)
            self.last_used = time.monotonic()
        return cur

    def open(self) -> None:
        """Open the file's DuckDB instance if it was parked, and count it as used now."""
        with self._state:
            self._check_running()
            if self._con is None:
                self._connect()
            self.last_used = time.monotonic()

    def park(self) -> bool:
        """Close the DuckDB instance if no one uses the file now; True when it is closed (or was already).

        In use means a cursor it handed out is still alive, or a transaction holds the write lock: a running
        statement or an open transaction is therefore never closed under its user. Never waits: a file busy this
        instant is left open (False). What was committed is checkpointed first; the next `cursor` reopens the file.
        """
        if not self.write_lock.acquire(blocking=False):
            return False
        try:
            if not self._state.acquire(blocking=False):
                return False
            try:
                if self._con is None:
                    return True
                if len(self._cursors):
                    return False
                con, self._con = self._con, None
                with contextlib.suppress(duckdb.Error):
                    con.execute("CHECKPOINT")
                con.close()
                self._restrict()
                if self._on_state is not None:
                    self._on_state(self, False)
                return True
            finally:
                self._state.release()
        finally:
            self.write_lock.release()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Hold the write lock and run the block in one transaction: all of it commits, or none of it.

        Callbacks registered with `after_commit` during the block run after the commit, still under the write lock
        (so in commit order); a rolled back transaction drops them.
        """
        with self.write_lock:
            cur = self.cursor()
            self._pending.callbacks = []
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
            except BaseException:
                self._pending.callbacks = None
                with contextlib.suppress(duckdb.Error):  # an interrupted or closed connection rolled back already
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

    def interrupt(self) -> None:
        """Refuse new work and cancel every statement running on this file (their transactions roll back).

        DuckDB checks for an interrupt between vectors, so even a statement over 2^62 rows stops within
        milliseconds; a cancelled statement raises in its caller, whose transaction then rolls back.
        """
        with self._state:
            self._stopping = True
            cursors = [c for c in (self._con, *self._cursors) if c is not None]
        for cur in cursors:
            with contextlib.suppress(duckdb.Error):
                cur.interrupt()

    def close(self, timeout: float | None = None) -> bool:
        """Checkpoint and close the file, once no transaction holds it (waiting at most `timeout` seconds).

        Returns False, leaving the file open, when a transaction still held it after `timeout`: what was committed
        is in the write-ahead log and replays at the next open, so nothing committed is lost either way.
        """
        if not self.write_lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            with self._state:
                self._closed = self._stopping = True
                con, self._con = self._con, None
                if con is not None:
                    with contextlib.suppress(duckdb.Error):
                        con.execute("CHECKPOINT")
                    con.close()
                    if self._on_state is not None:
                        self._on_state(self, False)
            return True
        finally:
            self.write_lock.release()


def first(result: duckdb.DuckDBPyConnection) -> tuple[Any, ...] | None:
    """The first row of an executed query, consuming the whole result (DuckDB refuses new work until then)."""
    rows = result.fetchall()
    return rows[0] if rows else None


def integer(result: duckdb.DuckDBPyConnection, default: D) -> int | D:
    """The first column of an executed query's first row, as an int; `default` without a row or when it is NULL.

    The one reading of a count, a sequence or a period (0 or None where there is none), consuming the result as
    `first` does.
    """
    row = first(result)
    return default if row is None or row[0] is None else int(row[0])
