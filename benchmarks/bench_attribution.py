"""Attribution speed: every model through the whole DP pipeline on 5M exposures x 1M conversions.

The tables are written straight into a data directory (the PSI is not what is measured here), then each model
runs through `QueryEngine.attribution` exactly as an RPC would: policy checks, budget, the DuckDB SQL, OpenDP
noise, the audit entry. Beside it, in the same run, the floor: the same data scanned once by a plain DuckDB
aggregate (`count(*)` per campaign over the exposure-conversion join), to show what share of the time is the
attribution logic itself.

Usage: python benchmarks/bench_attribution.py [--exposures 5000000] [--conversions 1000000] [--people 1000000]
       [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from cleanroom.analytics import AttributionQuery
from cleanroom.devtools.synthetic import DEMO_POLICY, load_direct
from cleanroom.matching.tables import physical_name
from cleanroom.principals import Principal, Role
from cleanroom.room import Room
from cleanroom.storage.database import quote_ident

MODELS = ("last_touch", "first_touch", "linear", "time_decay", "position_based")
POLICY = DEMO_POLICY.replace("per_member_total: 10.0", "per_member_total: 1000.0")


def build(room: Room, people: int, exposures: int, conversions: int, seed: int = 1) -> str:
    """A matched collaboration with synthetic exposures and conversions, written directly."""
    brand, platform = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)
    c = room.collaborations.create(brand, "bench", POLICY)
    for m in (brand, platform):
        room.collaborations.approve(m, c.id, c.policy_etag)
    rng = np.random.default_rng(seed)
    start = np.datetime64("2026-10-01T00:00:00", "us")
    span = 61 * 24 * 3600 * 10**6
    campaigns = np.array(["c-always-on", "c-2026-10", "c-2026-11"])
    channels = np.array(["search", "feed", "video"])
    tables = {
        ("brand", "users"): pa.table({"row_id": np.arange(people, dtype=np.int64)}),
        ("platform", "users"): pa.table({"row_id": np.arange(people, dtype=np.int64)}),
        ("brand", "conversions"): pa.table(
            {
                "row_id": rng.integers(0, people, conversions),
                "ts": start + rng.integers(0, span, conversions).astype("timedelta64[us]"),
                "value": rng.gamma(2.0, 40.0, conversions),
            }
        ),
        ("platform", "exposures"): pa.table(
            {
                "row_id": rng.integers(0, people, exposures),
                "ts": start + rng.integers(0, span, exposures).astype("timedelta64[us]"),
                "campaign": campaigns[rng.integers(0, 3, exposures)],
                "channel": channels[rng.integers(0, 3, exposures)],
                "kind": np.where(rng.random(exposures) < 0.2, "click", "impression"),
            }
        ),
    }
    load_direct(room, c.id, tables, np.arange(people), np.arange(people))
    return c.id


def floor_query(room: Room, collab: str) -> float:
    """Seconds for the plain join-and-count the attribution cannot beat."""
    conv = quote_ident(physical_name(collab, "brand", "conversions"))
    expo = quote_ident(physical_name(collab, "platform", "exposures"))
    sql = f"""
        SELECT e.campaign, count(*) FROM {conv} c JOIN {expo} e ON e.row_id = c.row_id
        WHERE e.ts <= c.ts AND e.ts >= c.ts - INTERVAL 7 DAY GROUP BY 1
    """
    t = time.perf_counter()
    room.store.of(collab).cursor().execute(sql).fetchall()
    return time.perf_counter() - t


def main() -> int:
    """Build, run every model, print a table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=5_000_000)
    parser.add_argument("--conversions", type=int, default=1_000_000)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    brand = Principal("brand", Role.MEMBER)
    with tempfile.TemporaryDirectory() as tmp:
        room = Room.open(Path(tmp))
        t = time.perf_counter()
        collab = build(room, args.people, args.exposures, args.conversions)
        load = time.perf_counter() - t
        base = min(floor_query(room, collab) for _ in range(2))
        results = {
            "exposures": args.exposures,
            "conversions": args.conversions,
            "people": args.people,
            "load_seconds": round(load, 2),
            "plain_join_count_seconds": round(base, 3),
            "models": {},
        }
        print(
            f"{args.exposures:,} exposures x {args.conversions:,} conversions over {args.people:,} people "
            f"(loaded in {load:.1f} s)"
        )
        print(f"{'model':<16}{'seconds':>10}{'x plain join':>14}")
        print(f"{'plain join+count':<16}{base:>10.2f}{1.0:>14.2f}")
        for model in MODELS:
            q = AttributionQuery(model=model, lookback_days=7, by="campaign", epsilon=0.5, half_life_days=2.0)
            t = time.perf_counter()
            room.queries.attribution(brand, collab, q)
            took = time.perf_counter() - t
            results["models"][model] = round(took, 3)
            print(f"{model:<16}{took:>10.2f}{took / base:>14.2f}")
        room.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
