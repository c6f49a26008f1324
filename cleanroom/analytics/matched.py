"""Exact aggregates over the join, as DuckDB SQL. Everything here is un-noised and never leaves the engine.

Contribution: the join is one to one and every users table has one row per surrogate id, so each matched person
falls in exactly one cell of any histogram here (a missing value falls in `none`): each histogram has L1
sensitivity 1. The flow takes one stage per person and snapshot (the latest on or before the date).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from ..errors import FailedPreconditionError, InternalError
from ..storage.database import first, quote_ident

NONE = "none"
#: Most cells one histogram may have (the product of its domains).
MAX_CELLS = 10_000


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


def match_side(cur: duckdb.DuckDBPyConnection, collab: str, member: str) -> str:
    """The column of `matches` that holds `member`'s rows: `row_a` or `row_b`.

    With no pair at all any answer serves: every aggregate over the join is then empty.
    """
    row = first(cur.execute("SELECT member_a FROM matches WHERE collab = ? LIMIT 1", [collab]))
    return "row_a" if row is None or row[0] == member else "row_b"


def data_table(cur: duckdb.DuckDBPyConnection, collab: str, member: str, table: str) -> str:
    """The quoted physical name of `member.table` in a collaboration; FAILED_PRECONDITION if not uploaded."""
    row = first(
        cur.execute(
            "SELECT physical FROM data_tables WHERE collab = ? AND member = ? AND name = ?", [collab, member, table]
        )
    )
    if row is None:
        raise FailedPreconditionError(f"{member} has not uploaded its {table} table yet")
    return quote_ident(row[0])


def fill_histogram(axes: tuple[Axis, ...], rows: list[tuple[object, ...]]) -> Histogram:
    """Counts (rows of keys then count) over the full cross product of the axes' domains, zero-filled.

    A NULL key counts in the axis' `none` cell: grouping on the raw columns and naming NULL here is cheaper than a
    coalesce in the GROUP BY.
    """
    size = 1
    for a in axes:
        size *= len(a.domain)
    if size > MAX_CELLS:
        raise FailedPreconditionError(f"the grouping has {size} cells; at most {MAX_CELLS}")
    counts: dict[tuple[str, ...], int] = {}
    for r in rows:  # a SQL NULL (no value, or no users row) is the `none` cell
        key = tuple(NONE if k is None else str(k) for k in r[:-1])
        counts[key] = counts.get(key, 0) + int(r[-1])  # type: ignore[call-overload]
    keys = tuple(itertools.product(*(a.domain for a in axes)))
    unknown = set(counts) - set(keys)
    if unknown:  # uploads are validated against the domain, so this is a bug
        raise InternalError(f"values outside the declared domains: {sorted(unknown)[:3]}")
    return Histogram(axes, keys, tuple(counts.get(k, 0) for k in keys))


class MatchedPeople:
    """The matched people of one collaboration and the members' users tables."""

    def __init__(self, cur: duckdb.DuckDBPyConnection, collab: str) -> None:
        self._cur = cur
        self.collab = collab
        row = first(cur.execute("SELECT 1 FROM match_results WHERE collab = ?", [collab]))
        if row is None:
            raise FailedPreconditionError(f"collaborations/{collab} has not finished matching yet")

    def _side(self, member: str) -> str:
        return match_side(self._cur, self.collab, member)

    def histogram(self, axes: tuple[Axis, ...]) -> Histogram:
        """Matched people per combination of the axes' values."""
        joins: list[str] = []
        exprs: list[tuple[Axis, str]] = []
        for member in dict.fromkeys(a.member for a in axes):
            alias = f"u_{len(joins)}"
            joins.append(
                f"LEFT JOIN {data_table(self._cur, self.collab, member, 'users')} {alias} "
                f"ON {alias}.row_id = m.{self._side(member)}"
            )
            for a in axes:
                if a.member == member:
                    exprs.append((a, f"{alias}.{quote_ident(a.column)}"))
        ordered = [e for a in axes for (b, e) in exprs if a is b]
        select = ", ".join([*ordered, "count(*)"])
        group = f"GROUP BY {', '.join(str(i + 1) for i in range(len(axes)))}" if axes else ""
        sql = f"SELECT {select} FROM matches m {' '.join(joins)} WHERE m.collab = ? {group}"
        return fill_histogram(axes, self._cur.execute(sql, [self.collab]).fetchall())

    def all_users_histogram(self, ax: Axis) -> Histogram:
        """All of a member's users (matched or not) per value of one of its columns."""
        table = data_table(self._cur, self.collab, ax.member, "users")
        sql = f"SELECT coalesce(CAST({quote_ident(ax.column)} AS VARCHAR), '{NONE}'), count(*) FROM {table} GROUP BY 1"
        return fill_histogram((ax,), self._cur.execute(sql).fetchall())

    def flow(self, start_axis: Axis, end_axis: Axis, history_time: str, start: dt.date, end: dt.date) -> Histogram:
        """Matched people per (stage on `start`, stage on `end`) from the member's stage history."""
        member, column = start_axis.member, quote_ident(start_axis.column)
        history = data_table(self._cur, self.collab, member, "stage_history")
        t = quote_ident(history_time)
        sql = f"""
            WITH s AS (
                SELECT row_id,
                       arg_max({column}, {t}) FILTER (WHERE CAST({t} AS DATE) <= ?) AS s0,
                       arg_max({column}, {t}) FILTER (WHERE CAST({t} AS DATE) <= ?) AS s1
                FROM {history} GROUP BY row_id
            )
            SELECT coalesce(s.s0, '{NONE}'), coalesce(s.s1, '{NONE}'), count(*)
            FROM matches m LEFT JOIN s ON s.row_id = m.{self._side(member)}
            WHERE m.collab = ? GROUP BY 1, 2
        """
        return fill_histogram((start_axis, end_axis), self._cur.execute(sql, [start, end, self.collab]).fetchall())
