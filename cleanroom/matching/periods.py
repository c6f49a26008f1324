"""Refresh periods of a living collaboration: the owner of the `periods`, `retirements` and `period_sizes` tables.

Period 0 is the match. A refresh opens period p = 1, 2, ... (at most one open at a time, no sooner than the
policy's `refresh.min_days_between` after the previous refresh opened or completed; the first may follow the match
at once unless the budget renews per period, when the match starts the clock), during which each member may
upload the points of new users (rows numbered after its earlier ones), retire users, and append rows to the tables
the policy lists. When
both members have double-blinded each other's new points, the period completes in one transaction: the retired
users are deleted everywhere (their keys, their rows in every table, their pairs in every period), the join is
recomputed over all remaining keys, and each member's new set size is recorded (both members see both sizes, as at
the match).

Invariant: the pairs that hold in period p are exactly the join (cleanroom.matching.join) of the keys present after
period p completed, without the retired users: the same pairs a new match of that data would give.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa

from cleanroom_client.policy import RefreshBudget

from ..collaborations import Collaboration
from ..errors import FailedPreconditionError
from ..storage.database import first, integer


@dataclass(frozen=True)
class Period:
    """One refresh period."""

    period: int
    open_time: datetime
    opener: str
    complete: bool


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def open_period(cur: duckdb.DuckDBPyConnection, collaboration_id: str) -> int | None:
    """The refresh period that is open (started, not complete), if any."""
    return integer(
        cur.execute("SELECT max(period) FROM periods WHERE collab = ? AND complete_time IS NULL", [collaboration_id]),
        None,
    )


def latest_complete(cur: duckdb.DuckDBPyConnection, collaboration_id: str, matched: bool) -> int | None:
    """The last completed period: None before the match, 0 after it until a refresh completes."""
    if not matched:
        return None
    return integer(
        cur.execute(
            "SELECT max(period) FROM periods WHERE collab = ? AND complete_time IS NOT NULL", [collaboration_id]
        ),
        0,
    )


def current_period(cur: duckdb.DuckDBPyConnection, collaboration_id: str) -> int:
    """The open period, else the last completed one (0 for the match)."""
    return integer(cur.execute("SELECT max(period) FROM periods WHERE collab = ?", [collaboration_id]), 0)


def last_change(cur: duckdb.DuckDBPyConnection, collaboration_id: str) -> datetime | None:
    """When the latest refresh period opened or completed, the later of the two (None before the first refresh).

    The interval counts from completions too: a per-period budget renews when a period completes, so two
    completions are never closer than the interval (a period held open, completed, then followed at once by
    another would otherwise renew the budget twice in a moment).
    """
    row = first(
        cur.execute(
            "SELECT max(greatest(open_time, coalesce(complete_time, open_time))) FROM periods "
            "WHERE collab = ? AND NOT retire_only",
            [collaboration_id],
        )
    )
    return row[0] if row and row[0] is not None else None


def open_refresh(
    cur: duckdb.DuckDBPyConnection, collaboration: Collaboration, member: str, matched_time: datetime
) -> tuple[int, bool]:
    """Open the next period, or return the open one; (period, whether this call opened it).

    FAILED_PRECONDITION when the policy allows no refresh, or when the policy's interval has not passed since the
    last refresh opened or completed: the message says when the next one may start. Before the first refresh the
    clock is the match's only with `budget: per_period`: the match opens the first budget period, so a refresh
    straight after it would renew every member's budget at once. With one budget for life nothing renews, and
    the first refresh may follow the match at once (a member trying one need not wait a week).
    """
    spec = collaboration.policy.refresh
    if spec is None:
        raise FailedPreconditionError(
            f"the policy of collaborations/{collaboration.id} allows no refresh (add a `refresh` section naming the "
            "tables that may change, and have every member approve it)"
        )
    already = open_period(cur, collaboration.id)
    if already is not None:
        return already, False
    last = last_change(cur, collaboration.id)
    renews = spec.budget is RefreshBudget.PER_PERIOD
    since = last if last is not None else (matched_time if renews else None)
    if since is not None:
        earliest = since + timedelta(days=spec.min_days_between)
        if _now() < earliest:
            what = "the last refresh" if last is not None else "the match (a per-period budget renews at a refresh)"
            raise FailedPreconditionError(
                f"the policy allows a refresh every {spec.min_days_between:g} days after {what}; the next may "
                f"start at {earliest:%Y-%m-%d %H:%M} UTC"
            )
    period = current_period(cur, collaboration.id) + 1
    cur.execute(
        "INSERT INTO periods (collab, period, open_time, opener) VALUES (?, ?, ?, ?)",
        [collaboration.id, period, _now(), member],
    )
    return period, True


def refresh_started(cur: duckdb.DuckDBPyConnection, collaboration_id: str) -> bool:
    """Whether a refresh period (not a retirement alone) has opened: the match's own uploads close then."""
    row = first(cur.execute("SELECT count(*) FROM periods WHERE collab = ? AND NOT retire_only", [collaboration_id]))
    return bool(row and row[0])


def open_retirement(cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str) -> int:
    """Open a period for retirements alone, completed in the same transaction by the caller.

    Deletions must not wait for the peer: such a period needs no PSI (no new points), so one member completes it.
    It neither counts toward `min_days_between` nor renews a per-period budget. The caller cancels an open refresh
    period first, in the same transaction (the relay's `_retire_now`); one still open here is a bug, refused.
    """
    already = open_period(cur, collaboration_id)
    if already is not None:
        raise FailedPreconditionError(f"refresh period {already} is open; a retirement must cancel it first")
    period = current_period(cur, collaboration_id) + 1
    cur.execute(
        "INSERT INTO periods (collab, period, open_time, opener, retire_only) VALUES (?, ?, ?, ?, true)",
        [collaboration_id, period, _now(), member],
    )
    return period


