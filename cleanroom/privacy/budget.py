"""The privacy budget: basic composition per collaboration and querying member, safe under concurrency.

Invariants:
- What a member has spent is the sum of epsilon over its entries in the collaboration's audit chain: the ledger
  *is* the audit log, so the two can never disagree, and it survives restarts with the database.
- A query first reserves its epsilon. Reserving checks spent + reserved + asked <= total under the database's
  write lock, so concurrent queries can never overspend together.
- The debit is the audit entry, written in the same transaction that drops the reservation; if that transaction
  fails, nothing is released. A failed or refused query drops its reservation and spends nothing.
- Reservations still open at start-up belong to queries that never committed, so released nothing: they are
  dropped.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb

from ..audit import AuditEntry, AuditLog
from ..errors import ResourceExhaustedError
from ..storage import Database
from ..storage.database import first

_EPS = 1e-12


@dataclass(frozen=True)
class Reservation:
    """Epsilon held for one query until it commits or is released."""

    id: str
    collaboration: str
    member: str
    epsilon: float


@dataclass(frozen=True)
class BudgetStatus:
    """One member's budget in one collaboration."""

    member: str
    total: float
    spent: float
    reserved: float

    @property
    def remaining(self) -> float:
        """What the member may still spend (never negative)."""
        return max(0.0, self.total - self.spent - self.reserved)


class BudgetAccountant:
    """Reserve, commit and release epsilon."""

    def __init__(self, db: Database, audit: AuditLog) -> None:
        self._db = db
        self._audit = audit
        with db.transaction() as cur:
            cur.execute("DELETE FROM budget_reservations")

    def status(self, collaboration: str, member: str, total: float) -> BudgetStatus:
        """Spent (from the audit log) and reserved epsilon of a member."""
        cur = self._db.cursor()
        spent = first(
            cur.execute(
                "SELECT coalesce(sum(epsilon), 0) FROM audit_log WHERE collab = ? AND principal = ?",
                [collaboration, member],
            )
        )
        reserved = first(
            cur.execute(
                "SELECT coalesce(sum(epsilon), 0) FROM budget_reservations WHERE collab = ? AND member = ?",
                [collaboration, member],
            )
        )
        return BudgetStatus(member, total, float(spent[0]) if spent else 0.0, float(reserved[0]) if reserved else 0.0)

    def reserve(self, collaboration: str, member: str, epsilon: float, total: float) -> Reservation:
        """Hold `epsilon` for one query, or RESOURCE_EXHAUSTED naming what was asked and what is left."""
        with self._db.transaction() as cur:
            status = self.status(collaboration, member, total)
            if epsilon > status.remaining + _EPS:
                raise ResourceExhaustedError(
                    f"privacy budget exhausted: the query asks epsilon {epsilon:g} but {member} has "
                    f"{status.remaining:g} left of {total:g} in collaborations/{collaboration}"
                )
            reservation = Reservation(secrets.token_hex(8), collaboration, member, epsilon)
            cur.execute(
                "INSERT INTO budget_reservations VALUES (?, ?, ?, ?)",
                [reservation.id, collaboration, member, epsilon],
            )
        return reservation

    def commit(
        self,
        reservation: Reservation,
        action: str,
        parameters: Mapping[str, Any],
        response: object,
        epsilon: float | None = None,
        also: Callable[[duckdb.DuckDBPyConnection], object] | None = None,
    ) -> AuditEntry:
        """Debit the reservation by appending the query's audit entry, in one transaction.

        `epsilon` (at most the reserved amount) is what is debited when the spend is only known afterwards (DP-SGD:
        the accountant's figure); `also` writes what the query releases (an audience) in the same transaction.
        """
        spent = reservation.epsilon if epsilon is None else epsilon
        if spent > reservation.epsilon + _EPS:
            raise ValueError(f"cannot debit {spent} for a reservation of {reservation.epsilon}")
        with self._db.transaction() as cur:
            cur.execute("DELETE FROM budget_reservations WHERE id = ?", [reservation.id])
            if also is not None:
                also(cur)
            return self._audit.append(
                cur,
                reservation.collaboration,
                reservation.member,
                action,
                parameters,
                epsilon=spent,
                response=response,
            )

    def release(self, reservation: Reservation) -> None:
        """Drop a reservation whose query released nothing."""
        with self._db.transaction() as cur:
            cur.execute("DELETE FROM budget_reservations WHERE id = ?", [reservation.id])
