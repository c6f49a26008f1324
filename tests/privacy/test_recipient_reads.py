"""An audience's recipient may read every member its audience is learned from, with two members too.

Found in red-team review: with two members the lookalike's recipient was not checked against its `reads`, so a
platform whose policy says it may not read the brand's data (`reads: []`) would still receive an audience whose
training labels are exactly "matched with a gold-tier brand customer". Activation and lookalike both refuse now,
before any epsilon (these ask for a preview, which runs the whole validation).
"""

from __future__ import annotations

import pytest
from privacy_data import BRAND, MemberData

from cleanroom.analytics.queries import ActivationQuery, DimensionRef, LookalikeQuery
from cleanroom.errors import PermissionDeniedError

d = DimensionRef.parse
C = "privacy-test"
POLICY = """\
name: two-members-reads
members:
  brand:    {abilities: [contribute, query, receive_results]}
  platform: {abilities: [contribute, receive_audiences], reads: []}
identifiers: [email]
tables:
  brand.users:    {dimensions: {tier: [gold, basic]}}
  platform.users: {dimensions: {age_band: [young, old]}}
queries: [lookalike, activation]
activation: {recipient: platform, dimensions: [brand.tier], min_size: 1}
min_group_size: 1
epsilon: {per_member_total: 100, per_query_max: 10}
delta: {per_member_total: 1.0e-5, per_query_max: 1.0e-6}
"""


def data() -> dict[str, MemberData]:
    return {
        "brand": MemberData([{"email": f"e{i}", "tier": "gold" if i % 2 else "basic"} for i in range(20)]),
        "platform": MemberData([{"email": f"e{i}", "age_band": "old"} for i in range(0, 40, 2)]),
    }


def test_activation_refuses_a_recipient_that_may_not_read_the_brand(rooms):
    room = rooms(POLICY, data())
    with pytest.raises(PermissionDeniedError, match="does not let read brand"):
        room.queries.activate(BRAND, C, ActivationQuery(((d("brand.tier"), "gold"),), 1.0, 1e-7), preview=True)


def test_lookalike_refuses_a_recipient_that_may_not_read_the_brand(rooms):
    room = rooms(POLICY, data())
    with pytest.raises(PermissionDeniedError):
        room.queries.lookalike(BRAND, C, LookalikeQuery(((d("brand.tier"), "gold"),), 5, 1.0, 1e-7), preview=True)
