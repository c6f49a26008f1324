"""Uploads of the members' pseudonymous tables: users attributes and event tables, as Arrow IPC chunks.

The owner of the `data_tables` registry (others read it through `uploaded_tables`).

Guarantees: a table is stored only if the policy declares it for the uploading member, only after that member's
point upload is committed, and only with columns the policy declares (plus `row_id`, the user's row number in the
match, which must be one of the rows 0 .. n-1 the point upload numbered); dimension values lie in their declared
domain (or are null) and are stored as text; measures are numeric; the time column is a date or timestamp. Chunks
are staged in a table of their own and the final chunk renames it into place in the same transaction, so a half
upload is never visible.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from cleanroom_client.policy import TableSpec

from ..audit import AuditLog
from ..collaborations import Collaboration, check_approved_revision
from ..errors import FailedPreconditionError, InternalError, InvalidArgumentError
from ..storage import Store
from ..storage.database import first, quote_ident
from . import periods
from .ipc import IpcLayoutError, declared_size
from .progress import (
    POINTS,
    TABLE_KIND,
    UploadProgress,
    check_next_chunk,
    read_progress,
    save_progress,
    sealed,
    total_rows,
)

USERS_TABLE = "users"
#: The hidden column of every stored table: the period its row arrived in (0 the match, p a refresh). Queries of
#: period p read the rows with `_period <= p`; members never see it.
PERIOD_COLUMN = "_period"
#: Time columns are stored as timestamps (microseconds, UTC, no time zone) within [start, end): anything outside
#: is refused at upload, so no comparison or date arithmetic over them can fail at query time.
TIME_WINDOW = (dt.datetime(1900, 1, 1), dt.datetime(2200, 1, 1))
_UNIT_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def uploaded_tables(cur: duckdb.DuckDBPyConnection, collaboration_id: str) -> dict[tuple[str, str], str]:
    """The physical DuckDB table of each (member, table) uploaded in a collaboration."""
    rows = cur.execute("SELECT member, name, physical FROM data_tables WHERE collab = ?", [collaboration_id]).fetchall()
    return {(str(member), str(name)): str(physical) for member, name, physical in rows}


def register_table(
    cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, table: str, source: str, rows: int
) -> None:
    """Store `member.table` from a registered relation `source` without the upload checks.

    For loading known data at benchmark sizes (`cleanroom.devtools.synthetic.load_direct`); uploads go through
    `TableUploads`, which validates every chunk against the policy.
    """
    physical = physical_name(collaboration_id, member, table)
    cur.execute(f"CREATE TABLE {quote_ident(physical)} AS SELECT *, 0 AS {PERIOD_COLUMN} FROM {source}")
    cur.execute("INSERT INTO data_tables VALUES (?, ?, ?, ?, ?)", [collaboration_id, member, table, physical, rows])


def physical_name(collaboration_id: str, member: str, table: str, staged: bool = False) -> str:
    """The DuckDB table holding `member.table` of a collaboration.

    One-to-one: the name is a SHA-256 over the three parts, each length-prefixed, so two different (collaboration,
    member, table) triples never share a physical table (no separator in a name can make them collide), and the
    name is always a safe identifier whatever the parts hold.
    """
    digest = hashlib.sha256()
    for part in (collaboration_id, member, table):
        raw = part.encode("utf-8")
        digest.update(len(raw).to_bytes(8, "big") + raw)
    return f"{'stage' if staged else 'data'}_{digest.hexdigest()}"


#: Most bytes one chunk may hold once decompressed (members may send zstd- or lz4-compressed IPC).
MAX_CHUNK_DECODED = 64 * 1024 * 1024
#: Most rows any batch of a chunk may declare: every row carries an 8-byte `row_id`.
MAX_CHUNK_ROWS = MAX_CHUNK_DECODED // 8


def _decode(data: bytes, what: str) -> pa.Table:
    """The chunk as a table; refused from its metadata alone, before any allocation, when it declares too much."""
    try:
        declared = declared_size(data)
    except IpcLayoutError as exc:
        raise InvalidArgumentError(f"{what}: not an Arrow IPC stream ({str(exc)[:200]})") from None
    if declared.decoded_bytes > MAX_CHUNK_DECODED or declared.max_rows > MAX_CHUNK_ROWS:
        raise InvalidArgumentError(
            f"{what}: more than {MAX_CHUNK_DECODED // 2**20} MiB or {MAX_CHUNK_ROWS} rows once decompressed; "
            f"send smaller chunks (it declares {declared.decoded_bytes} bytes, up to {declared.max_rows} rows)"
        )
    try:
        with pa.ipc.open_stream(data) as reader:
            batches, size = [], 0
            for batch in reader:
                size += batch.nbytes
                if size > MAX_CHUNK_DECODED:  # a second line of defence: the declaration was checked above
                    raise InvalidArgumentError(
                        f"{what}: more than {MAX_CHUNK_DECODED // 2**20} MiB once decompressed; send smaller chunks"
                    )
                batches.append(batch)
            return pa.Table.from_batches(batches, schema=reader.schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise InvalidArgumentError(f"{what}: not an Arrow IPC stream ({str(exc)[:200]})") from None


def _time(column: pa.ChunkedArray, name: str, what: str) -> pa.ChunkedArray:
    """A date or timestamp column as timestamp[us], after checking every value lies in TIME_WINDOW.

    The check reads the stored integers in the column's own unit, before any conversion, so no value can wrap.
    """
    kind = column.type
    if pa.types.is_date32(kind):
        raw, per_second = column.cast(pa.int32()), 1 / 86_400
    elif pa.types.is_date64(kind):
        raw, per_second = column.cast(pa.int64()), 1_000
    elif pa.types.is_timestamp(kind):
        raw, per_second = column.cast(pa.int64()), _UNIT_PER_SECOND[kind.unit]
    else:
        raise InvalidArgumentError(f"{what}: time column `{name}` must be a date or timestamp, got {kind}")
    epoch = dt.datetime(1970, 1, 1)
    lo, hi = ((t - epoch).total_seconds() * per_second for t in TIME_WINDOW)
    bounds = pc.min_max(raw).as_py()
    if bounds["min"] is not None and not (lo <= bounds["min"] and bounds["max"] < hi):
        raise InvalidArgumentError(
            f"{what}: time column `{name}` has values outside {TIME_WINDOW[0]:%Y-%m-%d} .. {TIME_WINDOW[1]:%Y-%m-%d}"
        )
    return column.cast(pa.timestamp("us"), safe=False)


def _check(table: pa.Table, spec: TableSpec, what: str) -> pa.Table:
    """Validate a chunk against the policy; returns it with dimensions cast to text."""
    columns = set(table.column_names)
    if len(columns) != len(table.column_names):
        repeated = sorted(c for c, n in Counter(table.column_names).items() if n > 1)
        raise InvalidArgumentError(f"{what}: column names must be unique; repeated: {repeated[:5]}")
    if "row_id" not in columns:
        raise InvalidArgumentError(f"{what}: the table needs an int64 column `row_id` (the user's surrogate id)")
    undeclared = sorted(columns - {"row_id"} - set(spec.columns))
    if undeclared:
        raise InvalidArgumentError(
            f"{what}: columns {undeclared} are not declared for {spec.qualified_name} in the policy "
            f"(declared: {list(spec.columns) or 'none'})"
        )
    if table.column("row_id").type != pa.int64() or table.column("row_id").null_count:
        raise InvalidArgumentError(f"{what}: `row_id` must be int64 without nulls")
    out = table
    for col, domain in spec.dimensions.items():
        if col not in columns:
            continue
        try:
            text = pc.cast(table.column(col), pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise InvalidArgumentError(f"{what}: dimension `{col}` cannot be read as text") from None
        outside = pc.filter(text, pc.and_(pc.is_valid(text), pc.invert(pc.is_in(text, value_set=pa.array(domain)))))
        if len(outside):
            examples = sorted(set(outside.to_pylist()))[:5]
            raise InvalidArgumentError(
                f"{what}: dimension `{col}` has {len(outside)} values outside its declared domain, e.g. {examples}; "
                f"allowed: {list(domain)} (or empty)"
            )
        out = out.set_column(out.column_names.index(col), col, text)
    for col in spec.measures:
        if col in columns and not (
            pa.types.is_integer(table.column(col).type)
            or pa.types.is_floating(table.column(col).type)
            or pa.types.is_decimal(table.column(col).type)
        ):
            raise InvalidArgumentError(f"{what}: measure `{col}` must be numeric, got {table.column(col).type}")
        if col in columns and pa.types.is_floating(table.column(col).type):
            finite = pc.is_finite(table.column(col))
            if pc.sum(pc.invert(pc.fill_null(finite, True))).as_py():
                raise InvalidArgumentError(f"{what}: measure `{col}` has NaN or infinite values")
    if spec.table != USERS_TABLE:  # an event's every declared column is part of the event: none may be missing
        for col in spec.columns:
            if col in columns and table.column(col).null_count:
                raise InvalidArgumentError(
                    f"{what}: column `{col}` has {table.column(col).null_count} empty values; every row of "
                    f"{spec.qualified_name} needs all its declared columns (only users tables may leave them empty)"
                )
    if spec.time and spec.time in columns:
        out = out.set_column(
            out.column_names.index(spec.time), spec.time, _time(table.column(spec.time), spec.time, what)
        )
    return out


def _check_rows(table: pa.Table, rows: int | None, what: str, first: int = 0) -> None:
    """Every `row_id` must name a row of the member's committed point uploads (first .. rows-1)."""
    if rows is None:
        raise FailedPreconditionError(
            f"{what}: upload your blinded points first (UploadBlindedPoints up to the chunk marked `last`); "
            "a table's row_id values must be row numbers of that upload"
        )
    if not table.num_rows:
        return
    low, high = pc.min_max(table.column("row_id")).values()
    if low.as_py() < first or high.as_py() >= rows:
        bad = low.as_py() if low.as_py() < first else high.as_py()
        if first:
            raise InvalidArgumentError(
                f"{what}: row_id {bad} is not a new user of this refresh: the users rows a refresh adds are the new "
                f"rows {first} .. {rows - 1} of its point upload"
            )
        raise InvalidArgumentError(
            f"{what}: row_id {bad} was never offered points: your point upload numbered rows 0 .. {rows - 1} "
            "(its total_rows); use the same row numbers in your tables"
        )


