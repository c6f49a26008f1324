import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.devtools.synthetic import DEMO_POLICY
from cleanroom_client.policy import RESERVED_NAMES, SCHEMA, PolicyError, parse_policy


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


def _problems(text: str) -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    return "\n".join(info.value.problems)


def test_new_fields_of_the_demo_policy():
    p = parse_policy(DEMO_POLICY)
    assert p.identifiers == ("email", "phone")
    assert p.epsilon_per_query_min == 0.01
    assert (p.delta_per_member_total, p.delta_per_query_max) == (1e-6, 1e-7)
    assert p.activation is not None
    assert (p.activation.recipient, p.activation.min_size) == ("platform", 100)


def test_identifiers_are_required_and_known():
    assert "identifiers: required" in _problems(DEMO_POLICY.replace("identifiers: [email, phone]\n", ""))
    assert "unknown identifier type 'fax'" in _problems(DEMO_POLICY.replace("[email, phone]", "[email, fax]"))


def test_a_third_test_group_is_refused():
    text = DEMO_POLICY.replace("test_group: [exposed, holdout]", "test_group: [exposed, holdout, control]")
    assert "test_group: the domain must be exactly [exposed, holdout]" in _problems(text)


def test_stage_history_domain_equals_the_users_domain():
    text = DEMO_POLICY.replace(
        "platform.stage_history: {time: date, dimensions: {stage_4a: [aware, appeal, act, advocate]}}",
        "platform.stage_history: {time: date, dimensions: {stage_4a: [aware, appeal, act, advocate, lapsed]}}",
    )
    assert "must have exactly the domain of platform.users.stage_4a" in _problems(text)


def test_epsilon_minimum_and_delta_caps():
    text = DEMO_POLICY.replace(
        "epsilon: {per_member_total: 10.0, per_query_max: 1.0}",
        "epsilon: {per_member_total: 10.0, per_query_max: 1.0, per_query_min: 2.0}",
    ).replace(
        "delta: {per_member_total: 1.0e-6, per_query_max: 1.0e-7}",
        "delta: {per_member_total: 0.1, per_query_max: 1.0e-7}",
    )
    problems = _problems(text)
    assert "epsilon.per_query_min: must not exceed per_query_max" in problems
    assert "delta.per_member_total: required, a number > 0 and at most 1e-05" in problems


def test_activation_must_be_named_and_not_on_the_recipients_columns_alone():
    no_section = DEMO_POLICY.replace(
        "activation: {recipient: platform, dimensions: [brand.tier, platform.stage_4a, platform.age_band], "
        "min_size: 100,\n             events: [platform.exposures, brand.conversions]}\n",
        "",
    )
    assert "activation: required when queries allow activation" in _problems(no_section)
    own = DEMO_POLICY.replace("[brand.tier, platform.stage_4a, platform.age_band]", "[platform.stage_4a]")
    assert "name at least one dimension of a member other than the recipient" in _problems(own)
    wrong = DEMO_POLICY.replace("recipient: platform", "recipient: brand")
    assert "activation.recipient: a member of the policy with the ability receive_audiences" in _problems(wrong)


def test_activation_events_are_declared_event_tables():
    activation = parse_policy(DEMO_POLICY).activation
    assert activation is not None
    assert activation.events == ("platform.exposures", "brand.conversions")
    users = DEMO_POLICY.replace("events: [platform.exposures, brand.conversions]", "events: [brand.users]")
    assert "'brand.users' is not a declared event table with a time column" in _problems(users)
    groups = DEMO_POLICY.replace("events: [platform.exposures, brand.conversions]", "events: [platform.test_groups]")
    assert "'platform.test_groups' is not a declared event table" in _problems(groups)
    scalar = DEMO_POLICY.replace("events: [platform.exposures, brand.conversions]", "events: brand.conversions")
    assert "activation.events: a list of event tables" in _problems(scalar)


def test_refresh_tables_are_declared_and_a_per_period_budget_needs_an_interval():
    base = DEMO_POLICY + "refresh: {tables: [brand.users, platform.exposures]}\n"
    spec = parse_policy(base).refresh
    assert spec is not None
    assert spec.allows("brand", "users")
    assert not spec.allows("platform", "users")
    assert spec.min_days_between == 7
    assert "'brand.orders' is not a declared table" in _problems(DEMO_POLICY + "refresh: {tables: [brand.orders]}\n")
    assert "at least 1 with budget per_period" in _problems(
        DEMO_POLICY + "refresh: {tables: [brand.users], budget: per_period, min_days_between: 0.5}\n"
    )
    assert parse_policy(DEMO_POLICY + "refresh: {tables: [brand.users], budget: per_period, min_days_between: 1}\n")


