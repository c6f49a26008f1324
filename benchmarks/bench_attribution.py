"""Attribution speed: every model through the whole DP pipeline on 5M exposures x 1M conversions.

The tables are written straight into a data directory (the PSI is not what is measured here), then each model
runs through `QueryEngine.attribution` exactly as an RPC would: policy checks, budget, the DuckDB SQL, OpenDP
noise, the audit entry. Beside it, in the same run, the floor: the same data scanned once by a plain DuckDB
aggregate (`count(*)` per campaign over the exposure-conversion join), to show what share of the time is the
attribution logic itself; and the same join taken through the matched pairs (the brand's rows to the platform's),
which any query over two members' data has to do and the plain join skips (here the members' row numbers are equal).
Wall seconds and the process's CPU seconds (DuckDB's threads included) are both reported: on a shared machine the
CPU ratio is the steadier one. Both sides are measured warm (`--warmup`, untimed runs of each first): a process's
first two attribution queries pay for glibc growing its mmap threshold (fresh pages for the kernels' scratch and
DuckDB's results), which a server that has answered a few queries no longer does.

Usage: python benchmarks/bench_attribution.py [--exposures 5000000] [--conversions 1000000] [--people 1000000]
       [--repeat 2] [--warmup 2] [--pairs 0] [--kernels compiled|numpy] [--json out.json]
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

from cleanroom.analytics import AttributionQuery, native
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


def floor_query(room: Room, collab: str, through_pairs: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds for the plain join-and-count the attribution cannot beat (optionally via the pairs)."""
    conv = quote_ident(physical_name(collab, "brand", "conversions"))
    expo = quote_ident(physical_name(collab, "platform", "exposures"))
    pairs = (
        "matches p ON p.collab = $collab AND p.member_a = 'brand' AND p.member_b = 'platform' "
        "AND p.row_a = c.row_id JOIN"
        if through_pairs
        else ""
    )
    key = "p.row_b" if through_pairs else "c.row_id"
    sql = f"""
        SELECT e.campaign, count(*) FROM {conv} c JOIN {pairs} {expo} e ON e.row_id = {key}
        WHERE e.ts <= c.ts AND e.ts >= c.ts - INTERVAL 7 DAY GROUP BY 1
    """
    cpu, t = time.process_time(), time.perf_counter()
    room.store.of(collab).cursor().execute(sql, {"collab": collab} if through_pairs else {}).fetchall()
    return time.perf_counter() - t, time.process_time() - cpu


def best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """The least wall and the least CPU seconds of several runs."""
    return min(r[0] for r in runs), min(r[1] for r in runs)


def main() -> int:
    """Build, run every model, print a table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=5_000_000)
    parser.add_argument("--conversions", type=int, default=1_000_000)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="runs per model; the least time is reported")
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed runs of the plain join and of one attribution query first (a process's first queries pay "
        "for glibc raising its mmap threshold: measured, the bound 28-33 ms in the first two, 16 ms after)",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="then, per model, this many interleaved (plain join, model) runs: medians of their CPU and wall ratios",
    )
    parser.add_argument(
        "--kernels",
        choices=("compiled", "numpy"),
        default="compiled",
        help="numpy: the bounding and the credits in numpy, as where the server's install had no C compiler",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.kernels == "numpy":
        native.KERNELS = None  # type: ignore[misc]  # what an install without a C compiler runs
    elif native.KERNELS is None:
        parser.error("the compiled kernels are not built here (pip install -e . with a C compiler)")
    brand = Principal("brand", Role.MEMBER)
    with tempfile.TemporaryDirectory() as tmp:
        room = Room.open(Path(tmp))
        t = time.perf_counter()
        collab = build(room, args.people, args.exposures, args.conversions)
        load = time.perf_counter() - t
        warm = AttributionQuery(model="linear", lookback_days=7, by="campaign", epsilon=0.5, half_life_days=2.0)
        for _ in range(args.warmup):  # a server is warm after its first queries: both sides measured warm
            floor_query(room, collab)
            room.queries.attribution(brand, collab, warm)
        base, base_cpu = best([floor_query(room, collab) for _ in range(2)])
        pairs, pairs_cpu = best([floor_query(room, collab, through_pairs=True) for _ in range(2)])
        results = {
            "exposures": args.exposures,
            "conversions": args.conversions,
            "people": args.people,
            "load_seconds": round(load, 2),
            "kernels": args.kernels,
            "warmup": args.warmup,
            "load_average": Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else None,
            "plain_join_count_seconds": round(base, 3),
            "plain_join_count_cpu_seconds": round(base_cpu, 3),
            "through_pairs_seconds": round(pairs, 3),
            "through_pairs_cpu_seconds": round(pairs_cpu, 3),
            "models": {},
        }
        print(
            f"{args.exposures:,} exposures x {args.conversions:,} conversions over {args.people:,} people "
            f"(loaded in {load:.1f} s; load average {results['load_average']})"
        )
        print(f"{'':<18}{'seconds':>9}{'x plain':>9}{'cpu s':>8}{'x plain':>9}{'x via pairs (cpu)':>19}")
        for name, wall, cpu in (("plain join+count", base, base_cpu), ("via the pairs", pairs, pairs_cpu)):
            print(f"{name:<18}{wall:>9.2f}{wall / base:>9.2f}{cpu:>8.2f}{cpu / base_cpu:>9.2f}{cpu / pairs_cpu:>19.2f}")
        for model in MODELS:
            q = AttributionQuery(model=model, lookback_days=7, by="campaign", epsilon=0.5, half_life_days=2.0)
            runs = []
            for _ in range(args.repeat):
                cpu, t = time.process_time(), time.perf_counter()
                room.queries.attribution(brand, collab, q)
                runs.append((time.perf_counter() - t, time.process_time() - cpu))
            took, took_cpu = best(runs)
            results["models"][model] = {"seconds": round(took, 3), "cpu_seconds": round(took_cpu, 3)}
            print(
                f"{model:<18}{took:>9.2f}{took / base:>9.2f}{took_cpu:>8.2f}{took_cpu / base_cpu:>9.2f}"
                f"{took_cpu / pairs_cpu:>19.2f}"
            )
        if args.pairs:
            # each model right after the plain join, in turn: both see the same load, which on a shared machine
            # moves either by more than the difference the table above measures
            results["pairs"] = {}
            print(
                f"interleaved, {args.pairs} pairs per model: median and least of model / plain join, "
                "in CPU s, then in wall s"
            )
            for model in MODELS:
                q = AttributionQuery(model=model, lookback_days=7, by="campaign", epsilon=0.5, half_life_days=2.0)
                ratios, walls = [], []
                for _ in range(args.pairs):
                    plain_wall, plain_cpu = floor_query(room, collab)
                    cpu, t = time.process_time(), time.perf_counter()
                    room.queries.attribution(brand, collab, q)
                    walls.append((time.perf_counter() - t) / plain_wall)
                    ratios.append((time.process_time() - cpu) / plain_cpu)
                ratios.sort()
                walls.sort()
                median, wall_median = ratios[len(ratios) // 2], walls[len(walls) // 2]
                results["pairs"][model] = {
                    "median": round(median, 3),
                    "least": round(ratios[0], 3),
                    "wall_median": round(wall_median, 3),
                    "wall_least": round(walls[0], 3),
                }
                print(f"{model:<18}{median:>9.2f}{ratios[0]:>9.2f}{wall_median:>14.2f}{walls[0]:>9.2f}")
        room.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
