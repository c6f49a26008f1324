"""A data directory opened: the database, the audit key and the domain services over them.

The server and the operator's local commands open a room the same way, so both append to the same chains with
the same key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .analytics import QueryEngine
from .audit import AuditLog, load_or_create_signing_key
from .collaborations import Collaborations
from .matching import Relay, TableUploads
from .principals import Principals
from .privacy import BudgetAccountant, DiscreteLaplace
from .storage import Database, StorageLimits


@dataclass
class Room:
    """Everything a data directory holds, as services."""

    data_dir: Path
    db: Database
    audit: AuditLog
    principals: Principals
    collaborations: Collaborations
    relay: Relay
    tables: TableUploads
    budget: BudgetAccountant
    queries: QueryEngine

    @classmethod
    def open(cls, data_dir: Path, limits: StorageLimits | None = None) -> Room:
        """Open (creating on first use) the database and the signing key of `data_dir`, within `limits`."""
        db = Database(data_dir, limits)
        audit = AuditLog(db, load_or_create_signing_key(data_dir), data_dir / "audit-heads")
        principals = Principals(db, audit)
        collaborations = Collaborations(db, audit, principals)
        budget = BudgetAccountant(db, audit)
        return cls(
            data_dir=data_dir,
            db=db,
            audit=audit,
            principals=principals,
            collaborations=collaborations,
            relay=Relay(db, audit),
            tables=TableUploads(db, audit),
            budget=budget,
            queries=QueryEngine(db, collaborations, budget, audit, DiscreteLaplace()),
        )

    def close(self) -> None:
        """Close the database."""
        self.db.close()
