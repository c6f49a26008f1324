"""Query speed on many matched people: each DP query against the same aggregate as plain DuckDB SQL, same file.

The data (brand tiers; platform age bands, 4A stages and a two-snapshot stage history) is written straight into a
data directory; the PSI is not what is measured here. Each query runs through `QueryEngine` exactly as an RPC
would (policy, budget, SQL, OpenDP noise, suppression, audit entry); its peer is the bare GROUP BY that computes
the same exact counts, with no privacy and no zero-filling. The ratio is what privacy costs in time.

Usage: python benchmarks/bench_queries.py [--people 10000000] [--repeat 3] [--memory-limit 3GB] [--dir DIR]
[--json out.json]

With --memory-limit the room's DuckDB runs within that cap (the server option `cleanroom serve --memory-limit`),
spilling next to the data directory; --dir puts the data directory on a disk with room (100M people: ~5 GB).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from cleanroom.analytics import FunnelFlowQuery, FunnelQuery, OverlapQuery, SegmentInsightQuery
from cleanroom.analytics.queries import DimensionRef
from cleanroom.devtools.synthetic import AGE_BANDS, DEMO_POLICY, STAGES, TIERS, load_direct
from cleanroom.matching.tables import physical_name
from cleanroom.principals import Principal, Role
from cleanroom.room import Room
from cleanroom.storage import StorageLimits
from cleanroom.storage.database import quote_ident

POLICY = DEMO_POLICY.replace("per_member_total: 10.0", "per_member_total: 1000.0")
BRAND = Principal("brand", Role.MEMBER)


def _slice(rng: np.random.Generator, start: int, stop: int) -> tuple[dict[tuple[str, str], pa.Table], np.ndarray]:
    """People `start` .. `stop` - 1: their tables, and their row numbers (matched to the same number)."""
    people = stop - start
    ids = np.arange(start, stop, dtype=np.int64)
    stages = np.array([*STAGES, None], dtype=object)
    tables = {
        ("brand", "users"): pa.table({"row_id": ids, "tier": np.array(TIERS)[rng.integers(0, 3, people)]}),
        ("platform", "users"): pa.table(
            {
                "row_id": ids,
                "age_band": np.array(AGE_BANDS)[rng.integers(0, 4, people)],
                "stage_4a": stages[rng.integers(0, 5, people)],
            }
        ),
        ("platform", "stage_history"): pa.table(
            {
                "row_id": np.concatenate([ids, ids]),
                "date": pa.array([dt.date(2026, 10, 1)] * 1 + [dt.date(2026, 11, 1)] * 1, type=pa.date32()).take(
                    np.repeat([0, 1], people)
                ),
                "stage_4a": np.array(STAGES)[rng.integers(0, 4, 2 * people)],
            }
        ),
    }
    return tables, ids


def build(room: Room, people: int, seed: int = 1, slice_people: int = 5_000_000) -> str:
    """A matched collaboration of `people` people, written directly, `slice_people` at a time (flat memory)."""
    c = room.collaborations.create(BRAND, "bench", POLICY)
    for m in (BRAND, Principal("platform", Role.MEMBER)):
        room.collaborations.approve(m, c.id, c.policy_etag)
    rng = np.random.default_rng(seed)
    for start in range(0, people, slice_people):
        tables, ids = _slice(rng, start, min(people, start + slice_people))
        if start == 0:
            load_direct(room, c.id, tables, ids, ids)
            continue
        with room.store.of(c.id).transaction() as cur:  # the rest appended to what load_direct made
            for (member, name), table in tables.items():
                cur.register("t", table)
                cur.execute(f"INSERT INTO {quote_ident(physical_name(c.id, member, name))} SELECT * FROM t")
                cur.unregister("t")
                cur.execute(
                    "UPDATE data_tables SET rows = rows + ? WHERE collab = ? AND member = ? AND name = ?",
                    [table.num_rows, c.id, member, name],
                )
            cur.register("pairs", pa.table({"a": ids, "b": ids}))
            cur.execute("INSERT INTO matches SELECT ?, 'brand', a, 'platform', b, 1 FROM pairs", [c.id])
            cur.unregister("pairs")
    return c.id


def plain(room: Room, collab: str) -> dict[str, str]:
    """The bare SQL of each query's exact aggregate."""
    b = quote_ident(physical_name(collab, "brand", "users"))
    p = quote_ident(physical_name(collab, "platform", "users"))
    h = quote_ident(physical_name(collab, "platform", "stage_history"))
    return {
        "overlap (tier x age band)": f"SELECT b.tier, p.age_band, count(*) FROM matches m JOIN {b} b ON b.row_id = "
        f"m.row_a JOIN {p} p ON p.row_id = m.row_b WHERE m.collab = '{collab}' GROUP BY 1, 2",
        "funnel (x tier)": f"SELECT b.tier, p.stage_4a, count(*) FROM matches m JOIN {b} b ON b.row_id = m.row_a "
        f"JOIN {p} p ON p.row_id = m.row_b WHERE m.collab = '{collab}' GROUP BY 1, 2",
        "funnel flow": f"WITH s AS (SELECT row_id, arg_max(stage_4a, date) FILTER (WHERE date = DATE '2026-10-01') s0, "
        f"arg_max(stage_4a, date) FILTER (WHERE date = DATE '2026-11-01') s1 FROM {h} WHERE date IN "
        f"(DATE '2026-10-01', DATE '2026-11-01') GROUP BY row_id) SELECT s0, s1, count(*) FROM matches m LEFT JOIN s "
        f"ON s.row_id = m.row_b WHERE m.collab = '{collab}' GROUP BY 1, 2",
        "segment insight (age band)": f"SELECT p.age_band, count(*) FROM matches m JOIN {p} p ON p.row_id = m.row_b "
        f"WHERE m.collab = '{collab}' GROUP BY 1 UNION ALL SELECT age_band, count(*) FROM {p} GROUP BY 1",
    }


