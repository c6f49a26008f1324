"""Each table has one owner: only that module's SQL names it; every other module reads through its functions.

The schema (CREATE TABLE) is `cleanroom/storage/database.py`'s; reading or writing rows is the owner's alone.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3] / "cleanroom"

OWNERS = {
    "collaborations": "collaborations.py",
    "members": "collaborations.py",
    "collaboration_index": "collaborations.py",
    "memberships": "collaborations.py",
    "principals": "principals.py",
    "auditors": "principals.py",
    "uploads": "matching/progress.py",
    "row_counts": "matching/progress.py",
    "staged_points": "matching/relay.py",
    "offers": "matching/relay.py",
    "double_points": "matching/relay.py",
    "chain_points": "matching/relay.py",
    "match_keys": "matching/join.py",
    "matches": "matching/join.py",
    "match_results": "matching/join.py",
    "data_tables": "matching/tables.py",
    "periods": "matching/periods.py",
    "retirements": "matching/periods.py",
    "period_sizes": "matching/periods.py",
    "audit_log": "audit/log.py",
    "budget_reservations": "privacy/budget.py",
    "audiences": "analytics/audiences.py",
    "audience_members": "analytics/audiences.py",
}


def test_every_table_in_the_schema_has_an_owner():
    schema = (ROOT / "storage" / "database.py").read_text()
    assert set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", schema)) == set(OWNERS)


def test_only_the_owner_reads_or_writes_a_table():
    offenders = []
    for path in ROOT.rglob("*.py"):
        module = path.relative_to(ROOT).as_posix()
        if module == "storage/database.py":
            continue
        text = path.read_text()
        for table, owner in OWNERS.items():
            if module != owner and re.search(rf"\b(FROM|JOIN|INTO|UPDATE|TABLE)\s+{table}\b", text):
                offenders.append(f"{module} uses {table} (owner: {owner})")
    assert offenders == []
