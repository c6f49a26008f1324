"""Neighbouring datasets give the same outcome class: every query type, with edge parameters, on D and on D minus
one person (of either member), succeeds or is refused identically, with the same message and the same cells.

The values differ (that is what the noise is for); whether a query succeeds, how it is refused, and which cells it
releases must not, or the outcome itself is an oracle on the removed person.
"""

from __future__ import annotations

import datetime as dt

import pytest
from privacy_data import BRAND, DAY0, DAY1, PERIOD1, PERIOD2, PRIVACY_POLICY, RETARGET, MemberData, build

from cleanroom.analytics.queries import (
    ActivationQuery,
    AttributionQuery,
    DimensionRef,
    FunnelFlowQuery,
    FunnelQuery,
    LiftQuery,
    LookalikeQuery,
    LoyaltyQuery,
    OverlapQuery,
    SegmentInsightQuery,
    ValueQuery,
)
from cleanroom.errors import CleanroomError
from cleanroom.privacy.noise import DiscreteLaplace

T0 = dt.datetime(2026, 11, 1)
C = "privacy-test"
d = DimensionRef.parse


def dataset() -> dict[str, MemberData]:
    """A population with the edge cases the review used: history-only people, one-person groups, old touches,
    people with no identifier, duplicate and conflicting keys, negative values, and a lone holdout."""
    n = 30
    brand = MemberData(
        users=[
            {"email": f"e{i}", "phone": f"p{i}" if i % 4 else None, "tier": ("gold", "basic", None)[i % 3]}
            for i in range(n)
        ]
        + [{"email": "e0", "phone": None, "tier": "gold"}, {"email": None, "phone": None, "tier": "basic"}]
    )
    brand.events["conversions"] = [
        {"user": i, "ts": T0 + dt.timedelta(hours=i), "value": (-50.0, 0.01, 99.99, 1e9)[i % 4]}
        for i in range(n)
        for _ in range(i % 3)
    ]
    platform = MemberData(
        users=[
            {
                "email": f"e{i}" if i != 5 else "e6",
                "phone": f"p{i}",
                "age_band": ("young", "old")[i % 2] if i % 7 else None,
                "stage_4a": ("aware", "appeal", "act", "advocate")[i % 4],
                "visits": float(i % 11),
            }
            for i in range(n)
        ]
    )
    platform.events["exposures"] = [
        {
            "user": i,
            "ts": T0 - dt.timedelta(days=(i * 37) % 400, hours=i),
            "campaign": ("c1", "c2")[i % 2],
            "channel": ("search", "feed")[(i // 2) % 2],
            "kind": ("impression", "click")[(i // 3) % 2],
        }
        for i in range(n)
        for _ in range(1 + i % 3)
    ]
    platform.events["test_groups"] = [
        {"user": i, "campaign": "c1", "test_group": "holdout" if i == 3 else "exposed"} for i in range(0, n, 3)
    ]
    platform.events["stage_history"] = [
        {"user": i, "day": day, "stage_4a": ("aware", "appeal", "act", "advocate")[(i + k) % 4]}
        for i in range(n)
        for k, day in enumerate((DAY0, DAY1))
        if (i + k) % 5
    ]
    return {"brand": brand, "platform": platform}


QUERIES = {
    "overlap, three dimensions": lambda e: e.overlap(
        BRAND, C, OverlapQuery((d("brand.tier"), d("platform.age_band"), d("platform.stage_4a")), 0.01)
    ),
    "overlap, no dimension, the largest epsilon": lambda e: e.overlap(BRAND, C, OverlapQuery((), 1e4)),
    "overlap, an undeclared dimension": lambda e: e.overlap(BRAND, C, OverlapQuery((d("brand.email"),), 1.0)),
    "funnel by tier, AIPL": lambda e: e.funnel(BRAND, C, FunnelQuery(d("brand.tier"), 0.5, "aipl")),
    "funnel flow": lambda e: e.funnel_flow(BRAND, C, FunnelFlowQuery(DAY0, DAY1, 1.0)),
    "funnel flow, dates with no history": lambda e: e.funnel_flow(
        BRAND, C, FunnelFlowQuery(dt.date(2020, 1, 1), dt.date(2020, 1, 2), 1.0)
    ),
    "segment insight": lambda e: e.segment_insight(BRAND, C, SegmentInsightQuery(d("platform.age_band"), 1.0)),
    "value of conversions by three dimensions": lambda e: e.value(
        BRAND,
        C,
        ValueQuery((d("brand.tier"), d("platform.age_band"), d("platform.stage_4a")), "brand.conversions.value", 0.5),
    ),
    "value of a users measure": lambda e: e.value(BRAND, C, ValueQuery((), "platform.users.visits", 1.0)),
    "value of an undeclared measure": lambda e: e.value(BRAND, C, ValueQuery((), "brand.conversions.cost", 1.0)),
    "loyalty": lambda e: e.loyalty(BRAND, C, LoyaltyQuery((d("brand.tier"),), PERIOD1, PERIOD2, 1.0)),
    "loyalty in years nobody bought in": lambda e: e.loyalty(
        BRAND,
        C,
        LoyaltyQuery((), (dt.date(2001, 1, 1), dt.date(2002, 1, 1)), (dt.date(2002, 1, 1), dt.date(2003, 1, 1)), 1.0),
    ),
    "time decay at the shortest half-life, a year back": lambda e: e.attribution(
        BRAND, C, AttributionQuery("time_decay", 365, "campaign", 1.0, d("brand.tier"), half_life_days=1 / 24)
    ),
    "time decay below the shortest half-life": lambda e: e.attribution(
        BRAND, C, AttributionQuery("time_decay", 365, "campaign", 1.0, half_life_days=1e-9)
    ),
    "position based, one day, clicks over views": lambda e: e.attribution(
        BRAND, C, AttributionQuery("position_based", 1, "channel", 1.0, click_over_view=True)
    ),
    "lift with a one-person holdout": lambda e: e.lift(BRAND, C, LiftQuery("c1", 0.01)),
    "lift of a campaign nobody is in": lambda e: e.lift(BRAND, C, LiftQuery("c2", 1.0)),
    "lift below the smallest epsilon": lambda e: e.lift(BRAND, C, LiftQuery("c1", 1e-6)),
    "activation at the minimum size": lambda e: e.activate(
        BRAND, C, ActivationQuery(((d("brand.tier"), "gold"), (d("platform.age_band"), "old")), 1.0, 1e-9)
    ),
    "activation on the recipient's columns alone": lambda e: e.activate(
        BRAND, C, ActivationQuery(((d("platform.age_band"), "old"),), 1.0)
    ),
    "retargeting: reached by c1, did not buy": lambda e: e.activate(BRAND, C, ActivationQuery((), 1.0, 1e-9, RETARGET)),
    "retargeting on the recipient's events alone": lambda e: e.activate(
        BRAND, C, ActivationQuery((), 1.0, 1e-9, RETARGET[:1])
    ),
    "lookalike": lambda e: e.lookalike(BRAND, C, LookalikeQuery(((d("brand.tier"), "gold"),), 1, 1.0, 1e-9)),
    "lookalike with a delta over the policy's": lambda e: e.lookalike(
        BRAND, C, LookalikeQuery(((d("brand.tier"), "gold"),), 1, 1.0, 1e-5)
    ),
}


def outcome_class(call) -> tuple[str, ...]:
    try:
        answer = call()
    except CleanroomError as exc:
        return type(exc).__name__, str(exc)
    return "ok", repr(answer.dimensions), repr([(c.keys, c.measure) for c in answer.cells])


@pytest.fixture(scope="module")
def on_full(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, ...]]:
    """Every query's outcome class on the full dataset D, asked once (in QUERIES' order) for all the neighbours."""
    room = build(tmp_path_factory.mktemp("neighbours"), PRIVACY_POLICY, dataset(), DiscreteLaplace())
    try:
        return {name: outcome_class(lambda q=query: q(room.queries)) for name, query in QUERIES.items()}
    finally:
        room.close()


@pytest.mark.parametrize(
    ("side", "person"), [("brand", 0), ("brand", 30), ("brand", 5), ("platform", 3), ("platform", 5), ("platform", 6)]
)
def test_one_person_more_or_less_never_changes_the_outcome_class(rooms, on_full, side, person):
    full = dataset()
    neighbour = {**full, side: full[side].without_user(person)}
    on_n = rooms(PRIVACY_POLICY, neighbour)
    for name, query in QUERIES.items():
        a = on_full[name]
        b = outcome_class(lambda q=query: q(on_n.queries))
        assert a == b, (name, a, b)


def test_the_edge_queries_cover_both_outcomes(on_full):
    """The comparison above is not vacuous: some edge queries succeed and some are refused (from the request)."""
    classes = {name: outcome[0] for name, outcome in on_full.items()}
    assert classes["lift below the smallest epsilon"] == "InvalidArgumentError"
    assert classes["time decay below the shortest half-life"] == "InvalidArgumentError"
    assert classes["activation on the recipient's columns alone"] == "InvalidArgumentError"
    assert classes["lookalike with a delta over the policy's"] == "InvalidArgumentError"
    assert classes["time decay at the shortest half-life, a year back"] == "ok"
    assert classes["lift with a one-person holdout"] == "ok"
    assert classes["lookalike"] == "ok"
    assert classes["value of an undeclared measure"] == "InvalidArgumentError"
    assert classes["value of conversions by three dimensions"] == "ok"
    assert classes["loyalty in years nobody bought in"] == "ok"
    assert classes["retargeting: reached by c1, did not buy"] == "ok"
    assert classes["retargeting on the recipient's events alone"] == "InvalidArgumentError"


#: The privacy policy with each person's total of brand.conversions.value clipped to 60 (two orders of up to 100
#: each reach 200): value's sum and lift's revenue are noised at c x 6,000 cents (docs/privacy.md, "Money").
CLIPPED_POLICY = PRIVACY_POLICY.replace("max_per_person: 2}", "max_per_person: 2, per_person_max: {value: 60}}")
CLIPPED_QUERIES = {
    name: QUERIES[name]
    for name in (
        "value of conversions by three dimensions",
        "lift with a one-person holdout",
        "lift of a campaign nobody is in",
    )
} | {
    "value of conversions, everyone": lambda e: e.value(BRAND, C, ValueQuery((), "brand.conversions.value", 1.0)),
    "value by tier at the largest epsilon": lambda e: e.value(
        BRAND, C, ValueQuery((d("brand.tier"),), "brand.conversions.value", 1e4)
    ),
    "lift at the largest epsilon": lambda e: e.lift(BRAND, C, LiftQuery("c1", 1e4)),
}


@pytest.fixture(scope="module")
def clipped_on_full(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, ...]]:
    """The money queries' outcome classes on D under the policy with per_person_max."""
    room = build(tmp_path_factory.mktemp("neighbours-clipped"), CLIPPED_POLICY, dataset(), DiscreteLaplace())
    try:
        return {name: outcome_class(lambda q=query: q(room.queries)) for name, query in CLIPPED_QUERIES.items()}
    finally:
        room.close()


@pytest.mark.parametrize(("side", "person"), [("brand", 0), ("brand", 5), ("platform", 3), ("platform", 6)])
def test_with_a_per_person_cap_one_person_never_changes_the_outcome_class(rooms, clipped_on_full, side, person):
    """Issue 31: under the policy's per_person_max, value's and lift's histograms (people by orders, by conversion)
    and clipped sums release the same cells, withheld the same way, on D and on D without one person."""
    assert "per_person_max" in CLIPPED_POLICY
    full = dataset()
    on_n = rooms(CLIPPED_POLICY, {**full, side: full[side].without_user(person)})
    for name, query in CLIPPED_QUERIES.items():
        a = clipped_on_full[name]
        b = outcome_class(lambda q=query: q(on_n.queries))
        assert a == b, (name, a, b)
    assert {outcome[0] for outcome in clipped_on_full.values()} == {"ok"}
