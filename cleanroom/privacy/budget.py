"""The privacy budget: basic composition of (epsilon, delta) per collaboration and member, safe under concurrency.

Invariants:
- What a member has spent is the sum of epsilon and of delta over its entries in the collaboration's audit chain:
  the ledger *is* the audit log, so the two can never disagree, and it survives restarts with the database.
- Amounts are counted in integer units (`EPSILON_UNIT`, `DELTA_UNIT`): each float is read as its shortest decimal
  form (`repr`, what the member typed and the audit log shows), divided by the unit exactly (decimal arithmetic), a
  charge rounded *up* to a whole unit and a total *down*; reserving checks spent + reserved + asked <= total in
  integers, under the write lock of the collaboration's file. So spends that sum to the cap exactly are all
  admitted, anything more is refused, and concurrent queries cannot overspend together. The one tolerance: a
  float's decimal form differs from its binary value (which the noise is calibrated with) by less than 2^-53 of it,
  so a charge may fall short of the binary amount by at most that relative hair (about 1.1e-16 of the amount),
  never by a unit.
- One release may charge several members (an audience is charged to its requester and to its recipient): each
  charged member must have room, or nothing is reserved.
- The debit is written in the same transaction that drops the reservation: the query's entry for the requester,
  and a `budget.charge` entry for every other member charged. If that transaction fails, nothing is released.
- The budget fails closed: when the collaboration's audit chain does not verify (an entry altered, entries cut
  from its end, its signed head missing), nothing can be reserved and the status is refused.
- A query whose data was read is always charged: `charge_failure` debits the whole reservation of a query that
  failed after reserving. Reservations still open when a collaboration's file is first opened in a run belong to
  queries the server stopped in the middle of (a crash, a kill, a stop that interrupted them): they are charged
  too, as `query.interrupted` (`charge_interrupted`, run before anything else may use the file), since their data
  may have been read.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any

import duckdb

from ..audit import AuditEntry, AuditLog
from ..audit.chain import canonical_json
from ..errors import BudgetShortfall, InvalidArgumentError, ResourceExhaustedError
from ..storage import Database, Store
from ..storage.database import first

#: The ledger's units: epsilon in billionths, delta in 1e-18.
EPSILON_UNIT = 1e-9
DELTA_UNIT = 1e-18


def _in_units(amount: float, unit: float) -> Decimal:
    """`amount / unit` exactly, reading each float as its shortest decimal form (`repr`: what a member typed).

    Exact decimal division of two such numbers (at most 17 significant digits each, the unit a power of ten) needs
    no rounding, so an amount equal to a cap is equal to it here, whatever float division would say (1e-6 / 1e-18
    is 1000000000000.0001 in binary floating point).
    """
    if not math.isfinite(amount):
        raise InvalidArgumentError(f"a privacy charge or cap must be a finite number, not {amount!r}")
    with localcontext() as ctx:
        ctx.prec = 60
        return Decimal(repr(float(amount))) / Decimal(repr(float(unit)))


def charge_units(amount: float, unit: float) -> int:
    """A charge in whole units: its decimal amount, rounded up."""
    return max(0, math.ceil(_in_units(amount, unit)))


def total_units(amount: float, unit: float) -> int:
    """A cap in whole units: its decimal amount, rounded down."""
    return max(0, math.floor(_in_units(amount, unit)))


@dataclass(frozen=True)
class Charge:
    """What one release costs one member."""

    member: str
    epsilon: float
    delta: float = 0.0

    @property
    def units(self) -> tuple[int, int]:
        """(epsilon, delta) in ledger units, rounded up."""
        return charge_units(self.epsilon, EPSILON_UNIT), charge_units(self.delta, DELTA_UNIT)


@dataclass(frozen=True)
class Limits:
    """A member's caps in one collaboration (the same for every member, from the policy)."""

    epsilon_total: float
    delta_total: float = 0.0
    #: Count only what the audit log charged after this sequence number: a per-period budget starts at the entry
    #: that completed the last refresh (0: the whole life of the collaboration).
    since_sequence: int = 0


@dataclass(frozen=True)
class Reservation:
    """Budget held for one query, per charged member, until it is debited (or refused before data was read)."""

    id: str
    collaboration: str
    charges: tuple[Charge, ...]

    @property
    def requester(self) -> str:
        """The member who asked: charged first."""
        return self.charges[0].member


