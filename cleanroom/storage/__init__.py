"""Persistence: a data directory's catalogue and one DuckDB file per collaboration (see `store`)."""

from .database import Database, StorageLimits
from .store import LegacyLayoutError, Store

__all__ = ["Database", "LegacyLayoutError", "StorageLimits", "Store"]
