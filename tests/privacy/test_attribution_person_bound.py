"""Attribution's revenue under the policy's per-person bound (`per_person_max`), and why it uses no Gaussian.

Issue 31: attribution's revenue noise had scale c x max_per_person x max|value| / (ε/2): at ε = 1 its bar was
15-26% of a cell's revenue with a thousand buyers or more (benchmarks/README.md, "Accuracy"). Each person's capped
conversions are now scaled down together to at most the policy's per-person bound (integer cents, rounded toward
zero), so the revenue vector's L1 sensitivity per matched pair is that bound: these tests check the stated
sensitivity, that removing any one users row of either member moves each exact vector by at most it (negative
values, many conversions, every model), and the decision not to use the Gaussian mechanism.
"""

from __future__ import annotations

import datetime as dt
import math

import opendp.prelude as dp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from privacy_data import BRAND, MemberData, RecordingNoise

from cleanroom.analytics.attribution import CENTS, MILLI, MODELS
from cleanroom.analytics.queries import AttributionQuery
from cleanroom.privacy.noise import error_95

POLICY = """\
name: attribution person bound
members:
  brand: {{abilities: [contribute, query, receive_results]}}
  platform: {{abilities: [contribute]}}
identifiers: [email, phone]
tables:
  brand.users: {{dimensions: {{tier: [gold, basic]}}}}
  brand.conversions: {{time: ts, measures: {{value: [{lo}, 100]}}, max_per_person: 3{per_person}}}
  platform.users: {{}}
  platform.exposures: {{time: ts, dimensions: {{campaign: [c1, c2], channel: [search, feed],
                                              kind: [impression, click]}}}}
queries: [attribution]
min_group_size: 1
epsilon: {{per_member_total: 1.0e+6, per_query_max: 1.0e+4}}
"""
C = "privacy-test"
T0 = dt.datetime(2026, 11, 1, 12)
STABILITY = 4  # two identifier types: one users row changes at most 4 matched pairs


def policy(per_person: float | None, lo: float = 0) -> str:
    """Values in [lo, 100], three conversions a person, and the per-person bound when given."""
    return POLICY.format(lo=lo, per_person="" if per_person is None else f", per_person_max: {{value: {per_person}}}")


def _vectors(rooms, text: str, data: dict[str, MemberData], q: AttributionQuery) -> tuple[list, list]:
    """The exact (conversions, revenue) vectors handed to the noise, each with its stated sensitivity."""
    noise = RecordingNoise()
    room = rooms(text, data, noise)
    room.queries.attribution(BRAND, C, q)
    conv, rev = noise.calls
    return [conv.counts, conv.sensitivity], [rev.counts, rev.sensitivity]


def _one_buyer(values: list[float]) -> dict[str, MemberData]:
    brand = MemberData(
        [{"email": "e0", "phone": "p0", "tier": "gold"}],
        {"conversions": [{"user": 0, "ts": T0 + dt.timedelta(hours=k), "value": v} for k, v in enumerate(values)]},
    )
    platform = MemberData([{"email": "e0", "phone": "p0"}])
    platform.events["exposures"] = [
        {"user": 0, "ts": T0 - dt.timedelta(hours=1), "campaign": "c1", "channel": "feed", "kind": "click"}
    ]
    return {"brand": brand, "platform": platform}


def test_the_revenue_vector_states_the_per_person_bound_and_scales_a_big_buyer_to_it(rooms) -> None:
    q = AttributionQuery("last_touch", 7, "campaign", 1.0)
    conv, rev = _vectors(rooms, policy(150), _one_buyer([100.0, 80.0, 70.0]), q)
    assert rev[1] == STABILITY * 150 * CENTS  # not 4 x 3 x 100 x 100
    assert conv[1] == STABILITY * 3 * MILLI
    # 250.00 scaled to 150.00 in proportion, each conversion's cents rounded down: 6000 + 4800 + 4200
    assert sum(rev[0]) == 15000
    # a buyer below the bound is left as is
    _, small = _vectors(rooms, policy(150), _one_buyer([100.0, 0.37]), q)
    assert sum(small[0]) == 10037


