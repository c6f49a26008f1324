"""Funnel flow against a pandas reference, on histories with drop-outs, drop-ins, same-day repeats and noise rows.

A person's stage on a date is their latest row dated that day; a person with no row that day is in `none` (the
exact-date rule: nobody is carried forward from an earlier snapshot). The reference computes this with pandas from
the same rows the members upload; the engine's exact vector must equal it, and its noisy cells must fall within
their 95% bounds in at least 90% of cells over repeated runs.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from privacy_data import BRAND, DAY0, DAY1, PRIVACY_POLICY, MemberData, RecordingNoise

from cleanroom.analytics.queries import FunnelFlowQuery

C = "privacy-test"
STAGES = ("aware", "appeal", "act", "advocate")


def population(seed: int, n: int = 400) -> tuple[dict[str, MemberData], pd.DataFrame]:
    """Matched people (and some unmatched on either side) with random stage histories; and the history frame."""
    rng = np.random.default_rng(seed)
    brand = MemberData(users=[{"email": f"e{i}", "phone": f"p{i}", "tier": "gold"} for i in range(n)])
    brand.users += [{"email": f"brand-only-{i}", "phone": None, "tier": "basic"} for i in range(20)]
    platform = MemberData(
        users=[
            {"email": f"e{i}", "phone": f"p{i}", "age_band": "young", "stage_4a": "aware", "visits": 1.0}
            for i in range(n)
        ]
    )
    platform.users += [
        {"email": f"platform-only-{i}", "phone": None, "age_band": "old", "stage_4a": "act", "visits": 0.0}
        for i in range(30)
    ]
    rows = []
    for u in range(len(platform.users)):
        # each snapshot date: absent (a drop-out or a drop-in), one row, or several rows at different hours
        for day in (DAY0, DAY1):
            for hour in sorted(rng.choice(24, size=rng.choice([0, 1, 1, 1, 2, 3]), replace=False)):
                at = dt.datetime.combine(day, dt.time(int(hour)))
                rows.append({"user": u, "day": at, "stage_4a": rng.choice(STAGES)})
        # rows on other days must not count: the day after the start, the day before the end
        if rng.random() < 0.3:
            for day in (DAY0 + dt.timedelta(days=1), DAY1 - dt.timedelta(days=1)):
                rows.append({"user": u, "day": dt.datetime.combine(day, dt.time(12)), "stage_4a": rng.choice(STAGES)})
    platform.events["stage_history"] = rows
    return {"brand": brand, "platform": platform}, pd.DataFrame(rows)


def reference(history: pd.DataFrame, n_matched: int) -> dict[tuple[str, str], int]:
    """People per (stage on DAY0, stage on DAY1), the first `n_matched` platform users being the matched ones."""

    def on(day: dt.date) -> pd.Series:
        h = history[history["day"].dt.date == day].sort_values("day")
        return h.groupby("user")["stage_4a"].last()

    people = pd.DataFrame({"user": range(n_matched)})
    people["s0"] = people["user"].map(on(DAY0)).fillna("none")
    people["s1"] = people["user"].map(on(DAY1)).fillna("none")
    counts = people.groupby(["s0", "s1"]).size().to_dict()
    return {(s0, s1): counts.get((s0, s1), 0) for s0 in (*STAGES, "none") for s1 in (*STAGES, "none")}


def test_the_exact_flow_is_the_reference_with_drop_outs_and_drop_ins(rooms):
    data, history = population(seed=1)
    truth = reference(history, 400)
    # the data exercises every rule: drop-outs, drop-ins, people absent on both dates
    assert sum(v for (s0, s1), v in truth.items() if s0 != "none" and s1 == "none") > 20
    assert sum(v for (s0, s1), v in truth.items() if s0 == "none" and s1 != "none") > 20
    assert truth[("none", "none")] > 5
    noise = RecordingNoise()
    room = rooms(PRIVACY_POLICY, data, noise)
    answer = room.queries.funnel_flow(BRAND, C, FunnelFlowQuery(DAY0, DAY1, 1.0))
    got = {c.keys: c.value for c in answer.cells if c.measure == "people"}
    assert got == {k: float(v) for k, v in truth.items()}


def test_noisy_flow_cells_are_within_their_bounds(rooms):
    data, history = population(seed=2)
    truth = reference(history, 400)
    room = rooms(PRIVACY_POLICY, data)
    hits = total = 0
    for _ in range(16):
        answer = room.queries.funnel_flow(BRAND, C, FunnelFlowQuery(DAY0, DAY1, 1.0))
        for c in answer.cells:
            if c.measure == "people" and not c.suppressed:
                hits += abs(c.value - truth[c.keys]) <= c.error_95
                total += 1
    print(f"funnel flow coverage: {hits}/{total} = {hits / total:.3f}")
    assert total >= 300
    assert hits / total >= 0.9
