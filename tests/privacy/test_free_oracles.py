"""No free oracles: each attack an independent review reproduced, as a test.

Every query is validated against the request and the policy only, then charged, then reads data; after that
nothing may fail because of the data. Each test states the attack (what a hostile member learned for 0 epsilon)
and checks that it now teaches nothing: the outcome on D and on D minus the target person is the same, or the
data that made the difference is refused at upload.
"""

from __future__ import annotations

import datetime as dt
import math

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from privacy_data import BRAND, DAY0, DAY1, PRIVACY_POLICY, MemberData, every_query

from cleanroom.analytics import engine as engine_module
from cleanroom.analytics.engine import Noisy, lift_cells
from cleanroom.analytics.lift import CONVERSION, PersonRange
from cleanroom.analytics.matched import MatchedData
from cleanroom.analytics.queries import AttributionQuery, DimensionRef, FunnelFlowQuery, LiftQuery, OverlapQuery
from cleanroom.errors import CleanroomError, InvalidArgumentError, QueryFailedError
from cleanroom.privacy.budget import Limits

T0 = dt.datetime(2026, 11, 1)
C = "privacy-test"


def population(n: int = 12) -> dict[str, MemberData]:
    """n people on both sides, all matched by email, each with a conversion and an exposure, half in each group."""
    brand = MemberData(users=[{"email": f"e{i}", "tier": "gold" if i % 2 else "basic"} for i in range(n)])
    brand.events["conversions"] = [{"user": i, "ts": T0 + dt.timedelta(days=1), "value": 10.0 + i} for i in range(n)]
    platform = MemberData(
        users=[
            {"email": f"e{i}", "age_band": "young" if i % 3 else "old", "stage_4a": "aware", "visits": 1.0}
            for i in range(n)
        ]
    )
    platform.events["exposures"] = [
        {"user": i, "ts": T0, "campaign": "c1", "channel": "search", "kind": "impression"} for i in range(n)
    ]
    platform.events["test_groups"] = [
        {"user": i, "campaign": "c1", "test_group": "exposed" if i % 2 else "holdout"} for i in range(n)
    ]
    platform.events["stage_history"] = [
        {"user": i, "day": day, "stage_4a": "aware"} for i in range(n) for day in (DAY0, DAY1)
    ]
    return {"brand": brand, "platform": platform}


def outcome(call) -> tuple[str, str]:
    """What the caller can tell apart: success (with the released cells' shape) or the error and its message."""
    try:
        answer = call()
    except CleanroomError as exc:
        return type(exc).__name__, str(exc)
    return "ok", repr([(c.keys, c.measure) for c in answer.cells])


def spent(room) -> float:
    return room.budget.status(C, "brand", Limits(1e6, 1e-5)).spent


def test_attribution_time_decay_never_fails_on_old_touches(rooms):
    """Attack (a): with a tiny half-life, weights 2^(-age/h) underflowed to 0, 0/0 = NaN failed the BIGINT cast iff
    some matched conversion had all its touches older than ~1074 h: "this person converted long after exposure"."""
    data = population()
    target = data["platform"].events["exposures"][0]
    target["ts"] = T0 - dt.timedelta(days=300)  # person 0's only touch: 300 days (7200 hours) before converting
    without = {"brand": data["brand"].without_user(0), "platform": data["platform"].without_user(0)}
    tiny = AttributionQuery("time_decay", 365, "campaign", 1.0, half_life_days=1e-6)
    floor = AttributionQuery("time_decay", 365, "campaign", 1.0, half_life_days=1 / 24)
    results = []
    for d in (data, without):
        room = rooms(PRIVACY_POLICY, d)
        before = spent(room)
        refused = outcome(lambda room=room: room.queries.attribution(BRAND, C, tiny))
        assert refused[0] == "InvalidArgumentError"
        assert spent(room) == before  # refused from the request alone: free, and the same whatever the data
        results.append((refused, outcome(lambda room=room: room.queries.attribution(BRAND, C, floor))))
        assert spent(room) == pytest.approx(before + 1.0)
    assert results[0] == results[1]
    assert results[0][1][0] == "ok"


def test_lift_groups_are_fixed_by_the_policy_and_checked_at_upload(rooms):
    """Attacks (b) and (d): lift was refused with "found ['control']" iff the platform's single control person was
    matched (a third test group in the policy), and with "found [None]" iff a person uploaded with an empty test
    group was matched. The policy now fixes the groups to (exposed, holdout); other values are refused at upload."""
    for bad in ("control", None):
        data = population()
        data["platform"].events["test_groups"][0]["test_group"] = bad
        with pytest.raises(InvalidArgumentError, match="test_group"):
            rooms(PRIVACY_POLICY, data)
    results = set()
    for d in (population(), {"brand": population()["brand"], "platform": population()["platform"].without_user(0)}):
        room = rooms(PRIVACY_POLICY, d)
        results.add(outcome(lambda room=room: room.queries.lift(BRAND, C, LiftQuery("c1", 1.0))))
        results.add(outcome(lambda room=room: room.queries.lift(BRAND, C, LiftQuery("c2", 1.0))))  # nobody in it
    assert {r[0] for r in results} == {"ok"}


