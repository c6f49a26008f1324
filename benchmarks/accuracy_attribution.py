"""Accuracy of attribution's released money (revenue, ROAS) and conversions against a pandas truth.

Each world is the synthetic data of `cleanroom.devtools.synthetic` (the demo's shape and the issue's), loaded with
its ground-truth match straight into a data directory (the PSI is not what is measured), under the demo's policy.
Each query runs `repeats` times through the real engine (`QueryEngine.attribution`: the policy, the budget, the
DuckDB SQL, OpenDP's noise, the audit entry) and every released cell is compared with the same attribution computed
plainly in pandas from the raw tables: each conversion's value clamped to the policy's bounds, the person's first
`max_per_person` conversions, each person's kept conversions scaled down to the policy's per-person bound as
`attribution.bounded` does (the truth as the query defines it, as in `bench_accuracy.py`), credited to the touches in
the lookback window by the model's weights.

Per measure, over the cells whose truth credits at least `MIN_BUYERS` matched buyers (people with credit in the
cell) and over every run: the 95% bar divided by the true value (median and worst), the coverage (the share of
released values within their bar of the truth: whether the bars are honest) and the clip bias (the median over
cells of what the per-person bound costs against the same attribution without it; it is not in the bar).

Usage: python benchmarks/accuracy_attribution.py [--quick] [--repeats N]
`rows(quick)` returns the same figures as dicts, for `bench_accuracy.py`.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from statistics import median
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from cleanroom.analytics import AttributionQuery
from cleanroom.devtools.synthetic import DEMO_POLICY, SyntheticConfig, SyntheticData, generate, load_direct
from cleanroom.principals import Principal, Role
from cleanroom.room import Room
from cleanroom_client.policy import parse_policy

#: The goal applies to cells with at least this many matched buyers (issue 31).
MIN_BUYERS = 1000
EPSILON = 1.0
#: The goal per measure: the 95% bar within this fraction of the value.
GOAL = {"attributed_revenue": 0.15, "roas": 0.20}
BRAND = Principal("brand", Role.MEMBER)


class World(NamedTuple):
    """A synthetic world and the attribution queries asked of it.

    A NamedTuple, not a dataclass: `bench_accuracy.py` loads this file without registering it in sys.modules, where
    a dataclass's string annotations would be looked up.
    """

    name: str
    config: SyntheticConfig
    queries: tuple[AttributionQuery, ...]
    #: Cells with fewer matched buyers are not measured.
    min_buyers: int = MIN_BUYERS


def _queries(lookback: int) -> tuple[AttributionQuery, ...]:
    return tuple(
        AttributionQuery(model, lookback, by, EPSILON)
        for by in ("campaign", "channel")
        for model in ("last_touch", "linear", "position_based")
    )


WORLDS = (
    # The demo's default shape (`cleanroom demo`) and its query (by campaign, 7-day lookback).
    World("demo 20k × 40k, 6,000 matched", SyntheticConfig(20_000, 40_000, 6_000), _queries(7)),
    # The shape: 20,000 brand customers × 60,000 platform users, 7,095 matched; a 30-day lookback.
    World("issue 20k × 60k, 7,095 matched", SyntheticConfig(20_000, 60_000, 7_095), _queries(30)),
)
#: A smoke test of seconds: too small for a thousand buyers, so it measures cells of a hundred.
QUICK = World("quick 4k × 8k, 1,500 matched", SyntheticConfig(4_000, 8_000, 1_500), _queries(30)[:1], 100)


def load(room: Room, data: SyntheticData, policy: str) -> str:
    """A collaboration holding `data` and its true match; returns its id."""
    platform = Principal("platform", Role.MEMBER)
    c = room.collaborations.create(BRAND, "accuracy", policy)
    for m in (BRAND, platform):
        room.collaborations.approve(m, c.id, c.policy_etag)
    brand_row = {k: i for i, k in enumerate(data.brand_users["customer_id"])}
    platform_row = {k: i for i, k in enumerate(data.platform_users["user_id"])}
    conv = data.brand_conversions
    expo = data.platform_exposures
    tables = {
        ("brand", "users"): pa.table(
            {"row_id": np.arange(len(brand_row), dtype=np.int64), "tier": data.brand_users["tier"].to_numpy()}
        ),
        ("platform", "users"): pa.table({"row_id": np.arange(len(platform_row), dtype=np.int64)}),
        ("brand", "conversions"): pa.table(
            {
                "row_id": conv["customer_id"].map(brand_row).to_numpy(np.int64),
                "ts": conv["ts"].to_numpy(),
                "value": conv["value"].to_numpy(float),
            }
        ),
        ("platform", "exposures"): pa.table(
            {
                "row_id": expo["user_id"].map(platform_row).to_numpy(np.int64),
                "ts": expo["ts"].to_numpy(),
                "campaign": expo["campaign"].to_numpy(str),
                "channel": expo["channel"].to_numpy(str),
                "kind": expo["kind"].to_numpy(str),
            }
        ),
    }
    pairs_b = data.truth["customer_id"].map(brand_row).to_numpy(np.int64)
    pairs_p = data.truth["user_id"].map(platform_row).to_numpy(np.int64)
    load_direct(room, c.id, tables, pairs_b, pairs_p)
    return c.id


def truth(
    data: SyntheticData, q: AttributionQuery, lo: float, hi: float, cap: int, person_cents: int | None = None
) -> pd.DataFrame:
    """Attributed conversions, revenue and buyers per `q.by` value (`none`: unattributed), computed in pandas.

    `person_cents`: the policy's per-person bound (`TableSpec.person_cents`); a person whose kept conversions carry
    more cents (sum of |cents|, each value clamped and truncated to cents) has each scaled down to
    sign x floor(|cents| x P / S), as `attribution.bounded` does. None: no per-person bound (every order as it is).
    """
    person = dict(zip(data.truth["customer_id"], data.truth["user_id"], strict=True))
    conv = data.brand_conversions[data.brand_conversions["customer_id"].isin(person)].copy()
    conv["user_id"] = conv["customer_id"].map(person)
    conv["value"] = conv["value"].clip(lo, hi)
    conv = conv.reset_index(names="row").sort_values(["user_id", "ts", "value", "row"])
    conv = conv[conv.groupby("user_id").cumcount() < cap].reset_index(drop=True)
    if person_cents is not None:
        cents = np.trunc(conv["value"].to_numpy(float) * 100).astype(np.int64)
        total = pd.Series(np.abs(cents)).groupby(conv["user_id"]).transform("sum").to_numpy(np.int64)
        over = total > person_cents
        scaled = np.sign(cents) * (np.abs(cents) * person_cents // np.where(over, total, 1))
        conv["value"] = np.where(over, scaled, cents) / 100
    conv["conv"] = np.arange(len(conv))
    expo = data.platform_exposures
    t = conv[["conv", "user_id", "ts", "value"]].merge(expo.rename(columns={"ts": "ets"}), on="user_id", how="inner")
    t = t[(t["ets"] <= t["ts"]) & (t["ets"] >= t["ts"] - pd.Timedelta(days=q.lookback_days))].copy()
    t["is_click"] = t["kind"] == "click"
    t = t.sort_values(["conv", "ets", "is_click", "campaign", "channel"])
    t["pos"] = t.groupby("conv").cumcount() + 1
    t["n"] = t.groupby("conv")["pos"].transform("size")
    pos, n = t["pos"], t["n"]
    w: Any
    if q.model == "last_touch":
        w = (pos == n).astype(float)
    elif q.model == "first_touch":
        w = (pos == 1).astype(float)
    elif q.model == "linear":
        w = 1.0 / n
    elif q.model == "position_based":
        w = np.where(n == 1, 1.0, np.where(n == 2, 0.5, np.where((pos == 1) | (pos == n), 0.4, 0.2 / (n - 2))))
    else:
        newest = t.groupby("conv")["ets"].transform("max")
        decay = 2.0 ** (-(newest - t["ets"]).dt.total_seconds() / (q.half_life_days * 86400))
        w = decay / decay.groupby(t["conv"]).transform("sum")
    t["w"] = np.asarray(w, dtype=float)
    t["revenue"] = t["w"] * t["value"]
    credited = t[t["w"] > 0]
    none = conv[~conv["conv"].isin(t["conv"])].assign(g="none", w=1.0, revenue=lambda f: f["value"])
    rows = pd.concat(
        [credited.assign(g=credited[q.by])[["user_id", "g", "w", "revenue"]], none[["user_id", "g", "w", "revenue"]]]
    )
    return rows.groupby("g").agg(conversions=("w", "sum"), revenue=("revenue", "sum"), buyers=("user_id", "nunique"))


def demo_policy(per_person_max: float | None = None) -> str:
    """The demo's policy with budget for the runs; `per_person_max` replaces its per-person bound when given."""
    text = DEMO_POLICY.replace("per_member_total: 10.0", "per_member_total: 1.0e+9")
    if per_person_max is None:
        return text
    return re.sub(r"per_person_max: \{value: [0-9.e+]+\}", f"per_person_max: {{value: {per_person_max:g}}}", text)


