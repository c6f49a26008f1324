"""Which completed refresh renews a per-period budget: one rule, read by the server and by an auditor's SDK.

A `refresh.complete` entry's parameters say what the period changed: `members` maps each member to its counts (users
added, retired, rows appended) and `retire_only` marks a period of retirements alone. A period renews a per-period
budget only when it changed data and was not retirements alone: the same data would otherwise be queried again with a
fresh budget at every empty period, and a member's deletion of its own users must not hand every member a new budget.
The server records the decision beside the period (`cleanroom.matching.periods.record_complete`); an auditor's facts
recompute it from the signed entry with this same function.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def renews_budget(parameters: Mapping[str, Any]) -> bool:
    """Whether the `refresh.complete` entry with these parameters renews a per-period budget."""
    if parameters.get("retire_only"):
        return False
    counts = parameters.get("members") or {}
    return any(n for c in dict(counts).values() if isinstance(c, Mapping) for n in c.values())