def test_without_a_per_person_bound_the_answer_is_todays(rooms) -> None:
    q = AttributionQuery("linear", 7, "channel", 1.0)
    _, rev = _vectors(rooms, policy(None), _one_buyer([100.0, 80.0, 70.0]), q)
    assert sum(rev[0]) == 25000
    assert rev[1] == STABILITY * math.ceil(3 * 100 * CENTS)


def test_the_revenue_bar_at_epsilon_one_is_what_the_bound_allows(rooms) -> None:
    """At ε = 1 the revenue bar is that of the per-person bound (250 here, under the rows' 3 x 100), not the rows'."""
    room = rooms(policy(250), _one_buyer([10.0]), RecordingNoise())
    answer = room.queries.attribution(BRAND, C, AttributionQuery("linear", 7, "channel", 1.0))
    bars = {c.error_95 for c in answer.cells if c.measure == "attributed_revenue" and not c.suppressed}
    assert bars == {error_95(STABILITY * 250 * CENTS / 0.5) / CENTS}  # 5,991 (the rows' bound: 7,190)


# -- removing any one users row moves each exact vector by at most its stated sensitivity ------------------------
VALUES = st.sampled_from([-50.0, -0.01, 0.0, 0.29, 33.33, 99.99, 100.0, 1e6])


@st.composite
def datasets(draw: st.DrawFn) -> tuple[dict[str, MemberData], str, int, AttributionQuery, float]:
    """A few people on both sides sharing identifiers (so one row can touch several pairs), with many conversions."""
    keys = st.sampled_from(["a", "b", "c", "d", None])
    n_brand, n_platform = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    brand = MemberData(
        [
            {"email": draw(keys), "phone": draw(keys), "tier": draw(st.sampled_from(["gold", "basic"]))}
            for _ in range(n_brand)
        ]
    )
    brand.events["conversions"] = [
        {"user": u, "ts": T0 + dt.timedelta(hours=draw(st.integers(0, 48))), "value": draw(VALUES)}
        for u in range(n_brand)
        for _ in range(draw(st.integers(0, 5)))
    ]
    platform = MemberData([{"email": draw(keys), "phone": draw(keys)} for _ in range(n_platform)])
    platform.events["exposures"] = [
        {
            "user": u,
            "ts": T0 + dt.timedelta(hours=draw(st.integers(-72, 48))),
            "campaign": draw(st.sampled_from(["c1", "c2"])),
            "channel": draw(st.sampled_from(["search", "feed"])),
            "kind": draw(st.sampled_from(["impression", "click"])),
        }
        for u in range(n_platform)
        for _ in range(draw(st.integers(0, 4)))
    ]
    side = draw(st.sampled_from(["brand", "platform"]))
    removed = draw(st.integers(0, (n_brand if side == "brand" else n_platform) - 1))
    q = AttributionQuery(
        draw(st.sampled_from(MODELS)),
        draw(st.integers(1, 3)),
        draw(st.sampled_from(["campaign", "channel"])),
        1.0,
        click_over_view=draw(st.booleans()),
        half_life_days=0.5,
    )
    bound = draw(st.sampled_from([0.01, 37.5, 120.0, 250.0]))
    return {"brand": brand, "platform": platform}, side, removed, q, bound


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(datasets())
def test_removing_one_users_row_moves_each_vector_by_at_most_its_stated_sensitivity(rooms, drawn) -> None:
    data, side, removed, q, bound = drawn
    text = policy(bound, lo=-50)
    before = _vectors(rooms, text, data, q)
    after = _vectors(rooms, text, {**data, side: data[side].without_user(removed)}, q)
    for (d, stated), (n, stated_n) in zip(before, after, strict=True):
        assert stated == stated_n
        moved = sum(abs(a - b) for a, b in zip(d, n, strict=True))
        assert moved <= stated, f"{q}: moved {moved} > stated {stated} ({d} vs {n})"
    assert before[1][1] == STABILITY * math.ceil(bound * CENTS)


