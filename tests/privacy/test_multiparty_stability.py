"""Three members: one row of any member moves the people and the Venn diagram by at most their stated sensitivity.

With a hub (the brand) joined one to one with each other member, a population is the hub's users matched with
each of k members. Two layers, as for two members (test_join_stability.py): (1) a search over random small datasets
heavy in shared, duplicate and conflicting keys, in plain Python, for a removal that changes more people than
k x c, or moves the Venn histogram by more than 1 + 2kc; (2) the released vectors themselves, through the engine
with a recording mechanism, on D and D minus one row of each member in turn.
"""

from __future__ import annotations

import itertools
from collections import Counter

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings
from privacy_data import BRAND, MemberData, RecordingNoise
from test_join_stability import KEYS, ROWS, Row, reference_pairs

from cleanroom.analytics.queries import (
    DimensionRef,
    FunnelQuery,
    OverlapQuery,
    SegmentInsightQuery,
    VennQuery,
)
from cleanroom.errors import CleanroomError
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
  jd.users:      {dimensions: {stage_4a: [aware, appeal, act, advocate]}}
  tencent.users: {dimensions: {age_band: [young, old]}}
queries: [overlap, venn, funnel, segment_insight]
min_group_size: 1
epsilon: {per_member_total: 100, per_query_max: 1}
"""


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
    ]


def _vectors(rooms, data) -> list[list]:
    noise = RecordingNoise()
    room = rooms(POLICY, data, noise)
    out = []
    for query in queries():
        noise.calls.clear()
        try:
            query(room.queries)
        except CleanroomError as exc:  # the same refusal on both sides is checked below
            out.append([str(exc)])
            continue
        out.append(list(noise.calls))
    return out


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rooms_data())
def test_every_released_vector_moves_by_at_most_its_stated_sensitivity(rooms, drawn):
    data, side, removed = drawn
    before = _vectors(rooms, data)
    after = _vectors(rooms, {**data, side: data[side].without_user(removed)})
    for q, (calls_d, calls_n) in enumerate(zip(before, after, strict=True)):
        assert len(calls_d) == len(calls_n), q
        for x, y in zip(calls_d, calls_n, strict=True):
            if isinstance(x, str):
                assert x == y, q
                continue
            assert x.sensitivity == y.sensitivity
            distance = sum(abs(u - v) for u, v in itertools.zip_longest(x.counts, y.counts, fillvalue=0))
            assert distance <= x.sensitivity, (q, side, x.counts, y.counts, x.sensitivity)
