"""The join: rows of two members whose fully blinded keys agree, resolved to a one-to-one matching that is stable.

With three or more members, every other member is joined this way with the hub (the brand); a person of the hub
is then linked to at most one row of each other member. What one row changes then: a row of a member other than
the hub takes part in one join (at most c pairs change), a row of the hub in each of the N - 1 joins (at most c
pairs in each). A query over the hub's users matched with k members therefore sees at most k * c of its people
change (`cleanroom_client.policy.population_stability`).

Rule. For each identifier type the policy allows, a key *links* a row of A to a row of B when the key occurs on
exactly one row of A and exactly one row of B for that type (each row carries at most one key per type). A pair
(a, b) is matched when a's links all go to b and b's links all go to a, i.e. when the connected component of the
link graph is exactly {a, b} (one or more links between them). Nothing else is matched: a row whose identifiers
point at two different people on the other side is left out, whatever the other rows are.

Guarantees:
- one-to-one: every row of either member is in at most one pair;
- deterministic, and independent of row order and of the order identifier types are listed in;
- stability (what the differential privacy of every query rests on). Neighbouring datasets differ by one row of
  either member (with its keys). Removing (or adding) one row changes the set of matched pairs by at most
  `stability_constant(T)` pairs (each pair that appears or disappears counts once), where T is the number of
  identifier types the policy allows:

    T = 1: 1.      T >= 2: 2T.

Proof. Let r be the removed row, of A (B is symmetric). For each type t, r's key k is in one of three cases.
(i) k is on r alone in A and on one row b of B: the link r-b disappears. (ii) k is on r and exactly one other
row r' of A, and on exactly one row s of B: the key becomes unique, so the link r'-s appears. (iii) otherwise
(k is on 3+ rows of A, or on 0 or 2+ rows of B): no link changes. No other link changes, since uniqueness of a
key depends only on the rows that carry it, and per type every key links at most one row on each side, so each
row has at most T links. Components change only around r and the new links:
- Removing r (with its case-(i) links) destroys r's own pair, if any, and splits r's component; each piece
  contains one of r's neighbours, so at most one new pair appears per neighbour. If r was paired with b, all of
  r's links go to b and no other pair can appear from this. So case (i) costs at most 1 pair per type, plus 1
  for r's own pair, and at most 1 in total when r was paired.
- A new link r'-s (case ii) merges the components of r' and s: it destroys the pairs r' and s were in (at most
  2), or, when neither was paired and both had no other link, creates the pair {r', s} (1). It cannot do both.
  With T = 1 a row has no other type to be linked by, so neither r' nor s had any link: the new link creates
  exactly one pair, and it is r's only type, so the total is 1.
Taking these steps one after another (the set of pairs changes by at most the sum of the steps' changes) and
summing over r's at most T types: at most 1 + (T-1) * 2 when r had a link, and at most 2T when it had none.
Hence 2T for T >= 2. The bound is reached (T = 2: r's email and phone each shared with one other brand row that
is paired through its other identifier, and found on one platform row that is also paired). A property test
(tests/privacy/test_join_stability.py) searches random small datasets with duplicate and conflicting keys for a
removal that changes more pairs, and checks that the bound is reached.

Every sensitivity the query engine states is the per-pair sensitivity multiplied by this constant. The constant
itself is a function of the policy, so it lives with it (`cleanroom_client.policy.stability_constant`); this
module is its proof.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

from cleanroom_client.identity import IdentifierType
from cleanroom_client.policy import stability_constant
from cleanroom_client.protocol import ID_TYPE_CODES

from ..storage.database import first, in_memory, integer

#: What other modules use; `ID_TYPE_CODES` and `stability_constant` are re-exported (the rule's codes and its bound).
__all__ = [
    "ID_TYPE_CODES",
    "MatchStats",
    "add_keys",
    "forget_rows",
    "forget_rows_from",
    "is_matched",
    "join_matches",
    "join_of_rows",
    "key_set_sizes",
    "keyed_rows_from",
    "label_pairs",
    "match_stats",
    "matched_people",
    "matched_time",
    "note_retired_keys",
    "record_pairs",
    "rejoin_around",
    "spoke_pairs",
    "stability_constant",
]


# The rule, as SQL: the whole join (`join_matches`) and the join around retired keys (`rejoin_around`) build their
# statements from these three, so both apply the same rule.


def _links(table: str, keys: str, where: str) -> str:
    """Into `table`: a link per (type, key) of `keys` (match_keys rows) found on exactly one row of each member."""
    return f"""
