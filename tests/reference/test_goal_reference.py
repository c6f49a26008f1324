"""GOAL value and loyalty against a pandas reference: every released cell within its 95% bound in >= 90% of cells
over repeated runs, and the exact vectors equal to the reference (with a recording noise that adds nothing).

The reference recomputes the rules from the rows the members upload: value clamps each conversion to the policy's
bounds, keeps each person's earliest `max_per_person` conversions and rounds each toward zero to cents; loyalty
counts conversions per period (start inclusive, end exclusive).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from privacy_data import BRAND, PERIOD1, PERIOD2, PRIVACY_POLICY, MemberData, RecordingNoise

from cleanroom.analytics.engine import QueryAnswer, QueryEngine
from cleanroom.analytics.queries import DimensionRef, LoyaltyQuery, ValueQuery

C = "privacy-test"
N = 3000
T0 = dt.datetime(2026, 10, 28)
BY = (DimensionRef.parse("brand.tier"), DimensionRef.parse("platform.age_band"))
LO, HI, CAP = -50.0, 100.0, 2  # PRIVACY_POLICY's brand.conversions


def population(seed: int) -> tuple[dict[str, MemberData], pd.DataFrame, pd.DataFrame]:
    """N matched people (and unmatched ones on both sides) with conversions; the people and conversions frames."""
    rng = np.random.default_rng(seed)
    tiers = rng.choice(np.array(["gold", "basic", None], dtype=object), N, p=[0.3, 0.6, 0.1])
    bands = rng.choice(np.array(["young", "old", None], dtype=object), N, p=[0.45, 0.45, 0.1])
    brand = MemberData(users=[{"email": f"e{i}", "phone": f"p{i}", "tier": tiers[i]} for i in range(N)])
    brand.users += [{"email": f"brand-only-{i}", "phone": None, "tier": "gold"} for i in range(200)]
    platform = MemberData(
        users=[
            {"email": f"e{i}", "phone": f"p{i}", "age_band": bands[i], "stage_4a": "act", "visits": 1.0}
            for i in range(N)
        ]
    )
    platform.users += [
        {"email": f"platform-only-{i}", "phone": None, "age_band": "old", "stage_4a": None, "visits": 0.0}
        for i in range(200)
    ]
    rows = []
    for u in range(len(brand.users)):
        k = rng.choice([0, 0, 1, 1, 2, 3, 4])
        hours = rng.choice(11 * 24, size=k, replace=False)  # distinct times: the earliest `CAP` are well defined
        for h in hours:
            value = float(np.round(rng.uniform(-70, 130), 3))
            rows.append({"user": u, "ts": T0 + dt.timedelta(hours=int(h), minutes=7), "value": value})
    brand.events["conversions"] = rows
    people = pd.DataFrame({"user": range(N), "tier": tiers, "age_band": bands}).fillna("none")
    return {"brand": brand, "platform": platform}, people, pd.DataFrame(rows)


def value_reference(people: pd.DataFrame, conv: pd.DataFrame) -> dict[Any, dict[str, float]]:
    c = conv[conv["user"] < N].sort_values(["user", "ts"])
    c = c.assign(rn=c.groupby("user").cumcount(), cents=np.trunc(c["value"].clip(LO, HI) * 100))
    per = c[c["rn"] < CAP].groupby("user").agg(orders=("cents", "size"), cents=("cents", "sum"))
    p = people.merge(per, left_on="user", right_index=True, how="left")
    out = {}
    for keys, g in p.groupby(["tier", "age_band"]):
        buyers = g["orders"].notna().sum()
        orders, total = g["orders"].sum(), g["cents"].sum() / 100
        out[keys] = {
            "people": len(g),
            "buyers": buyers,
            "orders": orders,
            "sum": total,
            "per_person": total / len(g),
            "per_buyer": total / buyers,
            "per_order": total / orders,
        }
    return out


def loyalty_reference(people: pd.DataFrame, conv: pd.DataFrame) -> dict[Any, dict[str, float]]:
    day = conv["ts"].dt.date
    in1 = conv[(day >= PERIOD1[0]) & (day < PERIOD1[1])].groupby("user").size()
    in2 = conv[(day >= PERIOD2[0]) & (day < PERIOD2[1])].groupby("user").size()
    p = people.assign(n1=people["user"].map(in1).fillna(0), n2=people["user"].map(in2).fillna(0))
    out = {}
    for keys, g in p.groupby(["tier", "age_band"]):
        converters = (g["n1"] >= 1).sum()
        repeaters = (g["n1"] >= 2).sum()
        retained = ((g["n1"] >= 1) & (g["n2"] >= 1)).sum()
        out[keys] = {
            "converters": converters,
            "repeaters": repeaters,
            "retained": retained,
            "repurchase_rate": repeaters / converters,
            "retention_rate": retained / converters,
        }
    return out


VALUE = ValueQuery(BY, "brand.conversions.value", 8.0)
LOYALTY = LoyaltyQuery(BY, PERIOD1, PERIOD2, 2.0)
QUERIES: dict[str, tuple[Callable[[QueryEngine], QueryAnswer], Callable[..., dict]]] = {
    "value": (lambda e: e.value(BRAND, C, VALUE), value_reference),
    "loyalty": (lambda e: e.loyalty(BRAND, C, LOYALTY), loyalty_reference),
}


@pytest.mark.parametrize("kind", QUERIES)
def test_exact_vectors_are_the_reference(rooms, kind):
    data, people, conv = population(seed=3)
    ask, reference = QUERIES[kind]
    truth = reference(people, conv)
    answer = ask(rooms(PRIVACY_POLICY, data, RecordingNoise()).queries)
    for cell in answer.cells:
        assert not cell.suppressed
        assert cell.value == pytest.approx(truth[cell.keys][cell.measure], abs=1e-6), cell


@pytest.mark.parametrize("kind", QUERIES)
def test_noisy_cells_are_within_their_bounds(rooms, kind):
    data, people, conv = population(seed=4)
    ask, reference = QUERIES[kind]
    truth = reference(people, conv)
    room = rooms(PRIVACY_POLICY, data)
    hits: dict[str, int] = {}
    total: dict[str, int] = {}
    for _ in range(40):
        for cell in ask(room.queries).cells:
            if cell.suppressed:
                continue
            hit = abs(cell.value - truth[cell.keys][cell.measure]) <= cell.error_95 + 1e-9
            hits[cell.measure] = hits.get(cell.measure, 0) + hit
            total[cell.measure] = total.get(cell.measure, 0) + 1
    for measure in total:
        print(f"{kind} {measure}: {hits[measure]}/{total[measure]} = {hits[measure] / total[measure]:.3f}")
    for measure in total:
        assert total[measure] >= 300
        assert hits[measure] / total[measure] >= 0.9, measure
