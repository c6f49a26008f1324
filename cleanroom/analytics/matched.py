"""What the engine may know before a query is charged (`Catalog`), and the one reader of people's data (`MatchedData`).

The split is the privacy pipeline's first rule: a query is validated against the request, the policy and the
catalog only, then its budget is reserved, and only then is a `MatchedData` opened. The catalog reads metadata:
whether the match finished, which tables each member uploaded and their columns, the set sizes both members were
told at the match. It never reads a row of people's data, so nothing it says can depend on one person.

Aggregates over the join (everything here is exact, un-noised, and never leaves the engine): the join is one to one
and every users table has one row per surrogate id, so each matched pair falls in exactly one cell of any
histogram here (a missing value falls in `none`). One pair moves one cell by 1; one users-table row of either
member changes at most `stability_constant` pairs (cleanroom.matching.join), which the engine multiplies in.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from ..collaborations import Collaboration
from ..errors import FailedPreconditionError, InternalError, InvalidArgumentError
from ..matching import periods
from ..matching.join import is_matched, matched_people, spoke_pairs
from ..matching.progress import committed_set_sizes
from ..matching.tables import PERIOD_COLUMN, uploaded_tables
from ..storage.database import quote_ident

NONE = "none"
#: Most cells one histogram may have (the product of its domains).
MAX_CELLS = 10_000
#: Exact values handed to the noise are clamped to this magnitude (a 1-Lipschitz map: sensitivities hold), so that
#: no aggregate of any size can overflow the sampler's 64-bit integers.
MAX_EXACT = 2**53


@dataclass(frozen=True)
class Axis:
    """A grouping column: the member and column it reads, and its released domain (declared values, then none)."""

    label: str
    member: str
    column: str
    domain: tuple[str, ...]


@dataclass(frozen=True)
class Histogram:
    """Exact counts over the full cross product of the axes' domains, in `itertools.product` order."""

    axes: tuple[Axis, ...]
    keys: tuple[tuple[str, ...], ...]
    counts: tuple[int, ...]


def axis(label: str, member: str, column: str, declared: Sequence[str]) -> Axis:
    """An axis over a declared domain plus `none`."""
    return Axis(label, member, column, (*declared, NONE))


def cells_of(axes: Sequence[Axis]) -> tuple[tuple[str, ...], ...]:
    """Every cell of the axes' cross product (the released keys: they depend on the policy alone)."""
    size = 1
    for a in axes:
        size *= len(a.domain)
    if size > MAX_CELLS:
        raise FailedPreconditionError(f"the grouping has {size} cells; at most {MAX_CELLS}")
    return tuple(itertools.product(*(a.domain for a in axes)))


def clamp(value: int) -> int:
    """An exact aggregate limited to +-MAX_EXACT."""
    return max(-MAX_EXACT, min(MAX_EXACT, int(value)))


def fill_histogram(axes: tuple[Axis, ...], rows: Sequence[Sequence[object]]) -> Histogram:
    """Counts (rows of keys then count) over the full cross product of the axes' domains, zero-filled.

    A NULL key counts in the axis' `none` cell: grouping on the raw columns and naming NULL here is cheaper than a
    coalesce in the GROUP BY. Values outside the domains cannot occur (uploads are validated against the domains,
    and the policy makes related domains equal); if one did, that would be a bug, and it fails after the budget
    was charged, like any failure after data is read.
    """
    keys = cells_of(axes)
    counts: dict[tuple[str, ...], int] = {}
    for r in rows:
        key = tuple(NONE if k is None else str(k) for k in r[:-1])
        counts[key] = counts.get(key, 0) + int(r[-1])  # type: ignore[call-overload]
    if set(counts) - set(keys):
        raise InternalError("values outside the declared domains reached an aggregate")
    return Histogram(axes, keys, tuple(clamp(counts.get(k, 0)) for k in keys))


