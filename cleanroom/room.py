"""A data directory opened: the database, the audit key and the domain services over them.

The server and the operator's local commands open a room the same way, so both append to the same chains with
the same key. The services an operator command needs (principals, collaborations) are built at once; the matching
and analytics services, with their heavier libraries, when first used, so `cleanroom admin` starts quickly.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from .audit import AuditLog, load_or_create_signing_key
from .audit.transparency import AuditTrees
from .collaborations import Collaborations
from .principals import Principals
from .storage import Database, StorageLimits

if TYPE_CHECKING:
    from .analytics import QueryEngine
    from .matching import Relay, TableUploads
    from .privacy import BudgetAccountant


class Room:
    """Everything a data directory holds, as services."""

    def __init__(self, data_dir: Path, db: Database) -> None:
        self.data_dir = data_dir
        self.db = db
        self.audit = AuditLog(db, load_or_create_signing_key(data_dir), data_dir / "audit-heads")
        self.trees = AuditTrees(self.audit)
        self.principals = Principals(db, self.audit)
        self.collaborations = Collaborations(db, self.audit, self.principals)

    @classmethod
    def open(cls, data_dir: Path, limits: StorageLimits | None = None) -> Room:
        """Open (creating on first use) the database and the signing key of `data_dir`, within `limits`."""
        return cls(data_dir, Database(data_dir, limits))

    @cached_property
    def relay(self) -> Relay:
        """The PSI relay and join."""
        from .analytics.audiences import forget_members
        from .matching import Relay

        return Relay(self.db, self.audit, on_retire=(forget_members,))

    @cached_property
    def tables(self) -> TableUploads:
        """The members' table uploads."""
        from .matching import TableUploads

        return TableUploads(self.db, self.audit)

    @cached_property
    def budget(self) -> BudgetAccountant:
        """The privacy budgets, charged before any data is read."""
        from .privacy import BudgetAccountant

        return BudgetAccountant(self.db, self.audit)

    @cached_property
    def queries(self) -> QueryEngine:
        """The DP query engine."""
        from .analytics import QueryEngine
        from .privacy import DiscreteLaplace

        return QueryEngine(self.db, self.collaborations, self.budget, self.audit, DiscreteLaplace())

    def close(self) -> None:
        """Close the database."""
        self.db.close()