def _plain(cur: duckdb.DuckDBPyConnection, sql: str) -> object:
    return cur.execute(sql).fetchall()


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Best of `repeat` wall-clock runs."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    """Build, time each query and its plain peer, print a table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-limit", help="DuckDB memory_limit, as the server option (default: DuckDB's)")
    parser.add_argument("--dir", type=Path, help="where the data directory goes (default: a temporary one)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        limits = StorageLimits(args.memory_limit, Path(tmp) / "spill") if args.memory_limit else None
        room = Room.open(Path(tmp), limits)
        t = time.perf_counter()
        collab = build(room, args.people)
        load = time.perf_counter() - t
        q = room.queries
        dp = {
            "overlap (tier x age band)": lambda: q.overlap(
                BRAND, collab, OverlapQuery((DimensionRef("brand", "tier"), DimensionRef("platform", "age_band")), 0.1)
            ),
            "funnel (x tier)": lambda: q.funnel(BRAND, collab, FunnelQuery(DimensionRef("brand", "tier"), 0.1)),
            "funnel flow": lambda: q.funnel_flow(
                BRAND, collab, FunnelFlowQuery(dt.date(2026, 10, 1), dt.date(2026, 11, 1), 0.1)
            ),
            "segment insight (age band)": lambda: q.segment_insight(
                BRAND, collab, SegmentInsightQuery(DimensionRef("platform", "age_band"), 0.1)
            ),
        }
        sql = plain(room, collab)
        cur = room.store.of(collab).cursor()
        results = {
            "people": args.people,
            "memory_limit": args.memory_limit,
            "load_seconds": round(load, 1),
            "queries": {},
        }
        print(f"{args.people:,} matched people (loaded in {load:.1f} s); best of {args.repeat}")
        print(f"{'query':<28}{'DP query s':>12}{'plain SQL s':>13}{'ratio':>8}")
        for name, run in dp.items():
            mine = timed(run, args.repeat)
            peer = timed(partial(_plain, cur, sql[name]), args.repeat)
            results["queries"][name] = {
                "dp_seconds": round(mine, 3),
                "plain_seconds": round(peer, 3),
                "ratio": round(mine / peer, 2),
            }
            print(f"{name:<28}{mine:>12.3f}{peer:>13.3f}{mine / peer:>8.2f}")
        room.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
