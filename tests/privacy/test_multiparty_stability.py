"""Three members: one row of any member moves the people and the Venn diagram by at most their stated sensitivity.

With a hub (the brand) joined one to one with each other member, a population is the hub's users matched with
each of k members. Two layers, as for two members (test_join_stability.py): (1) a search over random small datasets
heavy in shared, duplicate and conflicting keys, in plain Python, for a removal that changes more people than
k x c, or moves the Venn histogram by more than 1 + 2kc; (2) the released vectors themselves, through the engine
with a recording mechanism, on D and D minus one row of each member in turn.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings
from privacy_data import BRAND, MemberData, RecordingNoise
from test_join_stability import KEYS, ROWS, Row, reference_pairs

from cleanroom.analytics.queries import (
    AttributionQuery,
    DimensionRef,
    FunnelQuery,
    LiftQuery,
    OverlapQuery,
    SegmentInsightQuery,
    VennQuery,
)
from cleanroom_client.policy import parse_policy, stability_constant

d = DimensionRef.parse
SPOKES = ("jd", "tencent")
POLICY = """\
name: three-members
members:
  brand:   {abilities: [contribute, query, receive_results]}
  jd:      {abilities: [contribute]}
  tencent: {abilities: [contribute]}
hub: brand
identifiers: [email, phone]
tables:
  brand.users:   {dimensions: {tier: [gold, basic]}}
  brand.conversions: {time: ts, measures: {value: [-50, 100]}, max_per_person: 2}
  jd.users:      {dimensions: {stage_4a: [aware, appeal, act, advocate]}}
  jd.exposures:  {time: ts, dimensions: {campaign: [c1, c2], channel: [search, feed], kind: [impression, click]}}
  jd.test_groups: {dimensions: {campaign: [c1], test_group: [exposed, holdout]}}
  tencent.users: {dimensions: {age_band: [young, old]}}
  tencent.exposures: {time: ts, dimensions: {campaign: [c1, w1], channel: [search, feed], kind: [impression, click]}}