class Catalog:
    """Metadata of one collaboration: the match's completion, uploaded tables and columns, disclosed set sizes.

    A catalog reads one period: the data as it stood when that period completed (by default the last completed
    one). Its tables and pairs are that period's: later rows are not seen, retired users never are.
    """

    def __init__(
        self,
        cur: duckdb.DuckDBPyConnection,
        collaboration: Collaboration,
        period: int | None = None,
        population: Sequence[str] = (),
    ) -> None:
        self._cur = cur
        self.collaboration = collaboration
        self.id = collaboration.id
        policy = collaboration.policy
        self.hub = policy.hub
        unknown = [m for m in population if m not in policy.spokes]
        if unknown:
            raise InvalidArgumentError(
                f"with_members: {unknown[0][:64]!r} is not a member matched with the hub {self.hub} "
                f"(those are: {', '.join(policy.spokes)})"
            )
        if len(set(population)) != len(population):
            raise InvalidArgumentError("with_members names a member twice")
        #: The members besides the hub whose matched users are the query's people (the hub's users matched with each).
        self.spokes: tuple[str, ...] = tuple(sorted(population)) or policy.spokes
        self._tables = uploaded_tables(cur, collaboration.id)
        self._requested = period
        self.period = 0
        self._described: dict[str, list[str]] = {}

    def require_matched(self) -> None:
        """FAILED_PRECONDITION until the match is complete; INVALID_ARGUMENT for a period that has not completed.

        The periods that completed are known to every member (they took part in each), so naming one reveals
        nothing about anyone's data.
        """
        latest = periods.latest_complete(self._cur, self.id, is_matched(self._cur, self.id))
        if latest is None:
            raise FailedPreconditionError(f"collaborations/{self.id} has not finished matching yet")
        if self._requested is not None and not 0 <= self._requested <= latest:
            raise InvalidArgumentError(
                f"period {self._requested} has not completed; the completed periods are 0 (the match)"
                + (f" .. {latest}" if latest else "")
            )
        self.period = latest if self._requested is None else self._requested

    @property
    def members(self) -> tuple[str, ...]:
        """The members whose data the query's people involve: the hub, then the others of the population."""
        return (self.hub, *self.spokes)

    def pairs(self, collab_param: str = "$collab", any_of: bool = False) -> str:
        """The query's people in the catalog's period: one row per person, a column `side(member)` per member.

        With two members, the matched pairs. With more, the hub's users matched with every member of the
        population (`spokes`), or with `any_of`, with at least one of them (the others' columns NULL).
        """
        return matched_people(self.period, self.hub, self.spokes, collab_param, any_of)

    def spoke_pairs(self, spoke: str, collab_param: str = "$collab") -> str:
        """The pairs of the hub and `spoke` in the catalog's period (`row_<hub>`, `row_<spoke>`)."""
        self.require_in_population(spoke)
        return spoke_pairs(self.period, self.hub, spoke, collab_param)

    def side(self, member: str) -> str:
        """The column of `pairs()` that holds `member`'s rows; INVALID_ARGUMENT for a member outside the population."""
        self.require_in_population(member)
        return f"row_{member}"

    def require_in_population(self, member: str) -> None:
        """INVALID_ARGUMENT unless `member` is the hub or in the population (a query reads only its people's data)."""
        if member not in self.members:
            raise InvalidArgumentError(
                f"the query reads {member}'s data, but its people are {self.hub}'s users matched with "
                f"{', '.join(self.spokes)}: add {member} to with_members"
            )

    def table(self, member: str, table: str, columns: Sequence[str] = ()) -> str:
        """`member.table` as of the catalog's period, to read FROM; FAILED_PRECONDITION if absent or short of a column.

        A relation with the table's columns and `rowid` (the stored row's, for deterministic tie-breaks), holding the
        rows that arrived up to the period.
        """
        self.require_in_population(member)
        physical = self._tables.get((member, table))
        if physical is None:
            raise FailedPreconditionError(f"{member} has not uploaded its {table} table yet")
        stored = self._stored_columns(physical)
        missing = [c for c in columns if c not in stored]
        if missing:
            raise FailedPreconditionError(
                f"{member}.{table} was uploaded without the column(s) {missing} this query needs"
            )
        if PERIOD_COLUMN not in stored:  # stored before periods existed: all of it is the match's
            return quote_ident(physical)
        return (
            f"(SELECT * EXCLUDE ({PERIOD_COLUMN}), rowid AS rowid FROM {quote_ident(physical)}"
            f" WHERE {PERIOD_COLUMN} <= {int(self.period)})"
        )

    def _stored_columns(self, physical: str) -> list[str]:
        """The stored table's columns, described once per catalog (a query names a table several times)."""
        if physical not in self._described:
            self._described[physical] = [
                r[0] for r in self._cur.execute(f"DESCRIBE {quote_ident(physical)}").fetchall()
            ]
        return self._described[physical]

    def columns(self, member: str, table: str) -> list[str]:
        """The uploaded columns of `member.table` (empty when it was not uploaded)."""
        physical = self._tables.get((member, table))
        if physical is None:
            return []
        return [c for c in self._stored_columns(physical) if c != PERIOD_COLUMN]

    def set_size(self, member: str) -> int:
        """The member's set size (rows with an identifier) in the catalog's period, as disclosed to both members."""
        sizes = periods.period_set_sizes(self._cur, self.id, self.period) if self.period else None
        return (sizes or committed_set_sizes(self._cur, self.id)).get(member, 0)