@dataclass(frozen=True)
class BudgetStatus:
    """One member's budget in one collaboration."""

    member: str
    total: float
    spent: float
    reserved: float
    delta_total: float = 0.0
    delta_spent: float = 0.0
    delta_reserved: float = 0.0
    #: The budget counts what the log charged after this entry (0: the whole life of the collaboration).
    since_sequence: int = 0

    @property
    def remaining(self) -> float:
        """Epsilon the member may still spend (never negative)."""
        return max(0.0, self.total - self.spent - self.reserved)

    @property
    def delta_remaining(self) -> float:
        """Delta the member may still spend (never negative)."""
        return max(0.0, self.delta_total - self.delta_spent - self.delta_reserved)


class BudgetAccountant:
    """Reserve, debit and (before any data was read) release budget."""

    def __init__(self, store: Store, audit: AuditLog) -> None:
        self._store = store
        self._audit = audit

    # -- reading --------------------------------------------------------------------------------------------------
    def _units(
        self, cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, since: int = 0
    ) -> tuple[int, int, int, int]:
        spent = self._audit.charged_units(cur, collaboration_id, member, EPSILON_UNIT, DELTA_UNIT, since)
        held = first(
            cur.execute(
                "SELECT coalesce(sum(CAST(round(epsilon / $eu) AS HUGEINT)), 0),"
                " coalesce(sum(CAST(round(delta / $du) AS HUGEINT)), 0)"
                " FROM budget_reservations WHERE collab = $c AND member = $m",
                {"eu": EPSILON_UNIT, "du": DELTA_UNIT, "c": collaboration_id, "m": member},
            )
        )
        return tuple(int(v) for v in (*(spent or (0, 0)), *(held or (0, 0))))  # type: ignore[return-value]

    def status(self, collaboration_id: str, member: str, limits: Limits) -> BudgetStatus:
        """Spent (from the audit log) and reserved budget of a member; FAILED_PRECONDITION if the log is broken."""
        self._audit.require_intact(collaboration_id)
        return self._status(self._store.of(collaboration_id).cursor(), collaboration_id, member, limits)

    def _status(
        self, cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, limits: Limits
    ) -> BudgetStatus:
        eps, dlt, eps_held, dlt_held = self._units(cur, collaboration_id, member, limits.since_sequence)
        return BudgetStatus(
            member,
            limits.epsilon_total,
            eps * EPSILON_UNIT,
            eps_held * EPSILON_UNIT,
            limits.delta_total,
            dlt * DELTA_UNIT,
            dlt_held * DELTA_UNIT,
            limits.since_sequence,
        )

    # -- the life of a reservation --------------------------------------------------------------------------------
    def reserve(
        self,
        collaboration_id: str,
        charges: Sequence[Charge],
        limits: Limits,
        query: str = "",
        parameters: Mapping[str, Any] | None = None,
    ) -> Reservation:
        """Hold every charge, or RESOURCE_EXHAUSTED naming what was asked and what is left (nothing is held)."""
        if not charges:
            raise InvalidArgumentError("a release charges at least its requester")
        self._audit.require_intact(collaboration_id)  # fail closed: a cut or altered ledger spends nothing more
        eps_cap = total_units(limits.epsilon_total, EPSILON_UNIT)
        dlt_cap = total_units(limits.delta_total, DELTA_UNIT)
        reservation = Reservation(secrets.token_hex(8), collaboration_id, tuple(charges))
        with self._store.of(collaboration_id).transaction() as cur:
            for charge in charges:
                eps, dlt, eps_held, dlt_held = self._units(cur, collaboration_id, charge.member, limits.since_sequence)
                ask_eps, ask_dlt = charge.units
                who = "you have" if charge.member == reservation.requester else f"the recipient {charge.member} has"
                ledgers = (
                    ("epsilon", eps + eps_held, ask_eps, eps_cap, EPSILON_UNIT, charge.epsilon, limits.epsilon_total),
                    ("delta", dlt + dlt_held, ask_dlt, dlt_cap, DELTA_UNIT, charge.delta, limits.delta_total),
                )
                for what, used, ask, cap, unit, asked, total in ledgers:  # epsilon first, as the message names it
                    if used + ask > cap:
                        left = max(0, cap - used) * unit
                        raise ResourceExhaustedError(
                            f"privacy budget exhausted: the query asks {what} {asked:g} but {who} "
                            f"{left:g} left of {total:g} in collaborations/{collaboration_id}",
                            BudgetShortfall(charge.member, what, asked, left, total),
                        )
                cur.execute(
                    "INSERT INTO budget_reservations VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        reservation.id,
                        collaboration_id,
                        charge.member,
                        ask_eps * EPSILON_UNIT,
                        ask_dlt * DELTA_UNIT,
                        query,
                        canonical_json(dict(parameters or {})),
                    ],
                )
        return reservation

    def commit(
        self,
        reservation: Reservation,
        action: str,
        parameters: Mapping[str, Any],
        response: object,
        also: Callable[[duckdb.DuckDBPyConnection], object] | None = None,
    ) -> AuditEntry:
        """Debit the whole reservation by appending the query's audit entry (and the other members' charges).

        `also` writes what the query releases (an audience) in the same transaction. Returns the requester's entry.
        """
        return self.commit_with_status(reservation, action, parameters, response, None, also)[0]

    def commit_with_status(
        self,
        reservation: Reservation,
        action: str,
        parameters: Mapping[str, Any],
        response: object,
        limits: Limits | None,
        also: Callable[[duckdb.DuckDBPyConnection], object] | None = None,
    ) -> tuple[AuditEntry, BudgetStatus | None]:
        """`commit`, and with `limits` the requester's status right after the debit, read in the same transaction.

        The answer's remaining budget then costs no second transaction nor a second look at the chain (the
        reservation verified it; the next reservation verifies the entry appended here).
        """
        with self._store.of(reservation.collaboration).transaction() as cur:
            cur.execute("DELETE FROM budget_reservations WHERE id = ?", [reservation.id])
            if also is not None:
                also(cur)
            entry = _debit(self._audit, cur, reservation, action, parameters, response)
            status = None
            if limits is not None:
                status = self._status(cur, reservation.collaboration, reservation.requester, limits)
            return entry, status

    def charge_failure(self, reservation: Reservation, action: str, parameters: Mapping[str, Any]) -> AuditEntry:
        """Debit the whole reservation of a query that failed after reserving (its data may have been read)."""
        with self._store.of(reservation.collaboration).transaction() as cur:
            cur.execute("DELETE FROM budget_reservations WHERE id = ?", [reservation.id])
            return _debit(self._audit, cur, reservation, action, parameters, None)

    def release(self, reservation: Reservation) -> None:
        """Drop a reservation whose query read no data and released nothing."""
        with self._store.of(reservation.collaboration).transaction() as cur:
            cur.execute("DELETE FROM budget_reservations WHERE id = ?", [reservation.id])


