"""Refresh periods of a matched collaboration: opening, cancelling, and retiring users.

After the match (period 0), members add rows and retire users in numbered refresh periods (protos/PROTOCOL.md,
section 8, "Refresh"). This module holds the relay's operations on a period as a whole: open one, cancel one
(discarding all it received), stage retirements, or retire at once in a period of its own. Completing a period
(the join) and the points a period holds stay with the relay (`relay.py`), which these operations call through
`_complete` and `_forget_points`. Every operation runs in one write transaction of the collaboration's file and
is audited.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb
import numpy as np

from ..audit import AuditLog
from ..collaborations import Collaboration, check_approved_revision
from ..errors import FailedPreconditionError, InvalidArgumentError
from ..storage import Store
from . import periods
from .join import forget_rows_from, is_matched, matched_time
from .progress import forget_period, sealed, total_rows
from .tables import discard_staged, forget_period_rows


class RefreshPeriods:
    """The refresh operations of `Relay` (a base of it): it supplies the store, log and the two hooks.

    Kept apart from the relay's point handling so that each module holds one idea; `Relay` is the only subclass.
    """

    _store: Store
    _audit: AuditLog

    #: Relay's: complete the period in the open transaction (cursor, collaboration, member, period, retire only).
    _complete: Callable[[duckdb.DuckDBPyConnection, Collaboration, str, int, bool], None]
    #: Relay's: delete every point and tag it holds for the collaboration's open period.
    _forget_points: Callable[[duckdb.DuckDBPyConnection, str], None]

    def open_refresh(self, collaboration: Collaboration, member: str) -> int:
        """Open the next refresh period (or return the open one); FAILED_PRECONDITION before the match completes."""
        with self._store.of(collaboration.id).transaction() as cur:
            check_approved_revision(cur, collaboration)
            when = matched_time(cur, collaboration.id)
            if when is None:
                raise FailedPreconditionError(
                    f"collaborations/{collaboration.id} has not finished matching yet; a refresh follows the match"
                )
            period, opened = periods.open_refresh(cur, collaboration, member, when)
            if opened:
                self._audit.append(cur, collaboration.id, member, "refresh.open", {"period": period})
        return period

    def cancel_refresh(self, collaboration: Collaboration, member: str, period: int) -> None:
        """Discard the open refresh period, as if it had not opened; either member may, at any time before it completes.

        A member that opens a period and never takes part would otherwise hold the collaboration: no other period
        can open, and the other member's retirements are never applied. Everything the period received goes: its
        points and tags, the keys they gave the new rows, the rows appended to tables, the staged retirements and
        the uploads' progress. Nothing of it was ever read by a query (a period is read only once complete).
        """
        with self._store.of(collaboration.id).transaction() as cur:
            check_approved_revision(cur, collaboration)
            periods.require_open(cur, collaboration.id, period)
            self._discard(cur, collaboration, member, period, {"period": period})

    def _discard(
        self,
        cur: duckdb.DuckDBPyConnection,
        collaboration: Collaboration,
        member: str,
        period: int,
        parameters: dict[str, object],
    ) -> None:
        """Inside a write transaction: discard open `period` (see `cancel_refresh`) and audit it as `refresh.cancel`.

        Every delete is a condition on what is stored (keys of rows numbered from the previous period's count on,
        rows tagged with the period), never a range of the counts a member claimed: a claimed `total_rows` of 2^62
        costs what the member actually stored.
        """
        for m in collaboration.members:
            forget_rows_from(cur, collaboration.id, m.name, total_rows(cur, collaboration.id, m.name, period - 1) or 0)
            forget_period_rows(cur, collaboration.id, m.name, period)
            discard_staged(cur, collaboration, m.name)
        self._forget_points(cur, collaboration.id)
        forget_period(cur, collaboration.id, period)
        periods.forget_open(cur, collaboration.id, period)
        self._audit.append(cur, collaboration.id, member, "refresh.cancel", parameters)

    def retire(self, collaboration: Collaboration, member: str, period: int, row_ids: np.ndarray) -> tuple[int, int]:
        """Stage the member's users to retire in `period` (replacing any list sent before); (their number, period).

        Retired users are deleted everywhere when the period completes: keys, table rows, pairs of every period.
        With `period` 0 they are retired at once, in a period of their own (no peer needed: nothing to match); a
        refresh period open then is cancelled by the same transaction (`_retire_now`), so a deletion never waits on
        the peer, and no period can reopen in between.
        """
        if period < 0:
            raise InvalidArgumentError("period is the open refresh period, or 0 to retire at once")
        spec = collaboration.policy.refresh
        if len(row_ids) and (spec is None or not spec.allows(member, "users")):
            raise InvalidArgumentError(
                f"the policy's refresh does not list {member}.users, so you may not retire users"
            )
        with self._store.of(collaboration.id).transaction() as cur:
            check_approved_revision(cur, collaboration)
            if period == 0:
                return self._retire_now(cur, collaboration, member, row_ids)
            periods.require_open(cur, collaboration.id, period)
            if sealed(cur, collaboration.id, member, period):
                raise FailedPreconditionError(
                    f"your side of refresh period {period} is sealed (you double-blinded the peer's points); "
                    "retire these users in the next refresh"
                )
            self._check_retired_rows(cur, collaboration.id, member, row_ids, period)
            periods.stage_retirements(cur, collaboration.id, member, period, [int(r) for r in row_ids])
            self._audit.append(
                cur, collaboration.id, member, "refresh.retire", {"period": period, "rows": len(row_ids)}
            )
        return len(set(row_ids.tolist())), period

    def _retire_now(
        self, cur: duckdb.DuckDBPyConnection, collaboration: Collaboration, member: str, row_ids: np.ndarray
    ) -> tuple[int, int]:
        """Retire at once, in a period of its own that this member opens and completes; (retired, period).

        A refresh period that is open (the peer's, say, opened again as soon as the last was cancelled, and never
        taken part in) is cancelled first, in this same transaction, under the write lock: a member's deletion of
        its own users completes in this one call whatever the peer does, and nothing can open in between. The rows
        are checked after the cancel, so a row only the cancelled period numbered is refused, and a refusal rolls
        the cancel back with everything else.
        """
        if not is_matched(cur, collaboration.id):
            raise FailedPreconditionError(
                f"collaborations/{collaboration.id} has not finished matching yet; retire users after the match"
            )
        if not len(row_ids):
            raise InvalidArgumentError("name at least one row to retire")
        already = periods.open_period(cur, collaboration.id)
        if already is not None:
            self._discard(cur, collaboration, member, already, {"period": already, "for": "refresh.retire"})
        self._check_retired_rows(cur, collaboration.id, member, row_ids, None)
        period = periods.open_retirement(cur, collaboration.id, member)
        periods.stage_retirements(cur, collaboration.id, member, period, [int(r) for r in row_ids])
        self._audit.append(cur, collaboration.id, member, "refresh.retire", {"period": period, "rows": len(row_ids)})
        self._complete(cur, collaboration, member, period, True)  # retire only
        return len(set(row_ids.tolist())), period

    @staticmethod
    def _check_retired_rows(
        cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, row_ids: np.ndarray, period: int | None
    ) -> None:
        """INVALID_ARGUMENT unless every row is one of the member's, not retired in an earlier period."""
        rows = total_rows(cur, collaboration_id, member) or 0
        if not len(row_ids):
            return
        if int(row_ids.min()) < 0 or int(row_ids.max()) >= rows:
            bad = int(row_ids.min()) if int(row_ids.min()) < 0 else int(row_ids.max())
            raise InvalidArgumentError(f"row {bad} is not one of your rows (0 .. {rows - 1})")
        earlier = periods.already_retired(cur, collaboration_id, member, row_ids, period)
        if earlier is not None:
            raise InvalidArgumentError(f"row {earlier} was retired before; a row is retired once")
