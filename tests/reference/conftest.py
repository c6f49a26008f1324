"""Reference tests: the engine in-process on data built by tests/privacy/privacy_data.py, against pandas."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "privacy"))

from privacy_data import rooms

__all__ = ["rooms"]