def test_funnel_flow_stages_outside_the_users_domain_are_refused_at_upload(rooms):
    """Attack (c): funnel flow raised "values outside the declared domains" iff a person with a history-only stage
    was matched. The policy makes the history's domain equal the users table's; other values are refused at upload,
    and the flow is the same kind of answer with or without any one person."""
    data = population()
    data["platform"].events["stage_history"][0]["stage_4a"] = "lapsed"
    with pytest.raises(InvalidArgumentError, match="outside its declared domain"):
        rooms(PRIVACY_POLICY, data)
    flow = FunnelFlowQuery(DAY0, DAY1, 1.0)
    got = set()
    for d in (population(), {"brand": population()["brand"].without_user(3), "platform": population()["platform"]}):
        room = rooms(PRIVACY_POLICY, d)
        got.add(outcome(lambda room=room: room.queries.funnel_flow(BRAND, C, flow)))
    assert len(got) == 1
    assert next(iter(got))[0] == "ok"


def test_success_cannot_be_bought_for_almost_no_epsilon(rooms):
    """Lift at epsilon = 1e-6 sometimes failed with ZeroDivisionError after the noise was drawn, charging nothing.
    Now every query spends at least the policy's per_query_min, refused (free) below it."""
    room = rooms(PRIVACY_POLICY, population())
    before = spent(room)
    for eps in (1e-6, 1e-300):
        with pytest.raises(InvalidArgumentError, match="outside the policy's range"):
            room.queries.lift(BRAND, C, LiftQuery("c1", eps))
    assert spent(room) == before


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(-(10**6), 10**6), min_size=8, max_size=8),
    st.floats(1e-3, 1e15, allow_nan=False),
    st.integers(0, 100),
    st.integers(-(10**9), 0),
    st.integers(0, 10**9),
)
def test_lift_cells_are_total(values, scale, min_group, lo, hi):
    """Whatever the noisy values (zero, negative, huge) and scale, lift's post-processing returns cells."""
    groups = ("exposed", "holdout")
    noisy = {
        CONVERSION: Noisy(tuple((g, s) for g in groups for s in ("yes", "no")), tuple(values[:4]), scale),
        "revenue": Noisy(tuple((g,) for g in groups), tuple(values[4:6]), scale),
        "revenue_sq": Noisy(tuple((g,) for g in groups), tuple(values[6:]), scale),
    }
    cells = lift_cells(noisy, min_group, 0.0, PersonRange(lo, hi))
    assert len(cells) == 14  # 4 per group, 4 lift estimates, 2 minimum detectable effects
    assert all(c.suppressed or (math.isfinite(c.value) and math.isfinite(c.error_95)) for c in cells)


def test_no_data_is_read_before_the_budget_is_reserved(rooms, monkeypatch):
    """The engine's call order, for every query type: a data access before the reservation fails the test."""
    room = rooms(PRIVACY_POLICY, population(20))
    events: list[str] = []
    reserve = room.budget.reserve

    def recording_reserve(*args, **kwargs):
        events.append("reserve")
        return reserve(*args, **kwargs)

    for name in ("rows", "arrays", "columns"):
        original = getattr(MatchedData, name)

        def recording(self, sql, *relations, original=original):
            events.append("data")
            return original(self, sql, *relations)

        monkeypatch.setattr(MatchedData, name, recording)
    monkeypatch.setattr(room.budget, "reserve", recording_reserve)
    for query in every_query():
        events.clear()
        query(room.queries, C)
        assert events[0] == "reserve", events
        assert "data" in events
        assert events.count("reserve") == 1


def test_a_failure_after_reserving_is_charged_and_uniform(rooms, monkeypatch):
    """Anything that fails once data may have been read is charged in full, audited, and says nothing specific."""
    room = rooms(PRIVACY_POLICY, population())
    before = spent(room)

    def broken(self, sql):
        raise MemoryError("out of memory while reading person 7's row")

    monkeypatch.setattr(MatchedData, "rows", broken)
    with pytest.raises(QueryFailedError) as info:
        room.queries.overlap(BRAND, C, OverlapQuery((DimensionRef("brand", "tier"),), 0.5))
    assert "person 7" not in str(info.value)
    assert "charged" in str(info.value)
    assert spent(room) == pytest.approx(before + 0.5)
    last = list(room.audit.entries(C))[-1]
    assert (last.action, last.epsilon) == ("query.failed", 0.5)


def test_the_engine_docstring_names_the_order():
    doc = engine_module.__doc__ or ""
    assert doc.index("validate against the request") < doc.index("reserve the plan's charges") < doc.index("read data")


def test_an_auditor_cannot_recover_a_released_value_from_its_digest(rooms):
    """The audit log kept SHA-256 of each answer: an auditor tried the few possible one-cell answers and found the
    value sent to the brand alone. The digest is now keyed by the server."""
    import hashlib

    from cleanroom.audit.chain import canonical_json

    room = rooms(PRIVACY_POLICY, population())
    answer = room.queries.overlap(BRAND, C, OverlapQuery((), 1.0))
    entry = next(e for e in room.audit.entries(C) if e.sequence == answer.audit_sequence)
    cell = answer.cells[0].to_dict()
    released = {"dimensions": list(answer.dimensions), "cells": [cell], "noise_scale": dict(answer.noise_scale)}
    assert entry.response_sha256 == room.audit.digest(released)  # the server can show what it released
    guesses = set()
    for value in range(-200, 200):  # every plausible one-cell answer
        cells = [{**cell, "value": float(value)}]
        guesses.add(hashlib.sha256(canonical_json({**released, "cells": cells}).encode()).hexdigest())
    assert entry.response_sha256 not in guesses