CREATE OR REPLACE TEMP TABLE {table} AS
SELECT id_type,
       min(row_id) FILTER (WHERE member = $ma) AS row_a,
       min(row_id) FILTER (WHERE member = $mb) AS row_b
FROM {keys}
WHERE {where}
GROUP BY id_type, dkey
HAVING count(*) FILTER (WHERE member = $ma) = 1 AND count(*) FILTER (WHERE member = $mb) = 1
"""


def _pairs(links: str, only: str = "") -> str:
    """Into `join_pairs`: the pairs of `links` whose rows link to each other only, those meeting `only` if given.

    min = max: every link of the row goes to one row on the other side.
    """
    where = f"WHERE {only}\n" if only else ""
    return f"""
CREATE OR REPLACE TEMP TABLE join_pairs AS
WITH degree_a AS (
    SELECT row_a FROM {links} GROUP BY row_a HAVING min(row_b) = max(row_b)
), degree_b AS (
    SELECT row_b FROM {links} GROUP BY row_b HAVING min(row_a) = max(row_a)
)
SELECT row_a, row_b, min(id_type) AS id_type
FROM {links} SEMI JOIN degree_a USING (row_a) SEMI JOIN degree_b USING (row_b)
{where}GROUP BY row_a, row_b
"""


def _end_pairs(only: str = "") -> str:
    """A refresh: the current pairs (those meeting `only`, if given) that are not in `join_pairs` end at `$period`."""
    also = f"  AND {only}\n" if only else ""
    return f"""
UPDATE matches SET period_to = $period
WHERE collab = $collab AND member_a = $ma AND member_b = $mb AND period_to IS NULL
{also}  AND NOT EXISTS (SELECT 1 FROM join_pairs j WHERE j.row_a = matches.row_a AND j.row_b = matches.row_b)
"""


#: The whole join: its links in one aggregation over the keys (it spills to disk under the server's memory cap;
#: the same rule written as a self-join of the unique keys, with the links as a CTE read three times, ran out of
#: memory at 100M x 100M under a 2.5 GB cap and at 10M x 10M under 120 MB).
_LINKS = _links("join_links", "match_keys", "collab = $collab AND list_contains($types::TINYINT[], id_type)")
_PAIRS = _pairs("join_links")
#: A refresh: pairs that no longer hold end at this period; new pairs start at it; pairs that still hold go on.
_END_PAIRS = _end_pairs()
_START_PAIRS = """
INSERT INTO matches
SELECT $collab, $ma, j.row_a, $mb, j.row_b, j.id_type, $period, NULL
FROM join_pairs j
ANTI JOIN (
    SELECT row_a, row_b FROM matches WHERE collab = $collab AND member_a = $ma AND member_b = $mb AND period_to IS NULL
) USING (row_a, row_b)
"""


def add_keys(cur: duckdb.DuckDBPyConnection, select: str, params: Sequence[object]) -> None:
    """Store the join's input: `select` yields (collab, member, id_type, row_id, dkey) rows of doubly blinded keys."""
    cur.execute(f"INSERT INTO match_keys {select}", list(params))


def is_matched(cur: duckdb.DuckDBPyConnection, collaboration_id: str) -> bool:
    """Whether the join of the collaboration is done (its pairs are final)."""
    return first(cur.execute("SELECT 1 FROM match_results WHERE collab = ?", [collaboration_id])) is not None


def _member_name(name: str) -> str:
    """A member name, checked again before it goes into SQL (policy-validated: lower-case letters, digits, '_')."""
    if not name or not name.replace("_", "").isalnum() or not name.isascii() or name != name.lower():
        raise ValueError(f"not a member name: {name!r}")
    return name