def measure(world: World, repeats: int, per_person_max: float | None = None) -> list[dict[str, Any]]:
    """Run every query of `world` `repeats` times; one row per (query, measure)."""
    data = generate(world.config)
    policy_text = demo_policy(per_person_max)
    policy = parse_policy(policy_text)
    conv_spec = policy.table("brand", "conversions")
    assert conv_spec is not None
    assert conv_spec.max_per_person is not None
    lo, hi = conv_spec.measures["value"]
    person_cents = conv_spec.person_cents("value")
    spend = policy.campaign_spend
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        room = Room.open(Path(tmp))
        try:
            collab = load(room, data, policy_text)
            for q in world.queries:
                exact = truth(data, q, lo, hi, conv_spec.max_per_person, person_cents)
                raw = truth(data, q, lo, hi, conv_spec.max_per_person)
                big = exact[exact["buyers"] >= world.min_buyers]
                cells: dict[Any, dict[Any, Any]] = big.to_dict("index")
                found: dict[str, list[tuple[float, float]]] = {}  # measure -> (bar/value, |error| <= bar)
                bias = {
                    "attributed_conversions": [0.0 for _ in cells],  # scaling moves cents, never a conversion
                    "attributed_revenue": [cells[g]["revenue"] / raw.loc[g, "revenue"] - 1 for g in cells],
                }
                bias["roas"] = [b for g, b in zip(cells, bias["attributed_revenue"], strict=True) if g in spend]
                for _ in range(repeats):
                    answer = room.queries.attribution(BRAND, collab, q)
                    for cell in answer.cells:
                        g = cell.keys[0]
                        if g not in cells or cell.suppressed:
                            continue
                        revenue = float(cells[g]["revenue"])
                        true = {
                            "attributed_conversions": float(cells[g]["conversions"]),
                            "attributed_revenue": revenue,
                            "roas": revenue / spend[g] if g in spend else float("nan"),
                        }[cell.measure]
                        found.setdefault(cell.measure, []).append(
                            (cell.error_95 / true, float(abs(cell.value - true) <= cell.error_95))
                        )
                for m, got in found.items():
                    ratios = [r for r, _ in got]
                    out.append(
                        {
                            "world": world.name,
                            "query": f"{q.model}, by {q.by}, {q.lookback_days}-day lookback",
                            "measure": m,
                            "cells": len(got) // repeats,
                            "min_buyers": world.min_buyers,
                            "median": median(ratios),
                            "worst": max(ratios),
                            "coverage": sum(c for _, c in got) / len(got),
                            "clip_bias": median(bias[m]) if bias.get(m) else 0.0,
                            "goal": GOAL.get(m),
                            "buyers": [int(b) for b in big["buyers"]],
                        }
                    )
        finally:
            room.close()
    return out


