"""GOAL value and loyalty over real gRPC and from the CLI, on hand-built people whose answers are known exactly.

The policy's epsilon is enormous, so the noise scale is about 1e-9 and OpenDP's integer noise is zero: the answers
must equal the hand-computed ones. (The coverage of the error bars at real epsilons: tests/reference.)
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from typer.testing import CliRunner

from cleanroom.analytics.engine import MAX_TYPICAL_VECTORS, MAX_VECTOR_NAME
from cleanroom.analytics.goal import BASKETS, VALUE_SPLIT
from cleanroom.privacy import noise as noise_math
from cleanroom_client import CleanRoomError
from cleanroom_client.cli import app

POLICY = """\
name: goal-test
members:
  brand:    {abilities: [contribute, query, receive_results]}
  platform: {abilities: [contribute]}
identifiers: [email]
tables:
  brand.users:        {dimensions: {tier: [gold, basic]}}
  brand.conversions:  {time: ts, measures: {value: [0, 100]}, max_per_person: 2}
  platform.users:     {dimensions: {stage_4a: [aware, appeal, act, advocate]}}
queries: [value, loyalty]
min_group_size: 1
epsilon: {per_member_total: 1.0e+15, per_query_max: 1.0e+10}
"""
EPS = 1e10
T = dt.datetime(2026, 10, 1, 12)
DAY = dt.timedelta(days=1)
#: person -> (tier, stage)
PEOPLE = {"a": ("gold", "act"), "b": ("gold", "act"), "c": ("basic", "aware"), "d": ("basic", None), "e": (None, "act")}
#: (person, time, value): a buys three times (the third is over the cap), one clamped at 100; b once in each period;
#: c twice in period 1 with a negative value (clamped to 0); d never; e once, in period 2 only.
CONVERSIONS = [
    ("a", T, 10.0),
    ("a", T + DAY, 250.0),
    ("a", T + 2 * DAY, 30.0),
    ("b", T, 20.5),
    ("b", T + 20 * DAY, 5.0),
    ("c", T + DAY, -3.0),
    ("c", T + 3 * DAY, 7.25),
    ("e", T + 17 * DAY, 40.0),
]


@pytest.fixture(scope="module")
def collab(room) -> str:
    keys = sorted(PEOPLE)
    return room.match_frames(
        "goal-cases",
        POLICY,
        brand={
            "users": pd.DataFrame(
                {"key": keys, "email": [f"{k}@example.com" for k in keys], "tier": [PEOPLE[k][0] for k in keys]}
            ),
            "key": "key",
            "identifiers": {"email": "email"},
            "attributes": ["tier"],
            "events": {"conversions": pd.DataFrame(CONVERSIONS, columns=["key", "ts", "value"])},
        },
        platform={
            "users": pd.DataFrame(
                {"key": keys, "email": [f"{k}@example.com" for k in keys], "stage_4a": [PEOPLE[k][1] for k in keys]}
            ),
            "key": "key",
            "identifiers": {"email": "email"},
            "attributes": ["stage_4a"],
        },
    )


def test_value_by_tier_is_exact(room, collab):
    f = room.client("brand").value(collab, "brand.conversions.value", by=["brand.tier"], epsilon=EPS)
    got = f.set_index(["brand.tier", "measure"])["value"]
    # gold: a (10 + 100, the third over the cap), b (20.5 + 5); basic: c (0 + 7.25), d (none); none: e (40)
    assert got[("gold", "people")] == 2
    assert got[("gold", "buyers")] == 2
    assert got[("gold", "orders")] == 4
    assert got[("gold", "sum")] == pytest.approx(135.5)
    assert got[("gold", "per_person")] == pytest.approx(67.75)
    assert got[("gold", "per_order")] == pytest.approx(135.5 / 4)
    assert got[("basic", "people")] == 2
    assert got[("basic", "buyers")] == 1
    assert got[("basic", "per_buyer")] == pytest.approx(7.25)
    assert got[("basic", "per_person")] == pytest.approx(3.625)
    assert got[("none", "sum")] == pytest.approx(40.0)
    assert f.attrs["epsilon_spent"] == EPS
    # people, buyers and orders are sums of one histogram of people by their number of orders (one draw per pair)
    assert set(f.attrs["noise_scale"]) == {BASKETS, "sum"}


def test_loyalty_by_stage_is_exact(room, collab):
    f = room.client("brand").loyalty(
        collab, ("2026-10-01", "2026-10-15"), ("2026-10-15", "2026-11-01"), by=["platform.stage_4a"], epsilon=EPS
    )
    got = f.set_index(["platform.stage_4a", "measure"])["value"]
    # act: a (3 in period 1, none in 2), b (1 in 1, 1 in 2), e (only in 2: not a converter); aware: c (2 in 1)
    assert got[("act", "converters")] == 2
    assert got[("act", "repurchase_rate")] == pytest.approx(0.5)
    assert got[("act", "retention_rate")] == pytest.approx(0.5)
    assert got[("aware", "repurchase_rate")] == pytest.approx(1.0)
    assert got[("aware", "retention_rate")] == pytest.approx(0.0)
    advocate = f[(f["platform.stage_4a"] == "advocate") & (f["measure"] == "repurchase_rate")]
    assert advocate["suppressed"].all()
    assert (advocate["reason"] == "below the minimum group of 1 (its noisy count is smaller)").all()
    assert (f.loc[~f["suppressed"], "reason"] == "").all()


def test_refusals_say_what_to_fix(room, collab):
    brand = room.client("brand")
    with pytest.raises(CleanRoomError) as info:
        brand.value(collab, "brand.conversions.price", epsilon=1.0)
    assert info.value.code == "INVALID_ARGUMENT"
    assert "brand.conversions.value" in str(info.value)
    with pytest.raises(CleanRoomError) as info:
        brand.loyalty(collab, ("2026-10-15", "2026-11-01"), ("2026-10-01", "2026-10-15"), epsilon=1.0)
    assert info.value.code == "INVALID_ARGUMENT"
    assert "period 2" in str(info.value)


def test_the_cli_commands(room, collab, tmp_path):
    env = room.cli_env("brand", tmp_path / "state")
    runner = CliRunner()
    eps = str(EPS)
    value = runner.invoke(
        app, ["-o", "csv", "value", collab, "--measure", "brand.conversions.value", "--epsilon", eps], env=env
    )
    assert value.exit_code == 0, value.output
    assert "per_buyer" in value.output
    periods = ["--period1", "2026-10-01:2026-10-15", "--period2", "2026-10-15:2026-11-01"]
    loyalty = runner.invoke(app, ["-o", "csv", "loyalty", collab, *periods, "--epsilon", eps], env=env)
    assert loyalty.exit_code == 0, loyalty.output
    assert "retention_rate" in loyalty.output
    bad = runner.invoke(
        app, ["loyalty", collab, "--period1", "2026-10-01", "--period2", "2026-10-15:2026-11-01"], env=env
    )
    assert bad.exit_code != 0
    assert "START:END" in bad.output


def test_preview_over_grpc_spends_nothing_and_states_every_derived_bar(room, collab, tmp_path):
    brand = room.client("brand")
    before = brand.budget(collab).set_index("member").loc["brand", "spent"]
    bars = brand.value(collab, "brand.conversions.value", by=["brand.tier"], epsilon=1.0, preview=True)
    assert set(bars["measure"]) == {"people", "buyers", "orders", "sum", "per_person", "per_buyer", "per_order"}
    gold = bars[bars["brand.tier"] == "gold"].set_index("measure")
    # one identifier type (c = 1), cap 2, bound 100: the sum moves by at most 2 x 10000 cents, at its share of epsilon
    share = dict(VALUE_SPLIT)
    e_sum = noise_math.error_95(2 * 10_000 / share["sum"]) / 100
    # the histogram's cells (orders 1, 2 and 0) each have e95: people sum three, buyers two
    e_cell = noise_math.error_95(1 / share[BASKETS])
    e_count = e_cell * 3**0.5
    e_buyers = e_cell * 2**0.5
    assert gold.loc["sum", "error_95"] == pytest.approx(e_sum)
    assert gold.loc["people", "error_95"] == pytest.approx(e_count)
    assert gold.loc["buyers", "error_95"] == pytest.approx(e_buyers)
    assert gold.loc["orders", "error_95"] == pytest.approx(e_cell * 5**0.5)  # 1 x n1 + 2 x n2
    # typical: 1,000 buyers, 500 with each number of orders (1.5 each) at 50 (the middle of [0, 100]): 75 per buyer
    assert bars.attrs["typical"] == {BASKETS: 500, "sum": 75_000}
    assert gold.loc["orders", "typical"] == pytest.approx(1500)
    assert gold.loc["per_buyer", "typical"] == pytest.approx(75.0)
    expected = ((e_sum / 1000) ** 2 + (75 * e_buyers / 1000) ** 2) ** 0.5
    assert gold.loc["per_buyer", "error_95"] == pytest.approx(expected)
    assert gold.loc["per_buyer", "relative_95"] == pytest.approx(expected / 75)
    assert bars.attrs["epsilon_spent"] == 0

    # the inverse: the least epsilon for +-5% on per buyer value, and the preview there meets it
    needed = brand.epsilon_for(
        "value", collab, 0.05, cell="per_buyer", measure="brand.conversions.value", by=["brand.tier"]
    )
    at = brand.value(collab, "brand.conversions.value", by=["brand.tier"], epsilon=needed, preview=True)
    assert at.set_index(["brand.tier", "measure"]).loc[("gold", "per_buyer"), "relative_95"] <= 0.05
    less = brand.value(collab, "brand.conversions.value", by=["brand.tier"], epsilon=needed * 0.99, preview=True)
    assert less.set_index(["brand.tier", "measure"]).loc[("gold", "per_buyer"), "relative_95"] > 0.05

    # a plan over two queries: the targeted one gets what it needs, the other the rest
    plan = brand.plan(
        collab,
        [
            {"query": "value", "measure": "brand.conversions.value", "within": 0.05},
            {"query": "loyalty", "period1": ("2026-10-01", "2026-10-15"), "period2": ("2026-10-15", "2026-11-01")},
        ],
        total_epsilon=10.0,
    )
    assert list(plan["query"]) == ["value", "loyalty"]
    assert plan.loc[0, "meets"]
    assert plan.loc[0, "relative_95"] <= 0.05
    assert plan["epsilon"].sum() == pytest.approx(10.0)
    assert plan.loc[1, "cell"].startswith("repurchase_rate")
    assert brand.budget(collab).set_index("member").loc["brand", "spent"] == before

    env = room.cli_env("brand", tmp_path / "state")
    periods = ["--period1", "2026-10-01:2026-10-15", "--period2", "2026-10-15:2026-11-01"]
    r = CliRunner().invoke(app, ["--preview", "loyalty", collab, *periods, "--epsilon", "0.5"], env=env)
    assert r.exit_code == 0, r.output
    for words in ("repurchase_rate", "± bar (95%)", "% of typical", "typical value per cell assumed: people"):
        assert words in r.output, words
    assert "False" not in r.output
    measure = ["--measure", "brand.conversions.value"]
    r = CliRunner().invoke(app, ["value", collab, *measure, "--epsilon", "0.5", "--within", "15%"], env=env)
    assert r.exit_code == 0, r.output
    assert "epsilon for ±15%" in r.output
    assert brand.budget(collab).set_index("member").loc["brand", "spent"] == before


def test_value_counts_keep_their_quarter_split_bars_while_the_money_keeps_its_share(room, collab):
    """Issue 31: the money's epsilon may not cost the counts. At epsilon 1, one identifier type (c = 1), cap 2 and a
    person's total bounded by 2 x 100: people, buyers and orders no wider than when each count had a quarter of
    epsilon (before the money was split off), the sum no wider than at the 0.4 of epsilon it had then."""
    bars = room.client("brand").value(collab, "brand.conversions.value", by=["brand.tier"], epsilon=1.0, preview=True)
    gold = bars[bars["brand.tier"] == "gold"].set_index("measure")["error_95"]
    assert gold["people"] <= noise_math.error_95(1 / 0.25)
    assert gold["buyers"] <= noise_math.error_95(1 / 0.25)
    assert gold["orders"] <= noise_math.error_95(2 / 0.25)
    assert gold["sum"] <= noise_math.error_95(2 * 10_000 / 0.4) / 100
    # and so every mean is narrower than under the split that starved the counts
    e_sum, e_count = noise_math.error_95(2 * 10_000 / 0.4) / 100, noise_math.error_95(1 / 0.1)
    assert gold["per_person"] < ((e_sum / 1000) ** 2 + (75 * e_count / 1000) ** 2) ** 0.5


def test_a_previews_typical_map_is_bounded_and_its_refusal_is_brief(room, collab):
    """A hostile member's typical map: the edge admits 1,000 entries of 1,024-character names (about 1 MB), every
    name then echoed into the refusal's message and the shared audit log. A preview needs one entry per vector the
    query releases (value: two), so more than `MAX_TYPICAL_VECTORS` entries, or a name longer than
    `MAX_VECTOR_NAME`, is refused from the request alone, naming the rule, never echoing the names; nothing spent."""
    brand = room.client("brand")
    before = brand.budget(collab).set_index("member").loc["brand", "spent"]
    args = {"measure": "brand.conversions.value", "by": ["brand.tier"], "epsilon": 1.0}
    flood = {f"{i:04d}" + "x" * 1020: 1.0 for i in range(1000)}
    long_name = {"sum": 1.0, "s" * (MAX_VECTOR_NAME + 1): 1.0}
    too_many = {"sum": 1.0, **{f"v{i}": 1.0 for i in range(MAX_TYPICAL_VECTORS)}}
    most, longest = f"at most {MAX_TYPICAL_VECTORS}", f"at most {MAX_VECTOR_NAME} characters"
    for typical, rule in ((flood, most), (long_name, longest), (too_many, most)):
        with pytest.raises(CleanRoomError) as info:
            brand.preview("value", collab, typical=typical, **args)
        assert info.value.code == "INVALID_ARGUMENT"
        assert rule in info.value.message
        assert len(info.value.message) < 500
        assert "xxxx" not in info.value.message
        assert "ssss" not in info.value.message
    refusals = room.client("auditor").audit_log(collab, action="query.refuse")
    assert len(refusals) >= 3
    for refusal, rule in zip(refusals.to_dict("records")[-3:], (most, longest, most), strict=True):
        assert rule in str(refusal), refusal
        assert len(str(refusal)) < 2_000, refusal
    # every vector a value query releases, and no more, previews
    bars = brand.preview("value", collab, typical={BASKETS: 400.0, "sum": 60_000.0}, **args)
    assert bars.attrs["typical"] == {BASKETS: 400.0, "sum": 60_000.0}
    assert brand.budget(collab).set_index("member").loc["brand", "spent"] == before


def test_a_previews_assumptions_are_read_after_authorization_and_refused_as_the_query(room, collab):
    """`typical_group` and `within` are checked where every typical value is (`engine.check_typical`): after the
    caller may ask the query at all, and refused like the query's own arguments, with a `query.refuse` entry. Before,
    the servicer checked them first: a member without `query` learned of its bad argument, not of its refusal."""
    args = {"measure": "brand.conversions.value", "by": ["brand.tier"], "epsilon": 1.0}
    with pytest.raises(CleanRoomError) as info:
        room.client("platform").preview("value", collab, typical_group=-5.0, **args)
    assert info.value.code == "PERMISSION_DENIED"
    brand = room.client("brand")
    for bad in ({"typical_group": -5.0}, {"within": -0.1}):
        with pytest.raises(CleanRoomError) as info:
            brand.preview("value", collab, **bad, **args)
        assert info.value.code == "INVALID_ARGUMENT"
        assert next(iter(bad)) in info.value.message
        refusal = room.client("auditor").audit_log(collab, action="query.refuse").to_dict("records")[-1]
        assert next(iter(bad)) in str(refusal)