@pytest.mark.parametrize("model", ["last_touch", "linear"])
def test_the_person_who_sets_the_joins_layout_moves_only_their_own_credit(rooms, model) -> None:
    """The touches' join is laid out from everyone's data (`Bounded.build`: the least row and time, the bucket width,
    the number of buckets); one person with conversions in 1901 and 2199 sets it. Removing them moves each vector by
    at most its stated sensitivity, and leaves exactly what the others get when that person converts nothing (the
    same people under another layout)."""

    def data(far: bool) -> dict[str, MemberData]:
        people = [{"email": f"e{i}", "phone": f"p{i}", "tier": "gold" if i % 2 else "basic"} for i in range(3)]
        times = [T0, T0 + dt.timedelta(hours=5)] + ([dt.datetime(1901, 1, 2), dt.datetime(2199, 12, 1)] if far else [])
        brand = MemberData(
            list(people),
            {"conversions": [{"user": u, "ts": t, "value": 40.0 + u} for u, t in enumerate(times[:2])]},
        )
        brand.events["conversions"] += [{"user": 2, "ts": t, "value": 99.0} for t in times[2:]]
        platform = MemberData([{"email": p["email"], "phone": p["phone"]} for p in people])
        platform.events["exposures"] = [
            {"user": u, "ts": t - dt.timedelta(hours=h), "campaign": c, "channel": "feed", "kind": "click"}
            for u, t in enumerate(times[:2] + times[2:3])
            for h, c in ((1, "c1"), (30, "c2"))
        ] + [{"user": 2, "ts": times[-1], "campaign": "c2", "channel": "search", "kind": "impression"}] * far
        return {"brand": brand, "platform": platform}

    q = AttributionQuery(model, 3, "campaign", 1.0)
    text = policy(250)
    before = _vectors(rooms, text, data(True), q)
    without = _vectors(rooms, text, {**data(True), "brand": data(True)["brand"].without_user(2)}, q)
    quiet = _vectors(rooms, text, data(False), q)
    assert without[0][0] == quiet[0][0]
    assert without[1][0] == quiet[1][0]
    for (d, stated), (n, _) in zip(before, without, strict=True):
        assert 0 < sum(abs(a - b) for a, b in zip(d, n, strict=True)) <= stated


# -- the Gaussian mechanism does not win for attribution --------------------------------------------------------
def _gaussian_bar(epsilon: float, delta: float, l2: float) -> float:
    """1.96 sigma of OpenDP's Gaussian (zCDP, converted to (ε, δ)) meeting (epsilon, delta) at L2 sensitivity l2."""
    lo, hi = 1e-3, 1e4
    while hi / lo > 1.0001:
        sigma = math.sqrt(lo * hi)
        meas = dp.m.make_gaussian(
            dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float), scale=sigma
        )
        eps, _ = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(meas), delta).map(l2)
        lo, hi = (sigma, hi) if eps > epsilon else (lo, sigma)
    return 1.959963984540054 * hi


@pytest.mark.parametrize("epsilon", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-7, 1e-9])
def test_laplace_beats_the_gaussian_for_attributions_two_vectors(epsilon: float, delta: float) -> None:
    """In units of a vector's L1 sensitivity: Laplace spends ε/2 on each vector; one person's part of a vector may
    sit in one cell, so its L2 sensitivity is as large as its L1 and a joint Gaussian over both vectors has L2
    sensitivity √2. Even the Gaussian on one vector with all of ε loses, so there is no split for it to win."""
    laplace = error_95(2 * 1000 / epsilon) / 1000  # fine-grained units: the discrete bar of scale 2/ε
    assert laplace < _gaussian_bar(epsilon, delta, 1.0) < _gaussian_bar(epsilon, delta, math.sqrt(2))
