"""Three members: every refusal that the population, `reads` or the recipient causes comes before any epsilon.

Each refusal depends on the request and the policy alone, is written to the audit log as `query.refuse`, and
leaves the requester's budget untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from privacy_data import BRAND, MemberData

from cleanroom.analytics.engine import QueryEngine
from cleanroom.analytics.queries import ActivationQuery, DimensionRef, LookalikeQuery, OverlapQuery, VennQuery
from cleanroom.errors import CleanroomError, InvalidArgumentError, PermissionDeniedError
from cleanroom.principals import Principal, Role
from cleanroom.privacy.budget import Limits
from cleanroom_client.policy import PolicyError, parse_policy

d = DimensionRef.parse
C = "privacy-test"
JD = Principal("jd", Role.MEMBER)
POLICY = """\
name: three-members
members:
  brand:   {abilities: [contribute, query, receive_results]}
  jd:      {abilities: [contribute, query, receive_results, receive_audiences], reads: [brand]}
  tencent: {abilities: [contribute, receive_audiences]}
hub: brand
identifiers: [email]
tables:
  brand.users:   {dimensions: {tier: [gold, basic]}}
  jd.users:      {dimensions: {stage_4a: [aware, act]}}
  tencent.users: {dimensions: {age_band: [young, old]}}
queries: [overlap, venn, lookalike, activation]
activation: {recipient: jd, dimensions: [brand.tier], min_size: 1}
min_group_size: 1
epsilon: {per_member_total: 10, per_query_max: 1}
delta: {per_member_total: 1.0e-6, per_query_max: 1.0e-7}
"""


def data(n: int = 20) -> dict[str, MemberData]:
    people = range(n)
    return {
        "brand": MemberData([{"email": f"e{i}", "tier": "gold"} for i in people]),
        "jd": MemberData([{"email": f"e{i}", "stage_4a": "act"} for i in people if i % 2]),
        "tencent": MemberData([{"email": f"e{i}", "age_band": "old"} for i in people if i % 3]),
    }


REFUSED: list[tuple[Principal, Callable[[QueryEngine], object], type[CleanroomError], str]] = [
    (
        BRAND,
        lambda e: e.overlap(BRAND, C, OverlapQuery((), 1.0, with_members=("nobody",))),
        InvalidArgumentError,
        "nobody",
    ),
    (BRAND, lambda e: e.overlap(BRAND, C, OverlapQuery((), 1.0, with_members=("brand",))), InvalidArgumentError, "hub"),
    (
        BRAND,
        lambda e: e.overlap(BRAND, C, OverlapQuery((d("tencent.age_band"),), 1.0, with_members=("jd",))),
        InvalidArgumentError,
        "with_members",
    ),
    (BRAND, lambda e: e.venn(BRAND, C, VennQuery(d("jd.stage_4a"), 1.0)), InvalidArgumentError, "dimension of the hub"),
    (
        BRAND,
        lambda e: e.lookalike(BRAND, C, LookalikeQuery(((d("brand.tier"), "gold"),), 5, 1.0, 1e-7)),
        PermissionDeniedError,
        "which of its users tencent also has",  # jd, the recipient, may not read tencent: no list filtered by it
    ),
    (
        BRAND,
        lambda e: e.activate(BRAND, C, ActivationQuery(((d("brand.tier"), "gold"),), 1.0, 1e-7)),
        PermissionDeniedError,
        "which of its users tencent also has",
    ),
    (
        BRAND,
        lambda e: e.lookalike(
            BRAND, C, LookalikeQuery(((d("brand.tier"), "gold"),), 5, 1.0, 1e-7, with_members=("tencent",))
        ),
        InvalidArgumentError,
        "add jd to with_members",  # the policy's recipient must be among the people
    ),
    (
        JD,
        lambda e: e.lookalike(JD, C, LookalikeQuery(((d("brand.tier"), "gold"),), 5, 1.0, 1e-7, with_members=("jd",))),
        PermissionDeniedError,
        "may not request audiences itself",
    ),
    (JD, lambda e: e.overlap(JD, C, OverlapQuery((d("jd.stage_4a"),), 1.0)), PermissionDeniedError, "tencent"),
    (JD, lambda e: e.venn(JD, C, VennQuery(None, 1.0)), PermissionDeniedError, "tencent"),
]


@pytest.mark.parametrize(("who", "query", "error", "message"), REFUSED)
def test_refused_before_any_epsilon(rooms, who, query, error, message):
    room = rooms(POLICY, data())
    with pytest.raises(error, match=message):
        query(room.queries)
    limits = Limits(10.0, 1e-6)
    assert room.budget.status(C, who.name, limits).spent == 0
    assert list(room.audit.entries(C))[-1].action == "query.refuse"


def test_the_same_queries_answer_once_the_population_allows_them(rooms):
    people = data(600)
    for user in people["brand"].users[300:]:  # the segment must exclude people, not only name a condition
        user["tier"] = "basic"
    room = rooms(POLICY, people)
    answer = room.queries.overlap(JD, C, OverlapQuery((d("jd.stage_4a"),), 1.0, with_members=("jd",)))
    assert [c.keys for c in answer.cells] == [("aware",), ("act",), ("none",)]
    preview = room.queries.lookalike(
        BRAND, C, LookalikeQuery(((d("brand.tier"), "gold"),), 5, 1.0, 1e-7, with_members=("jd",)), preview=True
    )
    assert preview.epsilon_spent == 0
    answer = room.queries.activate(
        BRAND, C, ActivationQuery(((d("brand.tier"), "gold"),), 1.0, 1e-7, with_members=("jd",))
    )
    assert answer.audience  # jd's users matched with the brand's gold customers, whatever tencent has
    released = room.store.of(C).cursor().execute("SELECT count(*) FROM audience_members").fetchone()
    assert released == (150,)  # the jd users (the odd half) who are gold customers of the brand (the first 300)


def test_without_an_activation_recipient_no_lookalike_goes_anywhere(rooms):
    policy = POLICY.replace("activation: {recipient: jd, dimensions: [brand.tier], min_size: 1}\n", "").replace(
        ", activation]", "]"
    )
    room = rooms(policy, data())
    with pytest.raises(PermissionDeniedError, match=r"activation\.recipient"):
        room.queries.lookalike(BRAND, C, LookalikeQuery(((d("brand.tier"), "gold"),), 5, 1.0, 1e-7))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda p: p.replace("hub: brand\n", ""), "hub: required with three or more members"),
        (lambda p: p.replace("hub: brand", "hub: nobody"), "hub: 'nobody' is not one of the members"),
        (lambda p: p.replace("reads: [brand]", "reads: [jd]"), "members.jd.reads: 'jd' is not another member"),
        (lambda p: p + "refresh: {tables: [brand.users]}\n", "refresh: available to two-member collaborations only"),
    ],
)
def test_policy_rules_of_three_or_more_members(change, problem):
    with pytest.raises(PolicyError) as err:
        parse_policy(change(POLICY))
    assert any(problem in p for p in err.value.problems), err.value.problems