def _debit(
    audit: AuditLog,
    cur: duckdb.DuckDBPyConnection,
    reservation: Reservation,
    action: str,
    parameters: Mapping[str, Any],
    response: object,
) -> AuditEntry:
    """Append a reservation's debit in `cur`'s transaction: the requester's entry, a `budget.charge` for the others."""
    entries = []
    for i, charge in enumerate(reservation.charges):
        eps_units, dlt_units = charge.units
        if i == 0:
            entries.append(
                audit.append(
                    cur,
                    reservation.collaboration,
                    charge.member,
                    action,
                    parameters,
                    epsilon=eps_units * EPSILON_UNIT,
                    delta=dlt_units * DELTA_UNIT,
                    response=response,
                )
            )
        else:
            audit.append(
                cur,
                reservation.collaboration,
                charge.member,
                "budget.charge",
                {"for": action, "requester": reservation.requester, "sequence": entries[0].sequence},
                epsilon=eps_units * EPSILON_UNIT,
                delta=dlt_units * DELTA_UNIT,
            )
    return entries[0]


def charge_interrupted(audit: AuditLog, collaboration_id: str, db: Database) -> None:
    """Charge every reservation a stop left open in a collaboration's file (see the module docstring).

    A `Store.on_open` hook: it runs when the file is first opened in a run, before any query can reserve there, so
    every reservation it finds belongs to an earlier run.
    """
    with db.transaction() as cur:
        rows = cur.execute(
            "SELECT id, collab, member, epsilon, delta, query, parameters_json FROM budget_reservations"
            " ORDER BY id, rowid"
        ).fetchall()
        by_id: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            by_id.setdefault(row[0], []).append(row)
        for rid, group in by_id.items():
            reservation = Reservation(rid, group[0][1], tuple(Charge(r[2], r[3], r[4]) for r in group))
            params = {**json.loads(group[0][6]), "query": group[0][5]}
            _debit(audit, cur, reservation, "query.interrupted", params, None)
        cur.execute("DELETE FROM budget_reservations")