def rows(quick: bool, repeats: int | None = None, per_person_max: float | None = None) -> list[dict[str, Any]]:
    """The accuracy rows: measure, median and worst bar ÷ value, coverage (per world and query).

    `quick`: one small world, one query, a few runs (a smoke test of seconds).
    """
    if quick:
        return measure(QUICK, repeats or 5, per_person_max)
    return [r for w in WORLDS for r in measure(w, repeats or 100, per_person_max)]


def table(found: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| data | query (ε = 1) | measure | cells (≥ buyers) | bar ÷ value median | worst | coverage | clip bias "
        "| goal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in found:
        goal = f"±{r['goal']:.0%}" if r["goal"] else "—"
        cells = f"{r['cells']} (≥ {r['min_buyers']:,})"
        lines.append(
            f"| {r['world']} | {r['query']} | {r['measure']} | {cells} | {r['median']:.1%} | {r['worst']:.1%} "
            f"| {r['coverage']:.1%} | {r['clip_bias']:+.1%} | {goal} |"
        )
    return "\n".join(lines)


def main() -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small world, a few runs")
    parser.add_argument("--repeats", type=int, default=None, help="runs per query (default 100; quick: 5)")
    parser.add_argument("--per-person-max", type=float, default=None, help="instead of the demo policy's bound")
    args = parser.parse_args()
    print(table(rows(args.quick, args.repeats, args.per_person_max)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
