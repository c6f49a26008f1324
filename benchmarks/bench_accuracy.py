"""Accuracy of the money answers: each released cell against a pandas truth, over repeated runs (issue 31).

Two synthetic worlds (`cleanroom.devtools.synthetic`): the demo's (20,000 brand customers x 40,000 platform users,
6,000 shared) and the issue's (20,000 x 60,000, 7,095 shared). Each is written straight into a data directory
with its true matching (the PSI is not what is measured), under the demo's policy, and every query runs through
`QueryEngine` in-process exactly as an RPC would: the policy, the budget, the DuckDB SQL, OpenDP noise,
post-processing. Each query is asked R times at epsilon = 1 (its whole epsilon) and each released cell is compared
with the truth pandas computes from the generator's tables: every order of the matched people, unclipped and
uncapped, so the clipping's bias counts against the answer.

Per measure, over the cells of groups with at least 1,000 matched buyers (the goal's groups) and every run: the
median and the worst of bar / |truth| (the 95% bar relative to the value), and the coverage: the share of cells
whose truth lies within released value +- bar. The goal (issue 31): sums and means within +-15%, lift's
incremental revenue within +-25%, coverage >= 93%.

A query is one function `(world, runs) -> list[Row]` in `QUERIES`; attribution's rows come from
`benchmarks/accuracy_attribution.py` (`rows(quick)`) when that module exists.

Usage: python benchmarks/bench_accuracy.py [--runs 100] [--quick] [--world demo|issue ...]
[--query value|lift|loyalty|attribution ...] [--seeds K] [--json out.json] (`--query`: only those queries;
attribution's rows come from its module, which has its own worlds and runs; `--seeds K`: lift's incremental
revenue also over K other seeds of each world, runs / K answers each: coverage over the test's randomisations)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from cleanroom.analytics import LiftQuery, LoyaltyQuery, ValueQuery
from cleanroom.analytics.cells import Cell
from cleanroom.analytics.queries import DimensionRef
from cleanroom.devtools.synthetic import (
    DEMO_POLICY,
    LIFT_CAMPAIGN,
    SyntheticConfig,
    SyntheticData,
    generate,
    load_direct,
)
from cleanroom.principals import Principal, Role
from cleanroom.room import Room
from cleanroom_client.policy import CENTS, parse_policy

BRAND = Principal("brand", Role.MEMBER)
POLICY = DEMO_POLICY.replace("per_member_total: 10.0", "per_member_total: 1000000.0")
EPSILON = 1.0
#: The goal's groups: at least this many matched buyers.
MIN_BUYERS = 1000
WORLDS = {
    "demo": SyntheticConfig(brand_users=20_000, platform_users=40_000, shared=6_000),
    "issue": SyntheticConfig(brand_users=20_000, platform_users=60_000, shared=7_095),
}
#: A world small enough for the smoke test (`--quick`): no group reaches MIN_BUYERS, so rows cover every group.
QUICK = SyntheticConfig(brand_users=3_000, platform_users=4_000, shared=1_500)
LOYALTY_PERIODS = (
    (pd.Timestamp("2026-10-01"), pd.Timestamp("2026-11-01")),
    (pd.Timestamp("2026-11-01"), pd.Timestamp("2026-12-01")),
)


@dataclass(frozen=True)
class Row:
    """One measure of one query in one world: bar / |truth| (median, worst) and coverage, over the goal's cells."""

    world: str
    query: str
    measure: str
    cells: int
    median: float
    worst: float
    coverage: float
    #: The policy's clipping: (the answer's definition - every order as it is) / the latter, median over cells.
    clip_bias: float


@dataclass(frozen=True)
class World:
    """A synthetic world loaded into a room, with the pandas frames of its matched people."""

    name: str
    room: Room
    collaboration: str
    data: SyntheticData
    #: One row per matched person: customer_id, user_id, tier, age_band.
    matched: pd.DataFrame
    policy: str


def _row_ids(frame: pd.DataFrame, key: str) -> dict[str, int]:
    return {k: i for i, k in enumerate(frame[key])}


