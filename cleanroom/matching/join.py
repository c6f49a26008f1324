"""The join: rows of the two members whose doubly blinded keys agree, resolved to a one-to-one matching.

Guarantee: every row of either member is in at most one pair. Identifier types are taken in the fixed priority
order email, phone, device_id, custom; a pair found on an earlier type takes both rows out of consideration for
later types. Within one type, rows sharing a key (duplicates on one side) are paired by their rank in surrogate id
order, so k rows against m rows with the same key give min(k, m) pairs, deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

from cleanroom_client.identity import IdentifierType

from ..storage.database import first

_JOIN_ONE_TYPE = """
INSERT INTO matches
WITH a AS (
    SELECT row_id, dkey, row_number() OVER (PARTITION BY dkey ORDER BY row_id) AS r
    FROM match_keys k
    WHERE collab = $collab AND member = $ma AND id_type = $t
      AND NOT EXISTS (SELECT 1 FROM matches m WHERE m.collab = $collab AND m.row_a = k.row_id)
), b AS (
    SELECT row_id, dkey, row_number() OVER (PARTITION BY dkey ORDER BY row_id) AS r
    FROM match_keys k
    WHERE collab = $collab AND member = $mb AND id_type = $t
      AND NOT EXISTS (SELECT 1 FROM matches m WHERE m.collab = $collab AND m.row_b = k.row_id)
)
SELECT $collab, $ma, a.row_id, $mb, b.row_id, $t FROM a JOIN b USING (dkey, r)
"""


def join_matches(cur: duckdb.DuckDBPyConnection, collab: str, members: tuple[str, str]) -> None:
    """Compute the one-to-one matching from both members' keys and mark the collaboration matched.

    `members` is sorted by name: the first is `member_a` in the `matches` table. Call inside a transaction.
    """
    member_a, member_b = members
    for t in sorted(IdentifierType, key=lambda t: t.priority):
        cur.execute(_JOIN_ONE_TYPE, {"collab": collab, "ma": member_a, "mb": member_b, "t": t.priority + 1})
    cur.execute("INSERT INTO match_results VALUES (?, ?)", [collab, datetime.now(UTC).replace(tzinfo=None)])


@dataclass(frozen=True)
class MatchStats:
    """Exact counts for the operator: keys shared per type, and pairs each type decided under the priority."""

    id_type: IdentifierType
    shared_keys: int
    pairs: int


def match_stats(cur: duckdb.DuckDBPyConnection, collab: str) -> tuple[list[MatchStats], int]:
    """Per-type exact counts and the total of matched pairs. Operator-only: members never see exact counts."""
    stats = []
    for t in IdentifierType:
        code = t.priority + 1
        shared = first(
            cur.execute(
                "SELECT count(*) FROM (SELECT DISTINCT a.dkey FROM match_keys a JOIN match_keys b"
                " ON a.dkey = b.dkey AND a.member < b.member"
                " WHERE a.collab = $c AND b.collab = $c AND a.id_type = $t AND b.id_type = $t)",
                {"c": collab, "t": code},
            )
        )
        pairs = first(cur.execute("SELECT count(*) FROM matches WHERE collab = ? AND id_type = ?", [collab, code]))
        stats.append(MatchStats(t, int(shared[0]) if shared else 0, int(pairs[0]) if pairs else 0))
    return stats, sum(s.pairs for s in stats)
