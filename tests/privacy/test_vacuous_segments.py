"""Issue 28, item 1: an activation segment must be decided by another member's data in a way that can exclude people.

The attack: `segment={}` with `events=[brand.conversions in 2199, absent]` handed the platform every matched user
(the raw intersection) for epsilon 1, since no conversion is dated in 2199; with three members, one platform could
hand another the exact brand ∩ P1 ∩ P2 set the same way. Such filters are refused from the request, the policy and
the date alone (`cleanroom.analytics.segments`), before any budget is reserved, and the refusal is audited.
"""

from __future__ import annotations

import datetime as dt

import pytest
from privacy_data import BRAND, PRIVACY_POLICY, MemberData

from cleanroom.analytics.queries import ActivationQuery, DimensionRef, EventFilter
from cleanroom.errors import InvalidArgumentError
from cleanroom.principals import Principal, Role
from cleanroom.privacy.budget import Limits

C = "privacy-test"
LIMITS = Limits(1e6, 1e-5)
FAR_FUTURE = EventFilter("brand.conversions", dt.date(2199, 1, 1), dt.date(2199, 12, 31), present=False)


def brand_and_platform(matched: int = 200, platform_only: int = 30) -> dict[str, MemberData]:
    """`matched` people both members have (each brand user bought on 2026-11-02), and some only the platform has."""
    brand = MemberData(
        users=[{"email": f"e{i}", "tier": "gold" if i % 2 else "basic"} for i in range(matched)],
        events={"conversions": [{"user": i, "ts": dt.datetime(2026, 11, 2), "value": 10.0} for i in range(matched)]},
    )
    platform = MemberData(
        users=[
            {"email": f"e{i}", "age_band": "young", "stage_4a": "aware", "visits": 1.0}
            for i in range(matched + platform_only)
        ]
    )
    return {"brand": brand, "platform": platform}