@dataclass(frozen=True)
class Sql:
    """A prepared statement over the join: text and parameters (built from the catalog, run by `MatchedData`)."""

    text: str
    params: Sequence[object] | Mapping[str, object] = ()


@dataclass(frozen=True)
class Grouping:
    """SQL pieces that put each matched pair (`matches m`) in its cell of the axes: joins, key expressions, GROUP BY."""

    joins: str
    keys: tuple[str, ...]
    group_by: str


def grouping(catalog: Catalog, axes: tuple[Axis, ...]) -> Grouping:
    """Left joins of the users tables the axes read, onto `matches m`, and the axes' key expressions in order."""
    joins: list[str] = []
    exprs: dict[int, str] = {}
    for member in dict.fromkeys(a.member for a in axes):
        alias = f"u_{len(joins)}"
        users = catalog.table(member, "users", [a.column for a in axes if a.member == member])
        joins.append(f"LEFT JOIN {users} {alias} ON {alias}.row_id = m.{catalog.side(member)}")
        for i, a in enumerate(axes):
            if a.member == member:
                exprs[i] = f"{alias}.{quote_ident(a.column)}"
    group = f"GROUP BY {', '.join(str(i + 1) for i in range(len(axes)))}" if axes else ""
    return Grouping(" ".join(joins), tuple(exprs[i] for i in range(len(axes))), group)


def histogram_sql(catalog: Catalog, axes: tuple[Axis, ...]) -> Sql:
    """Matched people per combination of the axes' values."""
    g = grouping(catalog, axes)
    select = ", ".join([*g.keys, "count(*)"])
    return Sql(f"SELECT {select} FROM {catalog.pairs()} m {g.joins} {g.group_by}", {"collab": catalog.id})


#: The values of a Venn axis: whether a hub user is matched with the axis' member.
MATCHED, UNMATCHED = "yes", "no"


def venn_axes(catalog: Catalog) -> tuple[Axis, ...]:
    """One axis per member of the population: is the hub's user matched with it (yes, no)."""
    return tuple(Axis(s, s, "matched", (MATCHED, UNMATCHED)) for s in catalog.spokes)


def venn_sql(catalog: Catalog, by: Axis | None) -> Sql:
    """All the hub's users (matched or not) per pattern of the population's members they are matched with.

    Rows: ([by value,] one yes/no per member of `catalog.spokes`, count). Every users row of the hub counts once.
    """
    hub = catalog.hub
    users = catalog.table(hub, "users", [by.column] if by else [])
    joins = " ".join(
        f"LEFT JOIN {catalog.spoke_pairs(s)} p{i} ON p{i}.row_{hub} = u.row_id" for i, s in enumerate(catalog.spokes)
    )
    keys = ([f"u.{quote_ident(by.column)}"] if by else []) + [
        f"CASE WHEN p{i}.row_{hub} IS NULL THEN '{UNMATCHED}' ELSE '{MATCHED}' END" for i in range(len(catalog.spokes))
    ]
    group = ", ".join(str(i + 1) for i in range(len(keys)))
    return Sql(f"SELECT {', '.join(keys)}, count(*) FROM {users} u {joins} GROUP BY {group}", {"collab": catalog.id})