def spoke_pairs(period: int, hub: str, spoke: str, collab_param: str = "$collab") -> str:
    """The pairs of the hub and one other member that hold in `period`, as a relation (`row_<hub>`, `row_<spoke>`)."""
    p = int(period)
    hub, spoke = _member_name(hub), _member_name(spoke)
    return (
        f"(SELECT row_a AS row_{hub}, row_b AS row_{spoke} FROM matches WHERE collab = {collab_param}"
        f" AND member_a = '{hub}' AND member_b = '{spoke}' AND period_from <= {p}"
        f" AND (period_to IS NULL OR period_to > {p}))"
    )


def matched_people(
    period: int, hub: str, spokes: Sequence[str], collab_param: str = "$collab", any_of: bool = False
) -> str:
    """The people of `period`: the hub's rows matched with a row of every member in `spokes`, as a relation.

    One row per such hub row, with one column per member, `row_<member>`: its row in that member's data (the hub's
    included). With `any_of`, the hub's rows matched with at least one of them instead, the others' columns NULL
    where there is no match (one person however many members know them). With two members and the peer as the one
    spoke both are the matching's pairs. `collab_param` names the query parameter holding the collaboration id.
    Readers join this relation rather than the `matches` table, whose layout stays this module's business.
    """
    if not spokes:
        raise ValueError("a population names at least one member besides the hub")
    sources = [spoke_pairs(period, hub, s, collab_param) for s in spokes]
    if len(sources) == 1:
        return sources[0]
    columns = ", ".join([f"p0.row_{hub}", *(f"p{i}.row_{s}" for i, s in enumerate(spokes))])
    if any_of:  # each join's pairs read once, as a CTE: once for the hub rows, once for the member's column
        ctes = ", ".join(f"p{i} AS MATERIALIZED {src}" for i, src in enumerate(sources))
        hubs = " UNION ".join(f"SELECT row_{hub} FROM p{i}" for i in range(len(sources)))
        columns = ", ".join([f"h.row_{hub}", *(f"p{i}.row_{s}" for i, s in enumerate(spokes))])
        joins = " ".join(f"LEFT JOIN p{i} ON p{i}.row_{hub} = h.row_{hub}" for i in range(len(sources)))
        return f"(WITH {ctes} SELECT {columns} FROM ({hubs}) h {joins})"
    joins = " ".join(f"JOIN {src} p{i} USING (row_{hub})" for i, src in enumerate(sources) if i)
    return f"(SELECT {columns} FROM {sources[0]} p0 {joins})"


def matched_time(cur: duckdb.DuckDBPyConnection, collaboration_id: str) -> datetime | None:
    """When the match (period 0) completed."""
    row = first(cur.execute("SELECT matched_time FROM match_results WHERE collab = ?", [collaboration_id]))
    return row[0] if row else None


def forget_rows(
    cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, rows: str, params: Sequence[object]
) -> None:
    """Delete the keys of `member`'s rows in the relation `rows` (`row_id`), and every pair they were in, in any period.

    A retired user is gone from the join's input and from its history: no later query of any period sees them.
    """
    cur.execute(
        f"DELETE FROM match_keys WHERE collab = ? AND member = ? AND row_id IN {rows}",
        [collaboration_id, member, *params],
    )
    for side, member_column in (("row_a", "member_a"), ("row_b", "member_b")):
        cur.execute(
            f"DELETE FROM matches WHERE collab = ? AND {member_column} = ? AND {side} IN {rows}",
            [collaboration_id, member, *params],
        )


def forget_rows_from(cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, first_row: int) -> None:
    """Delete the keys of `member`'s rows numbered `first_row` and above, and every pair they were in.

    A condition on what is stored, never a list of row numbers: its cost is that of the stored keys, whatever
    number of rows a member claimed (`total_rows` is the member's word, and may say 2^62).
    """
    cur.execute(
        "DELETE FROM match_keys WHERE collab = ? AND member = ? AND row_id >= ?", [collaboration_id, member, first_row]
    )
    for side, member_column in (("row_a", "member_a"), ("row_b", "member_b")):
        cur.execute(
            f"DELETE FROM matches WHERE collab = ? AND {member_column} = ? AND {side} >= ?",
            [collaboration_id, member, first_row],
        )