@contextmanager
def open_world(name: str, config: SyntheticConfig, policy: str = POLICY) -> Iterator[World]:
    """Generate `config`, write it with its true matching into a temporary room; the World while it is open."""
    data = generate(config)
    brand_rows, platform_rows = _row_ids(data.brand_users, "customer_id"), _row_ids(data.platform_users, "user_id")

    def events(frame: pd.DataFrame, key: str, rows: Mapping[str, int], columns: list[str]) -> pa.Table:
        body = {"row_id": frame[key].map(rows).to_numpy(np.int64)}
        return pa.table(body | {c: frame[c].to_numpy() for c in columns})

    users_b, users_p = data.brand_users, data.platform_users
    tables = {
        ("brand", "users"): pa.table({"row_id": np.arange(len(users_b)), "tier": users_b["tier"].to_numpy()}),
        ("brand", "conversions"): events(data.brand_conversions, "customer_id", brand_rows, ["ts", "value"]),
        ("platform", "users"): pa.table(
            {
                "row_id": np.arange(len(users_p)),
                "age_band": users_p["age_band"].to_numpy(),
                "stage_4a": pa.Array.from_pandas(users_p["stage_4a"], type=pa.string()),
                "visits_30d": users_p["visits_30d"].to_numpy(np.int64),
            }
        ),
        ("platform", "exposures"): events(
            data.platform_exposures, "user_id", platform_rows, ["ts", "campaign", "channel", "kind"]
        ),
        ("platform", "test_groups"): events(
            data.platform_test_groups, "user_id", platform_rows, ["campaign", "test_group"]
        ),
    }
    pairs_b = data.truth["customer_id"].map(brand_rows).to_numpy(np.int64)
    pairs_p = data.truth["user_id"].map(platform_rows).to_numpy(np.int64)
    matched = data.truth.merge(users_b[["customer_id", "tier"]]).merge(users_p[["user_id", "age_band"]])
    with tempfile.TemporaryDirectory() as tmp:
        room = Room.open(Path(tmp))
        try:
            c = room.collaborations.create(BRAND, f"accuracy-{name}", policy)
            for m in (BRAND, Principal("platform", Role.MEMBER)):
                room.collaborations.approve(m, c.id, c.policy_etag)
            load_direct(room, c.id, tables, pairs_b, pairs_p)
            yield World(name, room, c.id, data, matched, policy)
        finally:
            room.close()


#: Each cell's true value by (keys, measure), and each group's matched buyers (converters for lift and loyalty).
TruthTable = tuple[dict[tuple[tuple[str, ...], str], float], dict[tuple[str, ...], int]]
#: A truth given `clipped`: the answer's definition (True) or every order as it is (False).
Truth = Callable[[bool], TruthTable]


def _score(world: str, query: str, truth_of: Truth, quick: bool, answers: list[list[Cell]]) -> list[Row]:
    """Rows per measure over the goal's groups' cells of every answer (a withheld cell misses).

    Coverage is against the answer's definition (the policy's clipping applied in pandas): it shows whether the
    bars are honest. The clipping's bias against every order as it is gets its own column.
    """
    return _score_worlds(world, query, [(truth_of, answers)], quick)


def _score_worlds(world: str, query: str, runs_of: list[tuple[Truth, list[list[Cell]]]], quick: bool) -> list[Row]:
    """`_score` over several worlds' answers, each against its own truth (`--seeds`: the test's randomisations)."""
    ratios: dict[str, list[float]] = {}
    hits: dict[str, list[bool]] = {}
    bias: dict[str, list[float]] = {}
    for truth_of, answers in runs_of:
        truth, buyers = truth_of(True)
        raw, _ = truth_of(False)
        eligible = {k for k, n in buyers.items() if quick or n >= MIN_BUYERS}
        for cells in answers:
            for cell in cells:
                key = (cell.keys, cell.measure)
                if key not in truth or cell.keys not in eligible:
                    continue
                true = truth[key]
                hit = not cell.suppressed and abs(cell.value - true) <= cell.error_95
                hits.setdefault(cell.measure, []).append(hit)
                ratios.setdefault(cell.measure, []).append(
                    cell.error_95 / abs(true) if true and not cell.suppressed else float("inf")
                )
                bias.setdefault(cell.measure, []).append((true - raw[key]) / abs(raw[key]) if raw[key] else 0.0)
    runs = max(sum(len(answers) for _, answers in runs_of), 1)
    return [
        Row(
            world,
            query,
            m,
            len(ratios[m]) // runs,
            statistics.median(ratios[m]),
            max(ratios[m]),
            sum(hits[m]) / len(hits[m]),
            statistics.median(bias[m]),
        )
        for m in ratios
    ]