def all_users_sql(catalog: Catalog, ax: Axis) -> Sql:
    """All of a member's users (matched or not) per value of one of its columns (not through the join)."""
    table = catalog.table(ax.member, "users", [ax.column])
    return Sql(f"SELECT {quote_ident(ax.column)}, count(*) FROM {table} GROUP BY 1")


def flow_sql(catalog: Catalog, start_axis: Axis, history_time: str, start: dt.date, end: dt.date) -> Sql:
    """Matched people per (stage on `start`, stage on `end`) from the member's stage history.

    A person's stage on a date is their snapshot row dated that day (the latest by time if there are several); a
    person with no row on that date is in `none` on it: dropping out of the funnel shows as a move to `none`.
    """
    member, column = start_axis.member, quote_ident(start_axis.column)
    history = catalog.table(member, "stage_history", [start_axis.column, history_time])
    t = quote_ident(history_time)
    return Sql(
        f"""
        WITH s AS (
            SELECT row_id,
                   arg_max({column}, {t}) FILTER (WHERE CAST({t} AS DATE) = $start) AS s0,
                   arg_max({column}, {t}) FILTER (WHERE CAST({t} AS DATE) = $end) AS s1
            FROM {history} WHERE CAST({t} AS DATE) IN ($start, $end) GROUP BY row_id
        )
        SELECT s.s0, s.s1, count(*)
        FROM {catalog.pairs()} m LEFT JOIN s ON s.row_id = m.{catalog.side(member)}
        GROUP BY 1, 2
        """,
        {"start": start, "end": end, "collab": catalog.id},
    )


class MatchedData:
    """The only reader of people's data: opened by the engine after a query's budget is reserved."""

    def __init__(self, cur: duckdb.DuckDBPyConnection, catalog: Catalog) -> None:
        self._cur = cur
        self.catalog = catalog

    def rows(self, sql: Sql) -> list[tuple[Any, ...]]:
        """All rows of a statement."""
        return self._cur.execute(sql.text, sql.params).fetchall()

    def arrays(self, sql: Sql) -> dict[str, Any]:
        """A statement's result as numpy arrays, by column."""
        return dict(self._cur.execute(sql.text, sql.params).fetchnumpy())

    def columns(self, sql: Sql, relations: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A statement's result as numpy arrays, by column, for statements whose results have no NULL.

        Why beside `arrays`: DuckDB hands its result to Arrow without a per-value conversion, and a numeric Arrow
        column of one chunk becomes a numpy array without a copy; `fetchnumpy` converts every value (attribution's
        touches, ~0.6M rows x 11 columns, cost 0.1 CPU-s more that way). A NULL would come out as an arbitrary
        number, so one fails the statement (an `InternalError`) instead of being read.

        `relations`: Arrow tables (or anything DuckDB can scan) the statement reads by name, derived from an earlier
        read of this query; registered on this query's own cursor for this statement only (DuckDB scans them in
        place, no copy).
        """
        names = list(relations or {})
        try:
            for name in names:
                self._cur.register(name, relations[name])  # type: ignore[index]
            table = self._cur.sql(sql.text, params=sql.params).to_arrow_table()
        finally:
            for name in names:
                self._cur.unregister(name)
        out: dict[str, Any] = {}
        for name, column in zip(table.column_names, table.columns, strict=True):
            if column.null_count:
                raise InternalError(f"column {name!r} of an aggregate's rows has NULLs")
            out[name] = column.to_numpy()
        return out

    def histogram(self, axes: tuple[Axis, ...], sql: Sql) -> Histogram:
        """A statement of (keys..., count) rows filled over the axes' domains."""
        return fill_histogram(axes, self.rows(sql))
