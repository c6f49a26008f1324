"""Persistence: one DuckDB file per data directory."""

from .database import Database

__all__ = ["Database"]
