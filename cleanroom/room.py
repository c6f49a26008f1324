"""A data directory opened: its files, the audit key and the domain services over them.

The server and the operator's local commands open a room the same way, so both append to the same chains with
the same key. The services an operator command needs (principals, collaborations) are built at once; the matching
and analytics services, with their heavier libraries, when first used, so `cleanroom admin` starts quickly.

Storage is a catalogue plus one file per collaboration (`cleanroom.storage.store`): every service reaches a
collaboration's data through `store.of(collaboration_id)`, so nothing it does locks or waits on another
collaboration's file. Two checks run when a collaboration's file first opens, before any request may use it: its
audit chain is verified (a broken chain closes its budget) and reservations a stop left open are charged.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from .audit import AuditLog, load_or_create_signing_key
from .audit.transparency import AuditTrees
from .collaborations import Collaborations
from .principals import Principals
from .storage import Database, StorageLimits, Store

if TYPE_CHECKING:
    from .analytics import QueryEngine
    from .matching import Relay, TableUploads
    from .privacy import BudgetAccountant


class Room:
    """Everything a data directory holds, as services."""

    def __init__(self, data_dir: Path, store: Store) -> None:
        self.data_dir = data_dir
        self.store = store
        self.audit = AuditLog(store, load_or_create_signing_key(data_dir), data_dir / "audit-heads")
        self.trees = AuditTrees(self.audit)
        store.on_open(self._charge_interrupted)
        self.principals = Principals(store, self.audit)
        self.collaborations = Collaborations(store, self.audit, self.principals)

    def _charge_interrupted(self, collaboration_id: str, db: Database) -> None:
        """Charge the reservations a stop left open in a collaboration's file (an open hook, after the audit's)."""
        from .privacy.budget import charge_interrupted  # here: the privacy package loads OpenDP

        charge_interrupted(self.audit, collaboration_id, db)

    @classmethod
    def open(cls, data_dir: Path, limits: StorageLimits | None = None) -> Room:
        """Open (creating on first use) the catalogue and the signing key of `data_dir`, within `limits`."""
        return cls(data_dir, Store(data_dir, limits))

    @cached_property
    def relay(self) -> Relay:
        """The PSI relay and join."""
        from .analytics.audiences import forget_members
        from .matching import Relay

        return Relay(self.store, self.audit, on_retire=(forget_members,))

    @cached_property
    def tables(self) -> TableUploads:
        """The members' table uploads."""
        from .matching import TableUploads

        return TableUploads(self.store, self.audit)

    @cached_property
    def budget(self) -> BudgetAccountant:
        """The privacy budgets, charged before any data is read."""
        from .privacy import BudgetAccountant

        return BudgetAccountant(self.store, self.audit)

    @cached_property
    def queries(self) -> QueryEngine:
        """The DP query engine."""
        from .analytics import QueryEngine
        from .privacy import DiscreteLaplace

        return QueryEngine(self.store, self.collaborations, self.budget, self.audit, DiscreteLaplace())

    def interrupt(self) -> None:
        """Cancel every running statement and refuse new work (the first step of stopping)."""
        self.store.interrupt()

    def close(self, timeout: float | None = None) -> bool:
        """Checkpoint and close every file (waiting at most `timeout` seconds; False if one stayed open)."""
        return self.store.close(timeout)
