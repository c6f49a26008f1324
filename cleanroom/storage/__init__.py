"""Persistence: one DuckDB file per data directory."""

from .database import Database, StorageLimits

__all__ = ["Database", "StorageLimits"]