def _refused_before_any_budget(room, who: str, query: ActivationQuery, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        room.queries.activate(Principal(who, Role.MEMBER), C, query)
    last = list(room.audit.entries(C))[-1]
    assert last.action == "query.refuse"
    assert message.split("(")[0].strip() in last.parameters["reason"]
    for member in {m.name for m in room.collaborations.get(BRAND, C).members}:
        assert room.budget.status(C, member, LIMITS).spent == 0.0
    assert not room.store.of(C).cursor().execute("SELECT * FROM audiences").fetchall()


def test_an_absent_filter_over_a_window_no_row_can_be_in_is_refused(rooms):
    room = rooms(PRIVACY_POLICY, brand_and_platform())
    _refused_before_any_budget(
        room, "brand", ActivationQuery((), 1.0, 1e-9, (FAR_FUTURE,)), "no row of brand.conversions"
    )
    # ... whatever else the segment holds: the recipient's own conditions decide nothing about the brand's data
    exposed = EventFilter("platform.exposures", dt.date(2026, 10, 1), dt.date(2026, 12, 1))
    young = ((DimensionRef("platform", "age_band"), "young"),)
    _refused_before_any_budget(
        room, "brand", ActivationQuery(young, 1.0, 1e-9, (exposed, FAR_FUTURE)), "no row of brand.conversions"
    )


@pytest.mark.parametrize(
    "window",
    [
        (dt.date(1850, 1, 1), dt.date(1899, 12, 31)),  # before any date a time column can hold
        (dt.date(2200, 1, 1), dt.date(2300, 1, 1)),  # after
    ],
    ids=("before-1900", "after-2200"),
)
@pytest.mark.parametrize("present", [True, False], ids=("present", "absent"))
def test_windows_outside_the_tables_time_range_are_refused(rooms, window, present):
    room = rooms(PRIVACY_POLICY, brand_and_platform(20, 0))
    start, end = window
    ev = EventFilter("brand.conversions", start, end, present=present)
    _refused_before_any_budget(room, "brand", ActivationQuery((), 1.0, 1e-9, (ev,)), "no row of brand.conversions")


def test_a_brand_filter_that_can_exclude_people_is_still_released(rooms):
    """The rule refuses vacuous filters only: the same shape over a window the brand's rows can be in works.

    Half of the matched people bought in the window (the others a month before), so either way the brand's
    condition excludes two hundred of them: far above the noisy gate on the excluded count (about 86 at epsilon 1,
    delta 1e-9, scale 4), so the list is withheld by noise with probability about 1e-13, not the 1.5% a hundred
    gave (a fresh-clone run met it).
    """
    data = brand_and_platform(matched=400)
    for row in data["brand"].events["conversions"][200:]:
        row["ts"] = dt.datetime(2026, 10, 2)
    room = rooms(PRIVACY_POLICY, data)
    bought = EventFilter("brand.conversions", dt.date(2026, 11, 1), dt.date(2026, 11, 3))
    answer = room.queries.activate(BRAND, C, ActivationQuery((), 1.0, 1e-9, (bought,)))
    assert answer.audience
    did_not = EventFilter("brand.conversions", dt.date(2026, 11, 1), dt.date(2026, 11, 3), present=False)
    assert room.queries.activate(BRAND, C, ActivationQuery((), 1.0, 1e-9, (did_not,))).audience


THREE = """\
name: three-members
members:
  brand: {abilities: [contribute, query, receive_results]}
  p1:    {abilities: [contribute, query, receive_results]}
  p2:    {abilities: [contribute, receive_audiences]}
hub: brand
identifiers: [email]
tables:
  brand.users:       {dimensions: {tier: [gold, basic]}}
  brand.conversions: {time: ts, measures: {value: [0, 100]}, max_per_person: 2}
  p1.users:          {dimensions: {age_band: [young, old]}}
  p2.users:          {dimensions: {age_band: [young, old]}}
queries: [overlap, activation]
activation: {recipient: p2, dimensions: [brand.tier], min_size: 1, events: [brand.conversions]}
min_group_size: 1
epsilon: {per_member_total: 10, per_query_max: 1}
delta: {per_member_total: 1.0e-6, per_query_max: 1.0e-7}
"""


def test_with_three_members_p1_cannot_hand_p2_the_exact_three_way_intersection(rooms):
    people = range(120)
    data = {
        "brand": MemberData(
            [{"email": f"e{i}", "tier": "gold"} for i in people],
            {"conversions": [{"user": i, "ts": dt.datetime(2026, 11, 2), "value": 1.0} for i in people]},
        ),
        "p1": MemberData([{"email": f"e{i}", "age_band": "old"} for i in people if i % 2]),
        "p2": MemberData([{"email": f"e{i}", "age_band": "old"} for i in people if i % 3]),
    }
    room = rooms(THREE, data)
    _refused_before_any_budget(room, "p1", ActivationQuery((), 1.0, 1e-7, (FAR_FUTURE,)), "no row of brand.conversions")


def test_an_absent_filter_over_a_window_the_table_can_hold_but_nobody_is_in_hands_over_nothing(rooms):
    """The attack after the fix: a window the rule admits (1900 is in the stored domain) where no row is, in fact.

    `absent brand.conversions in [1900-01-01, 1900-01-02)` is decided by no row of this brand's data, as surely as
    the far future was: it must not hand the platform every matched user. The list is withheld (charged, as every
    outcome after the reservation), whatever the noise: the others' conditions excluded nobody.
    """
    room = rooms(PRIVACY_POLICY, brand_and_platform())
    for start in (dt.date(1900, 1, 1), dt.date(2026, 11, 3)):  # the first day a row can have; the quiet after it
        quiet = EventFilter("brand.conversions", start, start + dt.timedelta(days=1), present=False)
        answer = room.queries.activate(BRAND, C, ActivationQuery((), 1.0, 1e-9, (quiet,)))
        assert answer.audience == ""
    assert not room.store.of(C).cursor().execute("SELECT * FROM audiences").fetchall()
    assert room.budget.status(C, "platform", LIMITS).spent == 2.0  # charged: an outcome after the reservation


def test_a_filter_excluding_only_a_few_matched_people_hands_over_nothing(rooms):
    """Near-exact: the brand's condition excludes 1 of 200 matched people, so the list would be the intersection
    but one. The others' conditions must (noisily) exclude at least c ln(1/delta)/epsilon + c - 1 people."""
    data = brand_and_platform()
    data["brand"].events["conversions"].append({"user": 0, "ts": dt.datetime(2026, 10, 5), "value": 1.0})
    room = rooms(PRIVACY_POLICY, data)
    october = EventFilter("brand.conversions", dt.date(2026, 10, 1), dt.date(2026, 10, 31), present=False)
    assert room.queries.activate(BRAND, C, ActivationQuery((), 1.0, 1e-9, (october,))).audience == ""


def test_with_three_members_a_quiet_window_on_the_hubs_table_hands_p2_nothing(rooms):
    """P1 asks for P2's list with `absent brand.conversions` on 1900-01-01: the rule admits the window, nobody is in
    it, so the three-way intersection would go to P2 exactly. Withheld, charged to P1 and P2."""
    people = range(120)
    data = {
        "brand": MemberData(
            [{"email": f"e{i}", "tier": "gold"} for i in people],
            {"conversions": [{"user": i, "ts": dt.datetime(2026, 11, 2), "value": 1.0} for i in people]},
        ),
        "p1": MemberData([{"email": f"e{i}", "age_band": "old"} for i in people if i % 2]),
        "p2": MemberData([{"email": f"e{i}", "age_band": "old"} for i in people if i % 3]),
    }
    room = rooms(THREE, data)
    quiet = EventFilter("brand.conversions", dt.date(1900, 1, 1), dt.date(1900, 1, 2), present=False)
    assert (
        room.queries.activate(Principal("p1", Role.MEMBER), C, ActivationQuery((), 1.0, 1e-7, (quiet,))).audience == ""
    )
    assert not room.store.of(C).cursor().execute("SELECT * FROM audiences").fetchall()
    assert [room.budget.status(C, m, LIMITS).spent for m in ("p1", "p2")] == [1.0, 1.0]
