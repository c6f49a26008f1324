"""Activation is a named disclosure gated on the truth; revenue sensitivity holds with negative values and many touches;
audience releases are charged to the recipient; the SDK refuses identifier types the policy does not name."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from privacy_data import BRAND, PLATFORM, PRIVACY_POLICY, MemberData, RecordingNoise

from cleanroom.analytics.engine import activation_threshold
from cleanroom.analytics.queries import ActivationQuery, AttributionQuery, DimensionRef
from cleanroom.errors import InvalidArgumentError, PermissionDeniedError
from cleanroom.privacy.budget import Limits

C = "privacy-test"
T0 = dt.datetime(2026, 11, 1)
LIMITS = Limits(1e6, 1e-5)


def one_gold_person(n: int = 60) -> dict[str, MemberData]:
    """n matched people; exactly one of them is gold."""
    brand = MemberData(users=[{"email": f"e{i}", "tier": "gold" if i == 0 else "basic"} for i in range(n)])
    platform = MemberData(
        users=[{"email": f"e{i}", "age_band": "young", "stage_4a": "aware", "visits": 1.0} for i in range(n)]
    )
    return {"brand": brand, "platform": platform}


def test_a_one_person_segment_is_never_released(rooms):
    """The review released a 1-person segment with min_size 50 in 10 of 40 tries at epsilon 0.01: the gate was a
    noisy size alone. Now the true size must reach min_size too (and the noisy one clear it with a margin)."""
    policy = PRIVACY_POLICY.replace("min_size: 3", "min_size: 50")
    room = rooms(policy, one_gold_person())
    gold = ((DimensionRef("brand", "tier"), "gold"),)
    for _ in range(40):
        answer = room.queries.activate(BRAND, C, ActivationQuery(gold, 0.01, 1e-9))
        assert answer.audience == ""
        assert answer.cells[0].suppressed
    # every try was charged to the brand and to the platform, which would have received the list
    for member in ("brand", "platform"):
        status = room.budget.status(C, member, LIMITS)
        assert status.spent == pytest.approx(0.4)
        assert status.delta_spent == pytest.approx(40 * 1e-9)
    assert not list(room.store.of(C).cursor().execute("SELECT * FROM audiences").fetchall())


def test_activation_releases_a_large_segment_and_charges_both_ledgers(rooms):
    # 150 gold of 400: the segment's size and the 250 its condition excludes both clear the threshold (86 here)
    data = one_gold_person(400)
    for u in data["brand"].users[:150]:
        u["tier"] = "gold"
    room = rooms(PRIVACY_POLICY, data)
    answer = room.queries.activate(BRAND, C, ActivationQuery(((DimensionRef("brand", "tier"), "gold"),), 1.0, 1e-9))
    assert answer.audience
    assert activation_threshold(1.0, 1e-9, 4) == math.ceil(4 * math.log(1e9)) + 3  # c ln(1/delta)/epsilon + c - 1
    entries = list(room.audit.entries(C))
    query, charge = entries[-2], entries[-1]
    assert (query.action, query.principal, query.epsilon, query.delta) == ("query.activation", "brand", 1.0, 1e-9)
    assert (charge.action, charge.principal, charge.epsilon, charge.delta) == ("budget.charge", "platform", 1.0, 1e-9)


def test_activation_refusals(rooms):
    room = rooms(PRIVACY_POLICY, one_gold_person())
    d = DimensionRef.parse
    with pytest.raises(InvalidArgumentError, match="other than the recipient"):
        room.queries.activate(BRAND, C, ActivationQuery(((d("platform.age_band"), "young"),), 1.0))
    with pytest.raises(InvalidArgumentError, match="not among the policy's activation dimensions"):
        room.queries.activate(BRAND, C, ActivationQuery(((d("platform.stage_4a"), "aware"),), 1.0))
    with pytest.raises(PermissionDeniedError):
        room.queries.activate(PLATFORM, C, ActivationQuery(((d("brand.tier"), "gold"),), 1.0))
    unnamed = rooms(PRIVACY_POLICY.replace("lookalike, activation]", "lookalike]"), one_gold_person())
    with pytest.raises(PermissionDeniedError, match="does not allow activation"):
        unnamed.queries.activate(BRAND, C, ActivationQuery(((d("brand.tier"), "gold"),), 1.0))
    assert room.budget.status(C, "brand", LIMITS).spent == 0.0


def test_negative_revenue_over_many_touches_stays_within_its_sensitivity(rooms):
    """floor(w x value x 100) per touch added up to a cent per touch below zero, and touches were uncapped: revenue
    L1 reached 1000-1038 cents against a stated 100. Each conversion now hands out exactly trunc(100 x value)."""
    brand = MemberData(users=[{"email": "e0", "tier": "gold"}, {"email": "e1", "tier": "basic"}])
    brand.events["conversions"] = [{"user": 0, "ts": T0, "value": -49.99}, {"user": 0, "ts": T0, "value": -0.01}]
    platform = MemberData(
        users=[{"email": f"e{i}", "age_band": "young", "stage_4a": "aware", "visits": 0.0} for i in range(2)]
    )
    platform.events["exposures"] = [
        {
            "user": 0,
            "ts": T0 - dt.timedelta(minutes=k),
            "campaign": ("c1", "c2")[k % 2],
            "channel": "feed",
            "kind": "click",
        }
        for k in range(300)
    ]
    data = {"brand": brand, "platform": platform}
    neighbour = {"brand": brand.without_user(0), "platform": platform}
    vectors = []
    for d in (data, neighbour):
        noise = RecordingNoise()
        room = rooms(PRIVACY_POLICY, d, noise)
        for model in ("linear", "time_decay", "position_based"):
            room.queries.attribution(BRAND, C, AttributionQuery(model, 7, "campaign", 1.0, half_life_days=1 / 24))
        vectors.append(noise.calls)
    for with_person, without in zip(*vectors, strict=True):
        distance = sum(abs(a - b) for a, b in zip(with_person.counts, without.counts, strict=True))
        assert distance <= with_person.sensitivity
    revenue = [call for call in vectors[0] if call.sensitivity == 4 * 2 * 10_000]  # c x cap x ceil(100 x 100)
    assert len(revenue) == 3
    for call in revenue:
        assert sum(call.counts) == -4999 - 1  # exactly the two conversions' cents, whatever the 300 touches


def retargeting_population(n: int = 300) -> tuple[dict[str, MemberData], set[int]]:
    """n matched people (and unmatched platform users) with exposures and conversions; the platform rows of the
    matched people reached by campaign c1 in the window who did not convert afterwards."""
    brand = MemberData(users=[{"email": f"e{i}", "tier": ("gold", "basic")[i % 2]} for i in range(n)])
    platform = MemberData(
        users=[{"email": f"e{i}", "age_band": "young", "stage_4a": "aware", "visits": 1.0} for i in range(n + 50)]
    )
    day = dt.timedelta(days=1)
    platform.events["exposures"] = [
        {
            "user": u,
            "ts": T0 + (u % 9 - 4) * day,
            "campaign": ("c1", "c2")[u % 3 == 0],
            "channel": "feed",
            "kind": "impression",
        }
        for u in range(n + 50)
    ]
    brand.events["conversions"] = [
        {"user": u, "ts": T0 + (u % 7 - 2) * day, "value": 10.0} for u in range(n) if u % 4 == 0
    ]
    window = (dt.date(2026, 10, 30), dt.date(2026, 11, 6))  # exposures on days -2..+4 from T0
    expected = {
        u
        for u in range(n)
        if u % 3 != 0  # campaign c1
        and window[0] <= (T0 + (u % 9 - 4) * day).date() < window[1]
        and not (u % 4 == 0 and (T0 + (u % 7 - 2) * day).date() >= dt.date(2026, 11, 1))
    }
    return {"brand": brand, "platform": platform}, expected


def test_retargeting_releases_exactly_the_reached_who_did_not_buy(rooms):
    from privacy_data import RETARGET

    # 2,000 people: 198 of the 1,110 reached bought, well above the 86 the brand's condition must exclude
    data, expected = retargeting_population(2000)
    room = rooms(PRIVACY_POLICY, data)
    answer = room.queries.activate(BRAND, C, ActivationQuery((), 1.0, 1e-9, RETARGET))
    assert answer.audience
    audience = answer.audience.rsplit("/", 1)[-1]
    rows = (
        room.store.of(C)
        .cursor()
        .execute("SELECT row_id FROM audience_members WHERE audience = ?", [audience])
        .fetchall()
    )
    assert {r[0] for r in rows} == expected
    for member in ("brand", "platform"):
        assert room.budget.status(C, member, LIMITS).spent == pytest.approx(1.0)


def test_retargeting_refusals(rooms):
    from privacy_data import RETARGET

    from cleanroom.analytics.queries import EventFilter

    room = rooms(PRIVACY_POLICY, retargeting_population(20)[0])
    with pytest.raises(InvalidArgumentError, match="other than the recipient"):
        room.queries.activate(BRAND, C, ActivationQuery((), 1.0, 1e-9, RETARGET[:1]))
    stages = EventFilter("platform.stage_history", dt.date(2026, 10, 1), dt.date(2026, 11, 1))
    with pytest.raises(InvalidArgumentError, match="activation events"):
        room.queries.activate(BRAND, C, ActivationQuery((), 1.0, 1e-9, (stages, RETARGET[1])))
    bad = EventFilter("platform.exposures", dt.date(2026, 10, 1), dt.date(2026, 11, 1), where=(("campaign", "c9"),))
    with pytest.raises(InvalidArgumentError, match="not a declared dimension value"):
        room.queries.activate(BRAND, C, ActivationQuery((), 1.0, 1e-9, (bad, RETARGET[1])))
    assert room.budget.status(C, "brand", LIMITS).spent == 0.0