class TableUploads:
    """Chunked, resumable uploads of the members' tables."""

    def __init__(self, store: Store, audit: AuditLog) -> None:
        self._store = store
        self._audit = audit

    def upload_chunk(
        self,
        collaboration: Collaboration,
        member: str,
        table: str,
        chunk_index: int,
        arrow_ipc: bytes,
        last: bool,
        period: int = 0,
    ) -> UploadProgress:
        """Validate and stage one chunk; the last one makes the whole table (or the rows it appends) visible at once.

        In a refresh period (>= 1) the rows are appended to the table, which the policy's refresh must list; a users
        table takes only the period's new rows, any other table rows of current users (not retired).
        """
        spec = collaboration.policy.table(member, table)
        if spec is None:
            declared = sorted(t.table for t in collaboration.policy.tables.values() if t.member == member)
            raise InvalidArgumentError(
                f"table {table!r} is not declared for {member} in the policy (declared: {declared or 'none'})"
            )
        what = f"{member}.{table} chunk {chunk_index}"
        refresh = collaboration.policy.refresh
        if period and (refresh is None or not refresh.allows(member, table)):
            listed = sorted(refresh.tables) if refresh else []
            raise InvalidArgumentError(
                f"{what}: the policy's refresh does not list {member}.{table}, so no rows may be added to it "
                f"(listed: {listed or 'none'})"
            )
        try:
            data = _check(_decode(arrow_ipc, what), spec, what)
        except InvalidArgumentError as exc:
            self._audit.record(
                collaboration.id, member, "refused", {"attempted": "upload.table", "table": table, "reason": str(exc)}
            )
            raise
        kind = f"{TABLE_KIND}{table}"
        stage = quote_ident(physical_name(collaboration.id, member, table, staged=True))
        with self._store.of(collaboration.id).transaction() as cur:
            check_approved_revision(cur, collaboration)
            if period:
                self._check_refresh(cur, collaboration.id, member, table, period, data, what)
            else:
                if periods.refresh_started(cur, collaboration.id):
                    raise FailedPreconditionError(
                        f"{what}: the match's uploads closed when the first refresh opened; send this table's rows in "
                        "a refresh (period >= 1), which the policy's refresh must list"
                    )
                _check_rows(data, total_rows(cur, collaboration.id, member, 0), what)
                _check_not_retired(cur, collaboration.id, member, data, what)
            progress = read_progress(cur, collaboration.id, member, kind, period)
            restart = check_next_chunk(progress, chunk_index, f"the upload of {member}.{table}")
            if restart or progress is None:
                progress = None
                cur.execute(f"DROP TABLE IF EXISTS {stage}")
                self._audit.append(cur, collaboration.id, member, "upload.start", {"kind": kind, "period": period})
            cur.register("chunk", data)
            if progress is None:
                cur.execute(f"CREATE TABLE {stage} AS SELECT * FROM chunk")
            else:
                existing = [r[0] for r in cur.execute(f"DESCRIBE {stage}").fetchall()]
                if sorted(existing) != sorted(data.column_names):
                    raise InvalidArgumentError(
                        f"{what}: columns {sorted(data.column_names)} differ from earlier chunks' {sorted(existing)}"
                    )
                cur.execute(f"INSERT INTO {stage} BY NAME SELECT * FROM chunk")
            cur.unregister("chunk")
            rows = (progress.rows if progress else 0) + data.num_rows
            new = UploadProgress(kind, chunk_index + 1, rows, last, period)
            if last:
                if period:
                    self._append(cur, collaboration.id, member, table, rows, period)
                else:
                    self._commit(cur, collaboration.id, member, table, rows)
                self._audit.append(
                    cur, collaboration.id, member, "upload.commit", {"kind": kind, "rows": rows, "period": period}
                )
            save_progress(cur, collaboration.id, member, new)
        return new

    @staticmethod
    def _check_refresh(
        cur: duckdb.DuckDBPyConnection,
        collaboration_id: str,
        member: str,
        table: str,
        period: int,
        data: pa.Table,
        what: str,
    ) -> None:
        """A refresh's rows: the period is open, the member's side not sealed, rows name current users."""
        periods.require_open(cur, collaboration_id, period)
        if sealed(cur, collaboration_id, member, period):
            raise FailedPreconditionError(
                f"{what}: your side of refresh period {period} is sealed (you double-blinded the peer's points); "
                "add these rows in the next refresh"
            )
        now = total_rows(cur, collaboration_id, member, period)
        if read_progress(cur, collaboration_id, member, POINTS, period) is None or now is None:
            raise FailedPreconditionError(
                f"{what}: upload your points of refresh period {period} first (an empty upload if you add no users): "
                "its total_rows numbers the rows tables may name"
            )
        before = total_rows(cur, collaboration_id, member, period - 1) or 0
        _check_rows(data, now, what, first=before if table == USERS_TABLE else 0)
        if table != USERS_TABLE:
            _check_not_retired(cur, collaboration_id, member, data, what)

    def _append(
        self, cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, table: str, rows: int, period: int
    ) -> None:
        """Append the staged rows to the stored table (or store it, if the match had none) with their period."""
        stage = quote_ident(physical_name(collaboration_id, member, table, staged=True))
        final = physical_name(collaboration_id, member, table)
        staged_columns = sorted(r[0] for r in cur.execute(f"DESCRIBE {stage}").fetchall())
        stored = uploaded_tables(cur, collaboration_id).get((member, table))
        if table == USERS_TABLE:
            _check_one_row_per_user(cur, physical_name(collaboration_id, member, table, staged=True), member, stored)
        if stored is None:
            cur.execute(f"CREATE TABLE {quote_ident(final)} AS SELECT *, {int(period)} AS {PERIOD_COLUMN} FROM {stage}")
            cur.execute(
                "INSERT INTO data_tables VALUES (?, ?, ?, ?, ?)", [collaboration_id, member, table, final, rows]
            )
        else:
            columns = sorted(r[0] for r in cur.execute(f"DESCRIBE {quote_ident(stored)}").fetchall())
            if staged_columns != [c for c in columns if c != PERIOD_COLUMN]:
                raise InvalidArgumentError(
                    f"{member}.{table}: a refresh appends rows with the columns the table has "
                    f"({[c for c in columns if c != PERIOD_COLUMN]}), got {staged_columns}. Start again at chunk 0."
                )
            if PERIOD_COLUMN not in columns:  # stored before periods existed: all of it is the match's
                cur.execute(f"ALTER TABLE {quote_ident(stored)} ADD COLUMN {PERIOD_COLUMN} BIGINT DEFAULT 0")
            cur.execute(
                f"INSERT INTO {quote_ident(stored)} BY NAME SELECT *, {int(period)} AS {PERIOD_COLUMN} FROM {stage}"
            )
            cur.execute(
                "UPDATE data_tables SET rows = rows + ? WHERE collab = ? AND member = ? AND name = ?",
                [rows, collaboration_id, member, table],
            )
        cur.execute(f"DROP TABLE {stage}")

    def _commit(
        self, cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, table: str, rows: int
    ) -> None:
        stage = physical_name(collaboration_id, member, table, staged=True)
        final = physical_name(collaboration_id, member, table)
        if table == USERS_TABLE:
            _check_one_row_per_user(cur, stage, member)
        # Replace only what this member registered for this table of this collaboration, never by name alone.
        owners = cur.execute("SELECT collab, member, name FROM data_tables WHERE physical = ?", [final]).fetchall()
        if any(tuple(o) != (collaboration_id, member, table) for o in owners):
            raise InternalError(f"physical table {final} is registered to another upload; refusing to replace it")
        for (old,) in cur.execute(
            "SELECT physical FROM data_tables WHERE collab = ? AND member = ? AND name = ?",
            [collaboration_id, member, table],
        ).fetchall():
            cur.execute(f"DROP TABLE IF EXISTS {quote_ident(old)}")
        cur.execute(f"ALTER TABLE {quote_ident(stage)} ADD COLUMN {PERIOD_COLUMN} BIGINT DEFAULT 0")
        cur.execute(f"ALTER TABLE {quote_ident(stage)} RENAME TO {quote_ident(final)}")
        cur.execute(
            "DELETE FROM data_tables WHERE collab = ? AND member = ? AND name = ?", [collaboration_id, member, table]
        )
        cur.execute("INSERT INTO data_tables VALUES (?, ?, ?, ?, ?)", [collaboration_id, member, table, final, rows])