queries: [overlap, venn, funnel, segment_insight, attribution, lift]
min_group_size: 1
epsilon: {per_member_total: 100, per_query_max: 1}
"""
T0 = dt.datetime(2026, 11, 1)


def people(hub: list[Row], spokes: dict[str, list[Row]], population: tuple[str, ...], types) -> set[tuple]:
    """The population as identities: (hub row, then each member's row), for hub rows matched with every member."""
    partner = {s: dict(reference_pairs(hub, spokes[s], types)) for s in population}
    return {
        (id(hub[h]), *(id(spokes[s][partner[s][h]]) for s in population))
        for h in range(len(hub))
        if all(h in partner[s] for s in population)
    }


def venn(hub: list[Row], spokes: dict[str, list[Row]], types) -> Counter:
    """The hub's rows by the pattern of members they are matched with."""
    matched = {s: {h for h, _ in reference_pairs(hub, spokes[s], types)} for s in SPOKES}
    return Counter(tuple(h in matched[s] for s in SPOKES) for h in range(len(hub)))


def neighbours(hub: list[Row], spokes: dict[str, list[Row]]):
    for i in range(len(hub)):
        yield "brand", hub[:i] + hub[i + 1 :], spokes
    for s in SPOKES:
        for j in range(len(spokes[s])):
            yield s, hub, {**spokes, s: spokes[s][:j] + spokes[s][j + 1 :]}


@settings(max_examples=300, deadline=None)
@given(ROWS, ROWS, ROWS)
def test_no_removal_moves_a_population_or_the_venn_by_more_than_stated(hub, jd, tencent):
    spokes = {"jd": jd, "tencent": tencent}
    for types in (("email",), ("email", "phone")):
        c = stability_constant(len(types))
        before_venn = venn(hub, spokes, types)
        populations = [p for k in (1, 2) for p in itertools.combinations(SPOKES, k)]
        before = {p: people(hub, spokes, p, types) for p in populations}
        for _, hub2, spokes2 in neighbours(hub, spokes):
            for p in populations:
                assert len(before[p] ^ people(hub2, spokes2, p, types)) <= len(p) * c
            after_venn = venn(hub2, spokes2, types)
            moved = sum(abs(before_venn[k] - after_venn[k]) for k in set(before_venn) | set(after_venn))
            assert moved <= 1 + 2 * len(SPOKES) * c


def test_the_policy_states_those_constants():
    policy = parse_policy(POLICY)
    assert policy.hub == "brand"
    assert policy.spokes == SPOKES
    assert [policy.population_stability(k) for k in (1, 2)] == [4, 8]


@st.composite
def rooms_data(draw):
    def users(n: int, extra) -> list[dict]:
        return [{"email": draw(KEYS), "phone": draw(KEYS), **extra()} for _ in range(n)]

    data = {
        "brand": MemberData(users(draw(st.integers(1, 6)), lambda: {"tier": draw(st.sampled_from(["gold", None]))})),
        "jd": MemberData(users(draw(st.integers(1, 6)), lambda: {"stage_4a": draw(st.sampled_from(["act", "aware"]))})),
        "tencent": MemberData(
            users(draw(st.integers(1, 6)), lambda: {"age_band": draw(st.sampled_from(["young", "old"]))})
        ),
    }
    data["brand"].events["conversions"] = [
        {
            "user": u,
            "ts": T0 + dt.timedelta(hours=draw(st.integers(0, 48))),
            "value": draw(st.sampled_from([-50.0, 7.5, 100.0])),
        }
        for u in range(len(data["brand"].users))
        for _ in range(draw(st.integers(0, 2)))
    ]
    for member, campaigns in (("jd", ["c1", "c2"]), ("tencent", ["c1", "w1"])):
        data[member].events["exposures"] = [
            {
                "user": u,
                "ts": T0 + dt.timedelta(hours=draw(st.integers(-48, 48))),
                "campaign": draw(st.sampled_from(campaigns)),
                "channel": draw(st.sampled_from(["search", "feed"])),
                "kind": draw(st.sampled_from(["impression", "click"])),
            }
            for u in range(len(data[member].users))
            for _ in range(draw(st.integers(0, 2)))
        ]
    data["jd"].events["test_groups"] = [
        {"user": u, "campaign": "c1", "test_group": draw(st.sampled_from(["exposed", "holdout"]))}
        for u in range(len(data["jd"].users))
    ]
    side = draw(st.sampled_from(sorted(data)))
    return data, side, draw(st.integers(0, len(data[side].users) - 1))


def queries():
    return [
        lambda e: e.venn(BRAND, "privacy-test", VennQuery(None, 1.0)),
        lambda e: e.venn(BRAND, "privacy-test", VennQuery(d("brand.tier"), 1.0, with_members=("jd",))),
        lambda e: e.overlap(
            BRAND, "privacy-test", OverlapQuery((d("brand.tier"), d("jd.stage_4a"), d("tencent.age_band")), 1.0)
        ),
        lambda e: e.overlap(BRAND, "privacy-test", OverlapQuery((d("jd.stage_4a"),), 1.0, with_members=("jd",))),
        lambda e: e.funnel(BRAND, "privacy-test", FunnelQuery(d("tencent.age_band"), 1.0)),
        lambda e: e.segment_insight(BRAND, "privacy-test", SegmentInsightQuery(d("tencent.age_band"), 1.0)),
        lambda e: e.attribution(BRAND, "privacy-test", AttributionQuery("last_touch", 3, "campaign", 1.0)),
        lambda e: e.attribution(
            BRAND, "privacy-test", AttributionQuery("linear", 3, "channel", 1.0, d("tencent.age_band"))
        ),
        lambda e: e.lift(BRAND, "privacy-test", LiftQuery("c1", 1.0)),
    ]


def _vectors(rooms, data) -> list[list]:
    noise = RecordingNoise()
    room = rooms(POLICY, data, noise)
    out = []
    for query in queries():
        noise.calls.clear()
        query(room.queries)  # every query of the list answers, on any data (nothing may fail after reservation)
        out.append(list(noise.calls))
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rooms_data())
def test_every_released_vector_moves_by_at_most_its_stated_sensitivity(rooms, drawn):
    data, side, removed = drawn
    before = _vectors(rooms, data)
    after = _vectors(rooms, {**data, side: data[side].without_user(removed)})
    for q, (calls_d, calls_n) in enumerate(zip(before, after, strict=True)):
        assert len(calls_d) == len(calls_n), q
        for x, y in zip(calls_d, calls_n, strict=True):
            assert x.sensitivity == y.sensitivity
            distance = sum(abs(u - v) for u, v in itertools.zip_longest(x.counts, y.counts, fillvalue=0))
            assert distance <= x.sensitivity, (q, side, x.counts, y.counts, x.sensitivity)


# -- attribution's population: the hub's users matched with ANY member ------------------------------------------
# Found in red-team review: removing one hub row r (sharing its email and phone with two other hub rows, so unpaired
# itself) breaks eight pairs (T = 2: c = 4, in each of k = 2 joins); four hub users lose one platform and keep the
# other, so they stay in the population and their conversions move from one campaign to another (2 x 1000 x cap
# each, for one pair). The stated sensitivity must be 2kc for such a population, not kc.