# -- the truths ---------------------------------------------------------------------------------------------------
def _groups(people: pd.DataFrame, by: str | None) -> Iterator[tuple[tuple[str, ...], pd.DataFrame]]:
    """The groups of a matched person's column `by` with their keys; None: everybody, one group with no keys."""
    if by is None:
        yield (), people
    else:
        for group, g in people.groupby(by):
            yield (str(group),), g


def person_orders(w: World, clipped: bool, orders: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per brand customer with orders: `count` and `sum` of their orders (`orders`: default every order).

    `clipped`: as the policy defines the answer (the earliest max_per_person orders, ties by value, each clipped
    to the measure's bounds, the total in cents rounded toward zero per order, clipped to per_person_max);
    otherwise every order as it is (what the brand would call the truth).
    """
    orders = w.data.brand_conversions if orders is None else orders
    if not clipped:
        return orders.groupby("customer_id")["value"].agg(["count", "sum"])
    spec = parse_policy(w.policy).table("brand", "conversions")
    assert spec is not None
    assert spec.max_per_person is not None
    lo, hi = spec.measures["value"]
    capped = orders.assign(value=orders["value"].clip(lo, hi)).sort_values(["ts", "value"], kind="stable")
    capped = capped.groupby("customer_id").head(spec.max_per_person)
    cents = np.trunc(capped["value"] * CENTS)
    per = capped.assign(cents=cents).groupby("customer_id").agg(count=("value", "size"), cents=("cents", "sum"))
    bound = spec.person_cents("value")
    return per.assign(sum=per["cents"].clip(-bound, bound) / CENTS)[["count", "sum"]]


def value_truth(w: World, by: str | None, clipped: bool = True) -> TruthTable:
    """Per group of `by` (a matched person's column): people, buyers, orders, sum and means; and buyers per group."""
    people = w.matched.join(person_orders(w, clipped), on="customer_id")
    people["buyer"] = people["count"].notna()
    truth: dict[tuple[tuple[str, ...], str], float] = {}
    buyers: dict[tuple[str, ...], int] = {}
    for keys, g in _groups(people, by):
        total, n_orders, n_buyers = float(g["sum"].sum()), float(g["count"].sum()), int(g["buyer"].sum())
        buyers[keys] = n_buyers
        truth |= {
            (keys, "people"): float(len(g)),
            (keys, "buyers"): float(n_buyers),
            (keys, "orders"): n_orders,
            (keys, "sum"): total,
            (keys, "per_person"): total / len(g),
            (keys, "per_buyer"): total / n_buyers if n_buyers else 0.0,
            (keys, "per_order"): total / n_orders if n_orders else 0.0,
        }
    return truth, buyers


def lift_truth(w: World, clipped: bool = True) -> TruthTable:
    """Per test group: people, converters, rates, revenue per person; the lift cells; converters per group.

    Incremental revenue's truth is what it estimates (`cleanroom.analytics.lift.lift_cells`): the revenue the
    campaign added among its exposed people, each exposed person's revenue with every order less without the
    orders the campaign caused (`SyntheticData.campaign_orders`, both as the policy clips them), summed. The
    estimate's difference from it is noise plus the test's sampling error (the holdout against the exposed group's
    revenue without the campaign), which its bar must cover. The conversion estimates' truths are the groups'
    difference in this sample (their noise-free value: their bars' sampling term, Neyman's, is for an effect
    beyond this sample, which the generator does not define).
    """
    groups = w.data.platform_test_groups.query("campaign == @LIFT_CAMPAIGN").drop_duplicates("user_id")
    people = w.matched.merge(groups, on="user_id").join(person_orders(w, clipped), on="customer_id")
    orders = w.data.brand_conversions
    without = person_orders(w, clipped, orders[~w.data.campaign_orders.to_numpy()]).add_suffix("_without")
    exposed = people[people["test_group"] == "exposed"].join(without, on="customer_id")
    truth: dict[tuple[tuple[str, ...], str], float] = {}
    buyers: dict[tuple[str, ...], int] = {}
    stats = {}
    for group, g in people.groupby("test_group"):
        keys = (str(group),)
        n, conv, revenue = len(g), int(g["count"].notna().sum()), float(g["sum"].sum())
        buyers[keys] = conv
        stats[group] = (n, conv / n, revenue / n)
        truth |= {
            (keys, "people"): float(n),
            (keys, "converters"): float(conv),
            (keys, "conversion_rate"): conv / n,
            (keys, "revenue_per_person"): revenue / n,
        }
    (ne, re_, _), (_, rh, _) = stats["exposed"], stats["holdout"]
    lift = ("lift",)
    truth |= {
        (lift, "absolute_lift"): re_ - rh,
        (lift, "relative_lift"): re_ / rh - 1,
        (lift, "incremental_conversions"): (re_ - rh) * ne,
        (lift, "incremental_revenue"): float(exposed["sum"].sum() - exposed["sum_without"].sum()),
    }
    buyers[lift] = buyers[("exposed",)]  # incremental revenue is the exposed group's
    return truth, buyers


def loyalty_truth(w: World, by: str | None, clipped: bool = True) -> TruthTable:
    """Per group: converters, repeaters and the repurchase rate in period 1; converters per group."""
    (s1, e1), _ = LOYALTY_PERIODS
    conv = w.data.brand_conversions
    first = conv[(conv["ts"] >= s1) & (conv["ts"] < e1)].groupby("customer_id").size().rename("n1")
    people = w.matched.join(first, on="customer_id")
    truth: dict[tuple[tuple[str, ...], str], float] = {}
    buyers: dict[tuple[str, ...], int] = {}
    for keys, g in _groups(people, by):
        converters, repeat = int(g["n1"].notna().sum()), int((g["n1"] >= 2).sum())
        buyers[keys] = converters
        truth |= {(keys, "converters"): float(converters), (keys, "repurchase_rate"): repeat / max(converters, 1)}
    return truth, buyers


# -- the queries ----------------------------------------------------------------------------------------------------
def value_rows(w: World, runs: int, quick: bool = False) -> list[Row]:
    """Value of brand.conversions.value over every matched person, by the brand's tier, by the platform's age band."""
    out = []
    for by, column in ((None, None), ("brand.tier", "tier"), ("platform.age_band", "age_band")):
        q = ValueQuery(() if by is None else (DimensionRef.parse(by),), "brand.conversions.value", EPSILON)
        answers = [list(w.room.queries.value(BRAND, w.collaboration, q).cells) for _ in range(runs)]
        truth = partial(value_truth, w, column)
        out += _score(w.name, "value" + (f" by {by}" if by else ""), truth, quick, answers)
    return out


def lift_rows(w: World, runs: int, quick: bool = False) -> list[Row]:
    """Lift of the planted campaign: the groups' cells and the lift estimates."""
    q = LiftQuery(LIFT_CAMPAIGN, EPSILON)
    answers = [list(w.room.queries.lift(BRAND, w.collaboration, q).cells) for _ in range(runs)]
    return _score(w.name, "lift", partial(lift_truth, w), quick, answers)


def lift_seed_rows(name: str, config: SyntheticConfig, seeds: int, runs: int) -> list[Row]:
    """Lift's incremental revenue over `seeds` worlds like `config` (other seeds: other randomisations of the test
    groups, other people), `runs` answers each: a fixed world's coverage is conditional on its one randomisation
    (its holdout's revenue against the exposed group's without the campaign), this is coverage over them."""
    q = LiftQuery(LIFT_CAMPAIGN, EPSILON)
    runs_of: list[tuple[Truth, list[list[Cell]]]] = []
    for seed in range(config.seed + 1, config.seed + 1 + seeds):
        with open_world(name, replace(config, seed=seed)) as w:
            answers = [
                [c for c in w.room.queries.lift(BRAND, w.collaboration, q).cells if c.measure == "incremental_revenue"]
                for _ in range(runs)
            ]
            truths = {clipped: lift_truth(w, clipped) for clipped in (True, False)}
        runs_of.append((truths.__getitem__, answers))
    return _score_worlds(f"{name} × {seeds} seeds", "lift", runs_of, False)


def loyalty_rows(w: World, runs: int, quick: bool = False) -> list[Row]:
    """Loyalty over every matched person: converters in period 1 and the repurchase rate."""
    (s1, e1), (s2, e2) = LOYALTY_PERIODS
    q = LoyaltyQuery((), (s1.date(), e1.date()), (s2.date(), e2.date()), EPSILON)
    answers = [list(w.room.queries.loyalty(BRAND, w.collaboration, q).cells) for _ in range(runs)]
    return _score(w.name, "loyalty", partial(loyalty_truth, w, None), quick, answers)


QUERIES: dict[str, Callable[[World, int, bool], list[Row]]] = {
    "value": value_rows,
    "lift": lift_rows,
    "loyalty": loyalty_rows,
}


def extra_rows(quick: bool) -> list[dict[str, object]]:
    """Rows of the other accuracy modules next to this file (attribution's), if present."""
    path = Path(__file__).with_name("accuracy_attribution.py")
    if not path.exists():
        return []
    spec = importlib.util.spec_from_file_location("accuracy_attribution", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.rows(quick))


def markdown(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| world | query | measure | cells | bar ÷ value, median | worst | coverage | clip bias |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.world} | {r.query} | {r.measure} | {r.cells} | {r.median:.1%} | {r.worst:.1%} | {r.coverage:.1%} "
            f"| {r.clip_bias:+.1%} |"
        )
    return "\n".join(lines)


def main() -> int:
    """Run every query in every world; print the Markdown table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="a small world and 3 runs: a smoke test")
    parser.add_argument("--world", action="append", choices=sorted(WORLDS), help="default: every world")
    parser.add_argument(
        "--query", action="append", choices=sorted([*QUERIES, "attribution"]), help="default: every query"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=0,
        help="also lift's incremental revenue over this many other seeds of each world, runs / seeds answers each",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    worlds = {"quick": QUICK} if args.quick else {n: WORLDS[n] for n in args.world or sorted(WORLDS)}
    runs = 3 if args.quick else args.runs
    chosen = [q for q in args.query or [*QUERIES, "attribution"] if q in QUERIES]
    rows: list[Row] = []
    for name, config in worlds.items():
        if not chosen:
            break
        with open_world(name, config) as w:
            for q in chosen:
                rows += QUERIES[q](w, runs, args.quick)
        if args.seeds and "lift" in chosen and not args.quick:
            rows += lift_seed_rows(name, config, args.seeds, max(runs // args.seeds, 1))
    print(f"epsilon {EPSILON:g} per query, {runs} runs; groups with >= {MIN_BUYERS:,} matched buyers")
    print(markdown(rows))
    others = extra_rows(args.quick) if not args.query or "attribution" in args.query else []
    if others:
        columns = list(others[0])
        print("\nattribution (benchmarks/accuracy_attribution.py)")
        print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
        for row in others:
            print("| " + " | ".join(f"{row.get(c, '')}" for c in columns) + " |")
    if args.json:
        payload = {"epsilon": EPSILON, "runs": runs, "rows": [asdict(r) for r in rows], "attribution": others}
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