def _check_not_retired(
    cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, data: pa.Table, what: str
) -> None:
    """A retired user's data is deleted: no upload may bring rows of one back."""
    if not data.num_rows:
        return
    retired, params = periods.retired_rows(collaboration_id, member)
    cur.register("chunk_ids", data.select(["row_id"]))
    row = first(cur.execute(f"SELECT min(row_id) FROM chunk_ids WHERE row_id IN {retired}", params))
    cur.unregister("chunk_ids")
    if row and row[0] is not None:
        raise InvalidArgumentError(
            f"{what}: row_id {row[0]} is a user you retired; a retired user's data is deleted and takes no new rows"
        )


def _check_one_row_per_user(cur: duckdb.DuckDBPyConnection, stage: str, member: str, stored: str | None = None) -> None:
    """A users table holds one row per user: no `row_id` twice in the upload, nor one the stored table has.

    Every query joins the users table on `row_id`: a user on k rows would count k times, past the sensitivity the
    noise is calibrated for.
    """
    dupes = first(cur.execute(f"SELECT count(*) - count(DISTINCT row_id) FROM {quote_ident(stage)}"))
    if dupes and dupes[0]:
        raise InvalidArgumentError(
            f"{member}.users: {dupes[0]} duplicate row_id values; each user has one surrogate id. "
            "Start the upload again at chunk 0."
        )
    if stored is not None:
        again = first(
            cur.execute(
                f"SELECT min(row_id) FROM {quote_ident(stage)} "
                f"WHERE row_id IN (SELECT row_id FROM {quote_ident(stored)})"
            )
        )
        if again and again[0] is not None:
            raise InvalidArgumentError(
                f"{member}.users: row_id {again[0]} already has its users row; a refresh adds rows of new users only"
            )


