"""The policy's cap on sensitivities (2^53) holds with N members: checked with the largest factor a query states.

Found in red-team review: the cap was checked with the join's constant c alone, while with N members attribution
and lift state 2 (N - 1) c; a policy whose lift sensitivity passed 2^53 was accepted. Now it is refused, and an
accepted one states nothing above the cap.
"""

from __future__ import annotations

import pytest
from privacy_data import BRAND, MemberData, RecordingNoise

from cleanroom.analytics.lift import LIFT_SPLIT
from cleanroom.analytics.queries import LiftQuery
from cleanroom_client.policy import MAX_SENSITIVITY, PolicyError, parse_policy

EXPO = "{time: ts, dimensions: {campaign: [c1], channel: [search], kind: [impression, click]}}"
TEMPLATE = """\
name: big-bounds
members:
  brand:   {{abilities: [contribute, query, receive_results]}}
  jd:      {{abilities: [contribute]}}
  tencent: {{abilities: [contribute]}}
  xhs:     {{abilities: [contribute]}}
hub: brand
identifiers: [email, phone]
tables:
  brand.users:       {{dimensions: {{tier: [gold, basic]}}}}
  brand.conversions: {{time: ts, measures: {{value: [0, {bound}]}}, max_per_person: 1}}
  jd.users:          {{dimensions: {{a: [x, y]}}}}
  jd.exposures:      {expo}
  jd.test_groups:    {{dimensions: {{campaign: [c1], test_group: [exposed, holdout]}}}}
  tencent.users:     {{dimensions: {{a: [x, y]}}}}
  xhs.users:         {{dimensions: {{a: [x, y]}}}}
queries: [lift]
min_group_size: 1
epsilon: {{per_member_total: 100, per_query_max: 10, per_query_min: 0.01}}
"""


def policy(bound: int) -> str:
    """Four members (three joins with the hub), two identifier types, conversions bounded by `bound`."""
    return TEMPLATE.format(bound=bound, expo=EXPO)


def test_the_policy_is_refused_when_a_query_would_pass_the_cap():
    with pytest.raises(PolicyError, match=r"largest stability a query states, 24"):
        parse_policy(policy(45_000_000))  # 2 x 3 joins x c 4 = 24, times (ceil(45e6^2) + 1), is above 2^53


def test_no_stated_sensitivity_of_an_accepted_policy_passes_the_cap(rooms):
    text = policy(15_000_000)
    parse_policy(text)  # accepted: 24 x (ceil(15e6^2) + 1) < 2^53
    people = [{"email": f"e{i}", "phone": None, "tier": "gold", "a": "x"} for i in range(3)]
    data = {
        "brand": MemberData(list(people), {"conversions": [{"user": 0, "ts": "2026-11-01 10:00:00", "value": 1.0}]}),
        "jd": MemberData(list(people), {"exposures": [], "test_groups": []}),
        "tencent": MemberData(list(people)),
        "xhs": MemberData(list(people)),
    }
    room = rooms(text, data)
    preview = room.queries.lift(BRAND, "privacy-test", LiftQuery("c1", 1.0), preview=True)
    share = dict(LIFT_SPLIT)  # scale x the vector's epsilon = its sensitivity
    worst = max(scale * share[name] for name, scale in preview.noise_scale.items())
    assert worst <= MAX_SENSITIVITY, f"stated sensitivity {worst:.3g} > 2^53 = {MAX_SENSITIVITY:.3g}"


#: Two members, one identifier type (c = 1), each person's revenue clipped to 94,299,023.32 (P = 9,429,902,332 cents):
#: the policy's 2^53 check admits it (revenue squared's bound, ceil(P^2 / 100^2) + 1, is 8.9e15).
AT_THE_EDGE = """\
name: squared-at-the-edge
members:
  brand:    {abilities: [contribute, query, receive_results]}
  platform: {abilities: [contribute]}
identifiers: [email]
tables:
  brand.users:       {}
  brand.conversions: {time: ts, measures: {value: [0, 1.0e+8]}, max_per_person: 1,
                      per_person_max: {value: 94299023.32}}
  platform.users:    {}
  platform.exposures: {time: ts, dimensions: {campaign: [c1], channel: [search], kind: [impression, click]}}
  platform.test_groups: {dimensions: {campaign: [c1], test_group: [exposed, holdout]}}
queries: [lift]
min_group_size: 1
epsilon: {per_member_total: 100, per_query_max: 10, per_query_min: 0.01}
"""


def test_revenue_squared_moves_by_at_most_its_stated_sensitivity_at_the_caps_edge(rooms):
    """Red team, issue 31: revenue squared was summed as round(double(t) * t / 10,000) and stated as
    ceil((P / 100) ** 2) + 1 in floating point; at P = 9,429,902,332 cents the one person's square was
    8,892,305,799,105,905 against a stated 8,892,305,799,105,903. Both are now exact integer arithmetic; the
    squares are now taken about m2, the whole currency unit nearest the range's midpoint P / 2 (about a quarter of
    the uncentred square): the person at the bound counts ((P - m2)^2 + 100^2 / 2) // 100^2, and the stated bound
    is the larger term of one without revenue, m2^2 / 100^2 exactly (m2 = 47,149,512.00 is 0.34 above P / 2)."""
    parse_policy(AT_THE_EDGE)  # within the cap
    people = [{"email": "e0"}, {"email": "e1"}]  # one at the bound; two squares would pass 2^53 (clamped)
    conversions = [{"user": u, "ts": "2026-11-01 10:00:00", "value": 1.0e8} for u in range(1)]
    groups = [{"user": u, "campaign": "c1", "test_group": "exposed"} for u in range(2)]
    full = {"brand": MemberData(list(people), {"conversions": conversions}), "platform": MemberData(people, {})}
    full["platform"].events["test_groups"] = groups
    full["platform"].events["exposures"] = []
    vectors = []
    for data in (full, {**full, "brand": full["brand"].without_user(0)}):
        noise = RecordingNoise()
        rooms(AT_THE_EDGE, data, noise).queries.lift(BRAND, "privacy-test", LiftQuery("c1", 1.0))
        vectors.append(noise.calls[-1])  # people, converters, revenue, revenue squared
    before, after = vectors
    moved = sum(abs(a - b) for a, b in zip(before.counts, after.counts, strict=True))
    assert moved <= before.sensitivity == after.sensitivity, f"moved {moved}, stated {before.sensitivity}"
    assert moved == (9_429_902_332 - 4_714_951_200) ** 2 // 10_000  # the one person's centred square, exact
    assert before.sensitivity == 4_714_951_200**2 // 10_000  # the non-converter's: t = 0 is the farthest from m2