def keyed_rows_from(cur: duckdb.DuckDBPyConnection, collaboration_id: str, member: str, first_row: int) -> int:
    """How many of `member`'s rows numbered `first_row` and above carry a stored key (counted, never claimed)."""
    return integer(
        cur.execute(
            "SELECT count(DISTINCT row_id) FROM match_keys WHERE collab = ? AND member = ? AND row_id >= ?",
            [collaboration_id, member, first_row],
        ),
        0,
    )


def key_set_sizes(cur: duckdb.DuckDBPyConnection, collaboration_id: str) -> dict[str, int]:
    """Each member's rows that carry at least one doubly blinded key (its set size after a refresh)."""
    rows = cur.execute(
        "SELECT member, count(DISTINCT row_id) FROM match_keys WHERE collab = ? GROUP BY member", [collaboration_id]
    ).fetchall()
    return {str(m): int(n) for m, n in rows}


def record_pairs(cur: duckdb.DuckDBPyConnection, collaboration_id: str, members: tuple[str, str], pairs: str) -> None:
    """Store a finished matching given as a registered relation `pairs` (a, b) and mark the collaboration matched.

    `members` is (hub, other): `a` holds the hub's rows.

    For loading a known matching at benchmark sizes without the PSI (`cleanroom.devtools.synthetic.load_direct`).
    """
    cur.execute(
        f"INSERT INTO matches SELECT ?, ?, a, ?, b, 1, 0, NULL FROM {pairs}", [collaboration_id, members[0], members[1]]
    )
    cur.execute("INSERT INTO match_results VALUES (?, ?)", [collaboration_id, datetime.now(UTC).replace(tzinfo=None)])


def label_pairs(cur: duckdb.DuckDBPyConnection, collaboration_id: str, id_type: int) -> None:
    """Give every recorded pair of a collaboration the linking type `id_type` (a code of `ID_TYPE_CODES`).

    For matchings loaded with `record_pairs` whose keys are then stored too (`synthetic.load_keyed_match`), so that
    the pairs carry the type a join of those keys would give them.
    """
    cur.execute("UPDATE matches SET id_type = ? WHERE collab = ?", [id_type, collaboration_id])


def join_matches(
    cur: duckdb.DuckDBPyConnection,
    collaboration_id: str,
    members: Sequence[str],
    types: Sequence[IdentifierType],
    period: int = 0,
) -> None:
    """Compute the matching of `period` from the members' keys of the allowed `types`.

    `members` is the hub first, then every other member: each other member is joined with the hub, one to one, by
    the rule above (a third member's keys never affect the pairs of two others: links count rows per member). With
    two members, the one join is the collaboration's. Period 0 is the match: its pairs are stored and the
    collaboration marked matched. A refresh period recomputes the whole join over the keys as they now are (the
    rule is global: a new row can break an old pair) and records the difference: pairs that no longer hold end,
    new pairs start, the rest go on. In the `matches` table `member_a` is the hub. A pair's `id_type` is the
    highest-priority type that links it (for the operator's statistics). Call inside a transaction: the links live
    in temporary tables of this connection, dropped before returning.
    """
    hub, *spokes = members
    codes = sorted(ID_TYPE_CODES[t] for t in types)
    for spoke in spokes:
        cur.execute(_LINKS, {"collab": collaboration_id, "ma": hub, "mb": spoke, "types": codes})
        cur.execute(_PAIRS)
        if period:
            cur.execute(_END_PAIRS, {"collab": collaboration_id, "ma": hub, "mb": spoke, "period": period})
        cur.execute(_START_PAIRS, {"collab": collaboration_id, "ma": hub, "mb": spoke, "period": period})
        cur.execute("DROP TABLE join_pairs")
        cur.execute("DROP TABLE join_links")
    if not period:
        cur.execute(
            "INSERT INTO match_results VALUES (?, ?)", [collaboration_id, datetime.now(UTC).replace(tzinfo=None)]
        )