ANY_OF_POLICY = """\
name: three-members-attribution
members:
  brand:   {abilities: [contribute, query, receive_results]}
  jd:      {abilities: [contribute]}
  tencent: {abilities: [contribute]}
hub: brand
identifiers: [email, phone]
tables:
  brand.users:   {dimensions: {tier: [gold, basic]}}
  brand.conversions: {time: ts, measures: {value: [0, 100]}, max_per_person: 1}
  jd.users:      {dimensions: {stage_4a: [aware, act]}}
  jd.exposures: {time: ts, dimensions: {campaign: [c1, c2], channel: [search, feed], kind: [impression, click]}}
  tencent.users: {dimensions: {age_band: [young, old]}}
  tencent.exposures: {time: ts, dimensions: {campaign: [c1, c2], channel: [search, feed], kind: [impression, click]}}
queries: [attribution, venn, overlap]
min_group_size: 1
epsilon: {per_member_total: 100, per_query_max: 10}
"""

CONV = "2026-11-01 12:00:00"
EARLY, LATE = "2026-10-30 10:00:00", "2026-10-31 10:00:00"


def any_of_cascade() -> dict[str, MemberData]:
    hub_rows: list[dict[str, str | None]] = [
        {"email": "e1", "phone": "p1"},  # 0: r, removed
        {"email": "e1", "phone": "q1"},  # 1: r1 (jd b1, tencent c1 by q1)
        {"email": "f2", "phone": "p1"},  # 2: r2 (jd b2, tencent c2 by f2)
        {"email": None, "phone": "ph_e"},  # 3: h_e   (jd s_e, tencent u_e by ph_e)
        {"email": "g_p", "phone": None},  # 4: h_p   (jd s_p, tencent u_p by g_p)
        {"email": None, "phone": "ph2_e"},  # 5: h2_e (tencent t_e, jd v_e by ph2_e)
        {"email": "g2_p", "phone": None},  # 6: h2_p (tencent t_p, jd v_p by g2_p)
    ]
    brand = MemberData(
        [{**u, "tier": "gold"} for u in hub_rows],
        {"conversions": [{"user": i, "ts": CONV, "value": 10.0} for i in range(1, 7)]},
    )
    jd_rows: list[dict[str, str | None]] = [
        {"email": None, "phone": "q1"},  # 0: b1
        {"email": "f2", "phone": None},  # 1: b2
        {"email": "e1", "phone": "ph_e"},  # 2: s_e  -> h_e
        {"email": "g_p", "phone": "p1"},  # 3: s_p  -> h_p
        {"email": None, "phone": "ph2_e"},  # 4: v_e -> h2_e
        {"email": "g2_p", "phone": None},  # 5: v_p -> h2_p
    ]
    tc_rows: list[dict[str, str | None]] = [
        {"email": None, "phone": "q1"},  # 0: c1
        {"email": "f2", "phone": None},  # 1: c2
        {"email": None, "phone": "ph_e"},  # 2: u_e -> h_e
        {"email": "g_p", "phone": None},  # 3: u_p -> h_p
        {"email": "e1", "phone": "ph2_e"},  # 4: t_e -> h2_e
        {"email": "g2_p", "phone": "p1"},  # 5: t_p -> h2_p
    ]

    def expo(user: int, ts: str, campaign: str) -> dict:
        return {"user": user, "ts": ts, "campaign": campaign, "channel": "search", "kind": "impression"}

    # h_e, h_p: jd's touch is the latest (c1), tencent's earlier (c2): losing jd moves their conversion c1 -> c2.
    # h2_e, h2_p: tencent's touch is the latest (c1), jd's earlier (c2): losing tencent moves it c1 -> c2 too.
    jd = MemberData(
        [{**u, "stage_4a": "act"} for u in jd_rows],
        {"exposures": [expo(2, LATE, "c1"), expo(3, LATE, "c1"), expo(4, EARLY, "c2"), expo(5, EARLY, "c2")]},
    )
    tencent = MemberData(
        [{**u, "age_band": "old"} for u in tc_rows],
        {"exposures": [expo(2, EARLY, "c2"), expo(3, EARLY, "c2"), expo(4, LATE, "c1"), expo(5, LATE, "c1")]},
    )
    return {"brand": brand, "jd": jd, "tencent": tencent}


def _attribution_vectors(rooms, data):
    noise = RecordingNoise()
    room = rooms(ANY_OF_POLICY, data, noise)
    room.queries.attribution(BRAND, "privacy-test", AttributionQuery("last_touch", 30, "campaign", 1.0))
    return noise.calls


def test_attribution_any_of_moves_by_at_most_its_stated_sensitivity_on_a_hub_row(rooms):
    data = any_of_cascade()
    before = _attribution_vectors(rooms, data)
    after = _attribution_vectors(rooms, {**data, "brand": data["brand"].without_user(0)})
    for x, y in zip(before, after, strict=True):
        distance = sum(abs(u - v) for u, v in itertools.zip_longest(x.counts, y.counts, fillvalue=0))
        assert distance <= x.sensitivity, (x.counts, y.counts, x.sensitivity)