def billion_laughs(levels: int) -> str:
    """The demo policy whose name is `levels` nested aliases, each nine of the one before: 9**levels strings."""
    lines = ['x0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"x{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    body = DEMO_POLICY.replace("name: brand-x-platform-demo", f"name: *a{levels - 1}")
    return "\n".join(lines) + "\n" + body


def test_yaml_aliases_and_anchors_are_refused_before_they_expand():
    bomb = billion_laughs(8)  # about 400 bytes; 43 million strings expanded (it took 10 s before this rule)
    started = time.perf_counter()
    problems = _problems(bomb)
    assert time.perf_counter() - started < 0.1
    assert "anchors and aliases" in problems
    # an anchor alone (no alias) is refused too: the rule is about the text, not what it costs
    assert "anchors and aliases" in _problems("base: &b {abilities: [query]}\n" + DEMO_POLICY)


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_a_reserved_name_is_refused_as_a_member(name):
    problems = _problems(DEMO_POLICY.replace("platform", name))
    assert f"members.{name}: the name {name!r} is reserved" in problems
    assert name in " ".join(SCHEMA["x-rules"])  # the readable rules (protos/POLICY.md) name the same list


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(RESERVED_NAMES)) | st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True))
def test_a_member_name_is_refused_as_reserved_exactly_when_it_is_in_the_list(name):
    text = DEMO_POLICY.replace("platform", name)
    try:
        parse_policy(text)
        problems = ""
    except PolicyError as exc:
        problems = "\n".join(exc.problems)
    assert ("is reserved" in problems) == (name in RESERVED_NAMES)


CLIPPED = DEMO_POLICY.replace("per_person_max: {value: 300}", "per_person_max: {value: 250}")


def test_per_person_max_bounds_a_persons_total_and_its_absence_keeps_the_rows_bound():
    """The one fact every money sum's sensitivity uses (`TableSpec.person_bound`, in cents `person_cents`)."""
    conversions = parse_policy(CLIPPED).table("brand", "conversions")
    assert conversions is not None
    assert conversions.per_person_max == {"value": 250.0}
    assert conversions.person_bound("value") == 250.0
    assert conversions.person_cents("value") == 25_000
    without = parse_policy(DEMO_POLICY.replace(", per_person_max: {value: 300}", "")).table("brand", "conversions")
    assert without is not None
    assert without.per_person_max == {}
    assert without.person_bound("value") == 3 * 300.0  # max_per_person x max(|lo|, |hi|): today's meaning
    wide = parse_policy(DEMO_POLICY.replace("{value: 300}}", "{value: 5000}}")).table("brand", "conversions")
    assert wide is not None
    assert wide.person_cents("value") == 90_000  # never above what the rows allow


@pytest.mark.parametrize(
    ("replacement", "problem"),
    [
        ("per_person_max: {visits: 10}", "per_person_max.visits: not a declared measure of this table"),
        ("per_person_max: {value: 0}", "per_person_max.value: a number > 0"),
        ("per_person_max: {value: -5}", "per_person_max.value: a number > 0"),
        ("per_person_max: {value: [1, 2]}", "per_person_max.value: a number > 0"),
        ("per_person_max: 300", "per_person_max: a mapping of declared measures"),
    ],
)
def test_per_person_max_problems_name_what_to_write(replacement, problem):
    with pytest.raises(PolicyError) as info:
        parse_policy(DEMO_POLICY.replace("per_person_max: {value: 300}", replacement))
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_per_person_max_needs_a_table_that_caps_its_rows():
    text = DEMO_POLICY.replace(
        "measures: {visits_30d: [0, 60]}}", "measures: {visits_30d: [0, 60]}, per_person_max: {visits_30d: 30}}"
    )
    with pytest.raises(PolicyError, match="only a table with max_per_person bounds a person's total"):
        parse_policy(text)


@settings(max_examples=200, deadline=None)
@given(
    bounds=st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6)).filter(lambda b: b[0] < b[1]),
    cap=st.integers(1, 20),
    declared=st.one_of(st.none(), st.floats(1e-3, 1e7)),
    data=st.data(),
)
def test_a_persons_clipped_cents_never_pass_the_stated_bound_and_without_the_field_the_clip_never_binds(
    bounds, cap, declared, data
):
    """What value's and lift's SQL compute for one person, in Python: Σ trunc(100 v) over at most `cap` rows, each
    clipped to [lo, hi]. Without per_person_max that sum is already within person_cents (so existing policies keep
    their meaning); with it, the clip to ±person_cents is what bounds the person, never above what the rows allow."""
    lo, hi = bounds
    exact = "{:.17e}".format  # with a dot and 17 digits: YAML reads it as this very float
    extra = "" if declared is None else f", per_person_max: {{value: {exact(declared)}}}"
    text = DEMO_POLICY.replace(
        "measures: {value: [0, 300]}, max_per_person: 3, per_person_max: {value: 300}}",
        f"measures: {{value: [{exact(lo)}, {exact(hi)}]}}, max_per_person: {cap}{extra}}}",
    )
    spec = parse_policy(text).table("brand", "conversions")
    assert spec is not None
    rows = data.draw(st.lists(st.floats(-2e6, 2e6), max_size=cap))
    cents = sum(math.trunc(min(max(v, lo), hi) * 100) for v in rows)
    bound = spec.person_cents("value")
    # at most what the rows allow; the float product cap x bound may round one cent up (stated higher: safe)
    assert bound <= math.ceil(100 * cap * max(abs(lo), abs(hi))) + 1
    if declared is None:
        assert abs(cents) <= bound
    else:
        assert bound == math.ceil(100 * min(declared, cap * max(abs(lo), abs(hi))))
