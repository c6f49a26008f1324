"""The demo's lookalike against the synthetic truth: the audience the platform receives holds at least three times
the gold customers of a random audience, and the lift the brand is told has a 95% interval that holds the true one.

The data, the policy (two identifier types: c = 4) and the query are the demo's (`cleanroom demo` at its default
sizes); the match is loaded from the truth directly (`load_direct`) instead of being run through the PSI, which is
tested elsewhere and would only make this slower. Training and noise are real (opacus, OpenDP).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cleanroom.analytics import LookalikeQuery
from cleanroom.analytics.audiences import Audiences, parse_audience_name
from cleanroom.analytics.queries import DimensionRef
from cleanroom.devtools.demo import LOOKALIKE_AUDIENCE_SHARE, LOOKALIKE_DELTA, LOOKALIKE_EPSILON, LOOKALIKE_SEED
from cleanroom.devtools.synthetic import DEMO_POLICY, SyntheticConfig, SyntheticData, generate, load_direct
from cleanroom.principals import Principal, Role
from cleanroom.room import Room
from cleanroom_client.policy import parse_policy

BRAND, PLATFORM = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)
#: `cleanroom demo`'s default sizes.
DEMO_SIZES = SyntheticConfig(brand_users=20_000, platform_users=40_000, shared=6_000)


def _strings(values: pd.Series) -> pa.Array:
    return pa.array(values, from_pandas=True, type=pa.string())


def _load(room: Room, collab: str, data: SyntheticData) -> None:
    """The tables the demo's members upload, as stored after the upload, and the true pairs as the match."""
    brand_row = {k: i for i, k in enumerate(data.brand_users["customer_id"])}
    platform_row = {k: i for i, k in enumerate(data.platform_users["user_id"])}
    users, exposures, history = data.platform_users, data.platform_exposures, data.platform_stage_history
    tables = {
        ("brand", "users"): pa.table(
            {"row_id": np.arange(len(data.brand_users)), "tier": _strings(data.brand_users["tier"])}
        ),
        ("platform", "users"): pa.table(
            {
                "row_id": np.arange(len(users)),
                "age_band": _strings(users["age_band"]),
                "stage_4a": _strings(users["stage_4a"]),
                "visits_30d": users["visits_30d"].to_numpy(np.float64),
            }
        ),
        ("platform", "exposures"): pa.table(
            {
                "row_id": exposures["user_id"].map(platform_row).to_numpy(np.int64),
                "ts": exposures["ts"].to_numpy(),
                **{c: _strings(exposures[c]) for c in ("campaign", "channel", "kind")},
            }
        ),
        ("platform", "stage_history"): pa.table(
            {
                "row_id": history["user_id"].map(platform_row).to_numpy(np.int64),
                "date": pd.to_datetime(history["date"]).to_numpy(),
                "stage_4a": _strings(history["stage_4a"]),
            }
        ),
    }
    truth = data.truth
    load_direct(
        room,
        collab,
        tables,
        truth["customer_id"].map(brand_row).to_numpy(np.int64),
        truth["user_id"].map(platform_row).to_numpy(np.int64),
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    data = generate(DEMO_SIZES)
    room = Room.open(tmp_path_factory.mktemp("lookalike-reference"))
    c = room.collaborations.create(BRAND, "demo-lookalike", DEMO_POLICY)
    for m in (BRAND, PLATFORM):
        room.collaborations.approve(m, c.id, c.policy_etag)
    _load(room, c.id, data)
    yield room, c.id, data
    room.close()


def test_the_demo_lookalike_finds_the_gold_customers_and_the_brand_is_told_so_within_its_bound(demo):
    room, collab, data = demo
    size = round(LOOKALIKE_AUDIENCE_SHARE * len(data.platform_users))
    seed = tuple((DimensionRef.parse(k), v) for k, v in LOOKALIKE_SEED.items())
    answer = room.queries.lookalike(
        BRAND, collab, LookalikeQuery(seed, size, epsilon=LOOKALIKE_EPSILON, delta=LOOKALIKE_DELTA)
    )
    c, a = parse_audience_name(answer.audience)
    rows = np.frombuffer(b"".join(Audiences(room.store, room.audit).fetch(c, a, "platform")), dtype="<i8")
    # the truth: platform users who are the brand's gold customers (the seeds, known here from the generator)
    gold_users = set(data.truth.merge(data.brand_users, on="customer_id").query("tier == 'gold'")["user_id"])
    gold = data.platform_users["user_id"].isin(gold_users).to_numpy()
    assert len(rows) == size
    precision, base_rate = gold[rows].mean(), gold.mean()
    assert precision >= 3 * base_rate, (precision, base_rate)

    cells = {c.measure: c for c in answer.cells if c.keys == ("quality",)}
    assert not any(cell.suppressed for cell in cells.values())
    lift, lower, upper = (cells[m].value for m in ("lift_over_random", "lift_lower_95", "lift_upper_95"))
    true_lift = precision / base_rate
    assert lower <= lift <= upper
    assert cells["lift_over_random"].error_95 == pytest.approx(max(lift - lower, upper - lift))
    assert lower > 1, "at the demo's size the bound shows the lift (a lower end of 1 or less shows nothing)"
    # This one release agrees with the truth: inside twice its 95% bound (a 95% bound misses one release in 20 at
    # most, by design; twice the bound, practically never). That the bound itself is honest at exactly these
    # counts is measured below over many draws of the same noise.
    assert lift - 2 * (lift - lower) <= true_lift <= lift + 2 * (upper - lift), (lower, true_lift, upper)
    for measure, truth in (("precision", precision), ("base_rate", base_rate)):
        cell = cells[measure]
        assert 0 <= cell.value <= 1
        assert abs(cell.value - truth) <= 2 * cell.error_95, (measure, cell, truth)

    # Coverage at the demo's own exact counts, with the engine's sensitivity (2c + 2) and share of epsilon: over
    # 4,000 draws of real OpenDP noise the lift's interval and the precision and base rate bars hold the truth in at
    # least 95% of releases (all three at once: the bound is a union bound over the three counts). The true miss
    # rate here is 3.1-3.7% (measured over 4,000 draws, twice): with 400 draws a 5% threshold was crossed by chance
    # in a few runs in a hundred (21 of 400 in one fresh clone); at 4,000 it is four standard deviations away.
    from cleanroom.analytics.lookalike import QUALITY_SHARE, quality_cells
    from cleanroom.privacy.noise import DiscreteLaplace

    stability = parse_policy(DEMO_POLICY).stability
    exact = [int(gold.sum()), int(gold[rows].sum()), len(gold)]
    mechanism, misses = DiscreteLaplace(), 0
    for _ in range(4000):
        noisy, scale = mechanism.release(exact, 2 * stability + 2, LOOKALIKE_EPSILON * QUALITY_SHARE)
        drawn = {x.measure: x for x in quality_cells(noisy, scale, size, 50)}
        truths = (("precision", precision), ("base_rate", base_rate))
        held = drawn["lift_lower_95"].value <= true_lift <= drawn["lift_upper_95"].value and all(
            abs(drawn[m].value - t) <= drawn[m].error_95 for m, t in truths
        )
        misses += not held
    assert misses <= 200, misses  # 5% of the draws
