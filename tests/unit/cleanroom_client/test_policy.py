import pytest

from cleanroom.synthetic import DEMO_POLICY
from cleanroom_client.policy import PolicyError, parse_policy


def test_demo_policy_parses():
    p = parse_policy(DEMO_POLICY)
    assert [m.name for m in p.members] == ["brand", "platform"]
    assert p.peer_of("brand") == "platform"
    users = p.table("platform", "users")
    assert users is not None
    assert users.dimensions["stage_4a"] == ("aware", "appeal", "act", "advocate")
    conversions = p.table("brand", "conversions")
    assert conversions is not None
    assert conversions.measures == {"value": (0.0, 300.0)}
    assert p.min_group_size == 50
    assert p.epsilon_per_query_max == 1.0


def test_every_problem_is_reported_with_its_path():
    bad = """
name: ""
members:
  brand: {abilities: [contribute, fly]}
  platform: {abilities: [query]}
tables:
  other.users: {}
  brand.users: {dimensions: {tier: []}, measures: {spend: [5, 1]}, colour: red}
queries: [overlap, telepathy]
min_group_size: 0
epsilon: {per_member_total: 1, per_query_max: 2}
"""
    with pytest.raises(PolicyError) as info:
        parse_policy(bad)
    text = "\n".join(info.value.problems)
    for expected in [
        "name: required",
        "members.brand.abilities: unknown ability 'fly'",
        "tables.other.users: the table must be named `member.table` with a declared member",
        "tables.brand.users.dimensions.tier: the domain must be a non-empty list",
        "tables.brand.users.measures.spend: bounds must be [lo, hi]",
        "tables.brand.users.colour: unknown key",
        "queries: unknown query type 'telepathy'",
        "min_group_size: required, an integer >= 1",
        "epsilon.per_query_max: must not exceed per_member_total",
    ]:
        assert expected in text


@pytest.mark.parametrize("text", ["", "- a list", "name: [unclosed"])
def test_not_a_mapping(text):
    with pytest.raises(PolicyError):
        parse_policy(text)


def test_reserved_and_duplicate_columns():
    text = DEMO_POLICY.replace(
        "{dimensions: {tier: [gold, silver, basic]}}", "{time: tier, dimensions: {tier: [a], row_id: [b]}}"
    )
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert any("declared more than once" in p for p in info.value.problems)
    assert any("reserved" in p for p in info.value.problems)