#: Links of the rows in `around_rows` (member, row_id): every (type, key) such a row carries, linked when it is on
#: exactly one row of each member (uniqueness counted over all stored keys). Two scans of match_keys, each filtered
#: by a small relation (the keys are a table of their own: as a CTE, DuckDB planned the scans several times slower).
_KEYS_AROUND = """
CREATE OR REPLACE TEMP TABLE around_keys AS
SELECT DISTINCT id_type, dkey FROM match_keys SEMI JOIN around_rows USING (member, row_id)
WHERE collab = $collab AND member IN ($ma, $mb) AND list_contains($types::TINYINT[], id_type)
"""
_LINKS_AROUND = _links(
    "around_links",
    "match_keys SEMI JOIN around_keys USING (id_type, dkey)",
    "collab = $collab AND member IN ($ma, $mb)",
)

#: The rows whose links a retirement can change: those of either member carrying a (type, key) a retired row had.
_RETIRED_AROUND = """
CREATE OR REPLACE TEMP TABLE retired_around AS
SELECT DISTINCT member, row_id FROM match_keys SEMI JOIN retired_keys USING (id_type, dkey)
WHERE collab = $collab AND member IN ($ma, $mb)
"""
#: A pair with a row in `retired_around`.
_TOUCHES_RETIRED = (
    "(row_a IN (SELECT row_id FROM retired_around WHERE member = $ma)"
    " OR row_b IN (SELECT row_id FROM retired_around WHERE member = $mb))"
)

#: The pairs with a row in `retired_around`: both rows are in `around_rows` (their links complete in around_links).
_PAIRS_AROUND = _pairs("around_links", _TOUCHES_RETIRED)
#: End the current pairs with a row in `retired_around` that no longer hold (pairs elsewhere cannot have changed).
_END_PAIRS_AROUND = _end_pairs(_TOUCHES_RETIRED)


def note_retired_keys(
    cur: duckdb.DuckDBPyConnection,
    collaboration_id: str,
    member: str,
    rows: str,
    params: Sequence[object],
    types: Sequence[IdentifierType],
) -> int:
    """Note the (type, key) pairs `member`'s rows in the relation `rows` carry, before `forget_rows` deletes them.

    They go to the temporary table `retired_keys` of this connection, which `rejoin_around` reads and drops; call
    once per member that retires rows, inside the transaction that forgets them. Returns how many of the rows carry
    a key (of any type): what forgetting them takes off the member's key set size (`key_set_sizes`).
    """
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS retired_keys (id_type TINYINT, dkey BIGINT)")
    cur.execute(
        f"INSERT INTO retired_keys SELECT DISTINCT id_type, dkey FROM match_keys"
        f" WHERE collab = ? AND member = ? AND list_contains(?::TINYINT[], id_type) AND row_id IN {rows}",
        [collaboration_id, member, sorted(ID_TYPE_CODES[t] for t in types), *params],
    )
    return integer(
        cur.execute(
            f"SELECT count(DISTINCT row_id) FROM match_keys WHERE collab = ? AND member = ? AND row_id IN {rows}",
            [collaboration_id, member, *params],
        ),
        0,
    )