def require_open(cur: duckdb.DuckDBPyConnection, collaboration_id: str, period: int) -> None:
    """FAILED_PRECONDITION unless refresh `period` (>= 1) is the open one."""
    now_open = open_period(cur, collaboration_id)
    if now_open != period:
        state = f"period {now_open} is open" if now_open is not None else "no refresh is open"
        raise FailedPreconditionError(
            f"refresh period {period} of collaborations/{collaboration_id} is not open ({state}); "
            "OpenRefresh starts the next one"
        )


def stage_retirements(
    cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, period: int, row_ids: list[int]
) -> None:
    """Replace the member's retirements staged for `period` (idempotent, so a resumed refresh may send them again)."""
    cur.execute(
        "DELETE FROM retirements WHERE collab = ? AND member = ? AND period = ?", [collaboration_id, member, period]
    )
    if row_ids:  # one bulk insert: a million rows take a moment, not minutes, under the write lock
        staged = pa.table({"row_id": pa.array(sorted(set(row_ids)), pa.int64())})
        cur.register("retired_chunk", staged)
        cur.execute(
            "INSERT INTO retirements SELECT ?, ?, ?, row_id FROM retired_chunk", [collaboration_id, member, period]
        )
        cur.unregister("retired_chunk")


def retired_rows(collaboration_id: str, member: str, period: int | None = None) -> tuple[str, list[object]]:
    """A relation (`row_id`) of the member's retired users (of one period, or all) and its parameters."""
    if period is None:
        return "(SELECT row_id FROM retirements WHERE collab = ? AND member = ?)", [collaboration_id, member]
    return (
        "(SELECT row_id FROM retirements WHERE collab = ? AND member = ? AND period = ?)",
        [collaboration_id, member, period],
    )


def already_retired(
    cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, row_ids: np.ndarray, period: int | None
) -> int | None:
    """The smallest of `row_ids` the member retired in another period than `period`, if any."""
    cur.register("asked_rows", pa.table({"row_id": pa.array(np.asarray(row_ids, dtype=np.int64))}))
    smallest = integer(
        cur.execute(
            "SELECT min(a.row_id) FROM asked_rows a JOIN retirements r ON r.row_id = a.row_id "
            "WHERE r.collab = ? AND r.member = ? AND r.period IS DISTINCT FROM ?",
            [collaboration_id, member, period],
        ),
        None,
    )
    cur.unregister("asked_rows")
    return smallest


def retirement_count(cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, period: int) -> int:
    """How many users the member retires in `period`."""
    return integer(
        cur.execute(
            "SELECT count(*) FROM retirements WHERE collab = ? AND member = ? AND period = ?",
            [collaboration_id, member, period],
        ),
        0,
    )


def record_complete(
    cur: duckdb.DuckDBPyConnection,
    collaboration_id: str,
    period: int,
    sizes: dict[str, int],
    audit_sequence: int,
    changed: bool,
) -> None:
    """Mark `period` complete with each member's set size and the audit entry that completed it.

    A period in which no member changed anything (no user added or retired, no row appended) does not renew a
    per-period budget: the same data would otherwise be queried again with a fresh budget at every empty period.
    """
    cur.execute(
        "UPDATE periods SET complete_time = ?, audit_sequence = ?, renews = ? WHERE collab = ? AND period = ?",
        [_now(), audit_sequence, changed, collaboration_id, period],
    )
    for member, size in sizes.items():
        cur.execute("INSERT INTO period_sizes VALUES (?, ?, ?, ?)", [collaboration_id, member, period, size])


def period_set_sizes(cur: duckdb.DuckDBPyConnection, collaboration_id: str, period: int) -> dict[str, int] | None:
    """Each member's set size as of `period` (>= 1): the latest completed period at or before it; None if none."""
    rows = cur.execute(
        "SELECT member, arg_max(set_size, period) FROM period_sizes WHERE collab = ? AND period <= ? GROUP BY member",
        [collaboration_id, period],
    ).fetchall()
    return {str(m): int(s) for m, s in rows} if rows else None


def budget_start(cur: duckdb.DuckDBPyConnection, collaboration_id: str) -> int:
    """The audit sequence a per-period budget counts from: the entry that completed the last period that changed data.

    0 while there is none.
    """
    return integer(
        cur.execute(
            "SELECT max(audit_sequence) FROM periods WHERE collab = ? AND complete_time IS NOT NULL AND renews",
            [collaboration_id],
        ),
        0,
    )


def list_periods(cur: duckdb.DuckDBPyConnection, collaboration_id: str) -> list[Period]:
    """Every refresh period of a collaboration, oldest first."""
    rows = cur.execute(
        "SELECT period, open_time, opener, complete_time IS NOT NULL FROM periods WHERE collab = ? ORDER BY period",
        [collaboration_id],
    ).fetchall()
    return [Period(int(p), t, str(o), bool(c)) for p, t, o, c in rows]


def forget_open(cur: duckdb.DuckDBPyConnection, collaboration_id: str, period: int) -> None:
    """Remove a cancelled period and its staged retirements; its number is used again by the next period."""
    cur.execute("DELETE FROM retirements WHERE collab = ? AND period = ?", [collaboration_id, period])
    cur.execute("DELETE FROM periods WHERE collab = ? AND period = ?", [collaboration_id, period])
