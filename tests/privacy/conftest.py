"""Fixtures of the privacy suite (the builders and the `rooms` fixture are in privacy_data.py)."""

from __future__ import annotations

from privacy_data import rooms

__all__ = ["rooms"]