def rejoin_around(
    cur: duckdb.DuckDBPyConnection,
    collaboration_id: str,
    members: Sequence[str],
    types: Sequence[IdentifierType],
    period: int,
) -> None:
    """Record refresh `period` after retirements alone, recomputing the join only around the retired keys.

    It records exactly what `join_matches(period)` would, when the only change since the last period is that the
    rows whose keys `note_retired_keys` noted were forgotten, at a cost in proportion to the rows around them (a few
    scans of match_keys filtered by a small key set; no aggregation over the whole join). Why that is exact: with K
    the retired (type, key) pairs, a key's links depend only on the rows that carry it, so only keys in K link
    differently, and only rows carrying one (R1, `retired_around`) gain or lose a link. A component that changed
    contains a row of R1 (a piece split off a retired row was linked to it through a key in K, so its row there
    carries that key; a new link has its key in K). A pair's status depends only on its two rows' links, so pairs
    with no row in R1 are unchanged. Every pair with a row in R1 is found from the links of R1 and of their other
    ends N1, complete for those rows. Those pairs are compared with the current ones with a row in R1: the ones that
    no longer hold end at `period`, new ones start at it. Call inside a transaction, after `forget_rows`.
    """
    hub, *spokes = members
    codes = sorted(ID_TYPE_CODES[t] for t in types)
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS retired_keys (id_type TINYINT, dkey BIGINT)")
    for spoke in spokes:
        params = {"collab": collaboration_id, "ma": hub, "mb": spoke}
        cur.execute(_RETIRED_AROUND, params)
        cur.execute("CREATE OR REPLACE TEMP TABLE around_rows AS SELECT * FROM retired_around")
        cur.execute(_KEYS_AROUND, params | {"types": codes})
        cur.execute(_LINKS_AROUND, params)
        cur.execute(
            "INSERT INTO around_rows SELECT $ma, row_a FROM around_links UNION SELECT $mb, row_b FROM around_links",
            {"ma": hub, "mb": spoke},
        )
        cur.execute(_KEYS_AROUND, params | {"types": codes})
        cur.execute(_LINKS_AROUND, params)
        cur.execute(_PAIRS_AROUND, {"ma": hub, "mb": spoke})
        cur.execute(_END_PAIRS_AROUND, params | {"period": period})
        cur.execute(_START_PAIRS, params | {"period": period})
        for table in ("join_pairs", "around_links", "around_keys", "around_rows", "retired_around"):
            cur.execute(f"DROP TABLE {table}")
    cur.execute("DROP TABLE retired_keys")


def join_of_rows(
    rows_a: Sequence[Mapping[IdentifierType, int]],
    rows_b: Sequence[Mapping[IdentifierType, int]],
    types: Sequence[IdentifierType],
) -> dict[tuple[int, int], IdentifierType]:
    """The pairs `join_matches` finds between two members given row by row: rows_a[i] is row i's key per type.

    Keys are the doubly blinded tags read as signed 64-bit integers (0, the rejected point's tag, never links).
    Returns (row of A, row of B) -> the pair's highest-priority linking type. It runs the server's own statements on
    an in-memory database, so the conformance kit's expectation and the join vectors of PROTOCOL.md section 6 are
    the server's rule itself, not a restatement of it.
    """
    con = in_memory()
    try:
        keys = [
            ("c", member, ID_TYPE_CODES[t], i, key)
            for member, rows in (("a", rows_a), ("b", rows_b))
            for i, row in enumerate(rows)
            for t, key in row.items()
            if key != 0
        ]
        if keys:
            con.executemany("INSERT INTO match_keys VALUES (?, ?, ?, ?, ?)", keys)
        join_matches(con, "c", ("a", "b"), types)
        by_code = {code: t for t, code in ID_TYPE_CODES.items()}
        found = con.execute("SELECT row_a, row_b, id_type FROM matches").fetchall()
        return {(int(a), int(b)): by_code[int(code)] for a, b, code in found}
    finally:
        con.close()


@dataclass(frozen=True)
class MatchStats:
    """Exact counts for the operator: keys shared per type, and pairs whose best link is of that type."""

    id_type: IdentifierType
    shared_keys: int
    pairs: int


def match_stats(cur: duckdb.DuckDBPyConnection, collaboration_id: str) -> tuple[list[MatchStats], int]:
    """Per-type exact counts and the total of matched pairs. Operator-only: members never see exact counts."""
    stats = []
    for t in IdentifierType:
        code = ID_TYPE_CODES[t]
        shared = first(
            cur.execute(
                "SELECT count(*) FROM (SELECT DISTINCT a.dkey FROM match_keys a JOIN match_keys b"
                " ON a.dkey = b.dkey AND a.member < b.member"
                " WHERE a.collab = $c AND b.collab = $c AND a.id_type = $t AND b.id_type = $t)",
                {"c": collaboration_id, "t": code},
            )
        )
        pairs = first(
            cur.execute(
                "SELECT count(*) FROM matches WHERE collab = ? AND id_type = ? AND period_to IS NULL",
                [collaboration_id, code],
            )
        )
        stats.append(MatchStats(t, int(shared[0]) if shared else 0, int(pairs[0]) if pairs else 0))
    return stats, sum(s.pairs for s in stats)