def _delete_rows(
    cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, where: str, params: list[object]
) -> None:
    """Delete the rows matching `where` from every table the member stored, and keep their row counts true."""
    for name, physical in cur.execute(
        "SELECT name, physical FROM data_tables WHERE collab = ? AND member = ?", [collaboration_id, member]
    ).fetchall():
        cur.execute(f"DELETE FROM {quote_ident(physical)} WHERE {where}", params)
        count = first(cur.execute(f"SELECT count(*) FROM {quote_ident(physical)}"))
        cur.execute(
            "UPDATE data_tables SET rows = ? WHERE collab = ? AND member = ? AND name = ?",
            [int(count[0]) if count else 0, collaboration_id, member, name],
        )


def forget_table_rows(
    cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, rows: str, params: list[object]
) -> None:
    """Delete the rows of `member`'s users in the relation `rows` (`row_id`) from every table the member stored."""
    _delete_rows(cur, collaboration_id, member, f"row_id IN {rows}", params)


def forget_period_rows(cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, period: int) -> None:
    """Delete the rows the member appended in a cancelled `period` from every table it stored."""
    _delete_rows(cur, collaboration_id, member, f"{PERIOD_COLUMN} = ?", [period])


def discard_staged(cur: duckdb.DuckDBPyConnection, collaboration: Collaboration, member: str) -> None:
    """Drop the member's uploads of its declared tables that were started and never committed.

    A period that completes or is cancelled closes them: their rows, retired users' among them, are never kept.
    """
    for spec in collaboration.policy.tables.values():
        if spec.member == member:
            staged = physical_name(collaboration.id, member, spec.table, staged=True)
            cur.execute(f"DROP TABLE IF EXISTS {quote_ident(staged)}")
