"""Drafting the whole room from each member's own files (issue 32 item 3): roles, domain order, every query."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.devtools import synthetic_platforms
from cleanroom.devtools.synthetic import SyntheticConfig, generate
from cleanroom_client.policy import STAGE_LABELS, parse_policy
from cleanroom_client.policy_draft import Role, draft_policy, merge_drafts, ordered_domain

DATA = generate(SyntheticConfig(brand_users=300, platform_users=400, shared=150, seed=3))


def brand_draft(**kw) -> str:
    ids = {"email": "email", "phone": "mobile"}
    return draft_policy(
        "brand", DATA.brand_users, "customer_id", ids, {"conversions": DATA.brand_conversions}, **kw
    ).yaml


def platform_draft(**kw) -> str:
    events = {
        "stage_history": DATA.platform_stage_history,
        "exposures": DATA.platform_exposures,
        "test_groups": DATA.platform_test_groups,  # no time column, as docs/policy.md shows it
    }
    ids = {"email": "email", "phone": "phone"}
    return draft_policy("platform", DATA.platform_users, "user_id", ids, events, **kw).yaml


def test_a_platform_drafting_its_side_gets_the_platform_role_and_natural_stage_order():
    doc = yaml.safe_load(platform_draft())
    parse_policy(platform_draft())  # a draft validates alone
    assert doc["members"] == {
        "brand": {"abilities": ["contribute", "query", "receive_results"]},
        "platform": {"abilities": ["contribute", "receive_audiences"]},
    }
    assert doc["tables"]["platform.users"]["dimensions"]["stage_4a"] == ["aware", "appeal", "act", "advocate"]
    assert doc["tables"]["platform.stage_history"]["dimensions"]["stage_4a"] == ["aware", "appeal", "act", "advocate"]
    assert "time" not in doc["tables"]["platform.test_groups"]
    assert doc["tables"]["platform.test_groups"]["dimensions"]["test_group"] == ["exposed", "holdout"]
    assert {"funnel", "funnel_flow"} <= set(doc["queries"])


def test_both_drafts_merge_into_the_room_with_every_query_the_files_support():
    merged = merge_drafts({"brand.yaml": brand_draft(), "platform.yaml": platform_draft()})
    policy = parse_policy(merged.yaml)
    doc = yaml.safe_load(merged.yaml)
    assert list(doc["members"]) == ["brand", "platform"]
    assert doc["members"]["brand"]["abilities"] == ["contribute", "query", "receive_results"]
    assert doc["members"]["platform"]["abilities"] == ["contribute", "receive_audiences"]
    assert sorted(policy.tables) == [
        "brand.conversions",
        "brand.users",
        "platform.exposures",
        "platform.stage_history",
        "platform.test_groups",
        "platform.users",
    ]
    assert doc["queries"] == [
        "overlap",
        "funnel",
        "funnel_flow",
        "segment_insight",
        "value",
        "loyalty",
        "attribution",
        "lift",
        "lookalike",
        "activation",
    ]
    assert doc["activation"]["recipient"] == "platform"
    assert policy.identifiers == ("email", "phone")
    # The order of the drafts does not matter.
    assert merge_drafts({"p": platform_draft(), "b": brand_draft()}).yaml == merged.yaml


def test_three_members_draft_their_sides_and_merge_with_the_brand_as_hub():
    data = synthetic_platforms.generate(brand_users=300)
    args: dict[str, dict[str, Any]] = synthetic_platforms.match_arguments(data)
    peers = {"brand": ["jd", "tencent"], "jd": ["brand", "tencent"], "tencent": ["brand", "jd"]}
    drafts = {
        name: draft_policy(
            name, a["users"], a["key"], a["identifiers"], a["events"], peers=dict.fromkeys(peers[name])
        ).yaml
        for name, a in args.items()
    }
    merged = merge_drafts(drafts)
    policy = parse_policy(merged.yaml)
    doc = yaml.safe_load(merged.yaml)
    assert policy.hub == "brand"
    # Each platform's own draft says it is a platform, whatever the others guessed of it.
    assert {n: m["abilities"] for n, m in doc["members"].items()} == {
        "brand": ["contribute", "query", "receive_results"],
        "jd": ["contribute", "receive_audiences"],
        "tencent": ["contribute", "receive_audiences"],
    }
    assert {"venn", "funnel", "attribution", "value", "lookalike", "activation"} <= set(doc["queries"])
    assert "lift" not in doc["queries"]  # no test groups in these files
    assert "refresh" not in doc


def test_a_declared_role_and_order_win_over_what_the_files_suggest():
    doc = yaml.safe_load(
        brand_draft(role=Role.PLATFORM, peers={"retailer": None}, orders={"tier": ["gold", "silver", "basic", "vip"]})
    )
    assert doc["members"]["brand"]["abilities"] == ["contribute", "receive_audiences"]
    assert doc["members"]["retailer"]["abilities"] == ["contribute", "query", "receive_results"]
    assert doc["tables"]["brand.users"]["dimensions"]["tier"] == ["gold", "silver", "basic", "vip"]


def test_drafts_declaring_one_members_tables_twice_are_refused():
    with pytest.raises(ValueError, match="both declare brand's tables"):
        merge_drafts({"a.yaml": brand_draft(), "b.yaml": brand_draft()})


def test_an_event_table_a_query_reads_by_time_still_needs_a_time_column():
    untimed = pd.DataFrame({"customer_id": ["a", "b"], "value": [3.0, 4.0]})
    with pytest.raises(ValueError, match="event table conversions: no column reads as dates or times"):
        draft_policy("brand", DATA.brand_users, "customer_id", {"email": "email"}, {"conversions": untimed})


@settings(max_examples=50, deadline=None)
@given(column=st.sampled_from(sorted(STAGE_LABELS)), data=st.data())
def test_stage_domains_follow_the_funnel_whatever_subset_the_data_holds(column, data):
    labels = STAGE_LABELS[column]
    held = data.draw(st.sets(st.sampled_from([*labels, "other", "zz"]), min_size=1))
    domain = ordered_domain(column, held)
    assert sorted(domain) == sorted(held)
    funnel = [v for v in domain if v in labels]
    assert funnel == [v for v in labels if v in held]  # in the funnel's order
    assert domain[: len(funnel)] == funnel  # before anything else


@settings(max_examples=50, deadline=None)
@given(
    declared=st.lists(st.text("abc", min_size=1, max_size=3), unique=True),
    held=st.sets(st.text("abcd", min_size=1, max_size=3)),
)
def test_a_declared_order_comes_first_and_loses_no_value(declared, held):
    domain = ordered_domain("tier", held, declared)
    assert domain[: len(declared)] == declared
    assert set(domain) == set(declared) | held
    assert len(domain) == len(set(domain))


def test_the_draft_proposes_each_persons_total_from_the_members_own_orders():
    """per_person_max sits at the 98th percentile of people's totals (their first max_per_person orders, each
    clipped to the drafted bounds), rounded up to two digits, below what max_per_person maximal orders allow."""
    table = yaml.safe_load(brand_draft())["tables"]["brand.conversions"]
    lo, hi = table["measures"]["value"]
    cap = table["max_per_person"]
    orders = DATA.brand_conversions.sort_values("ts", kind="stable")
    totals = orders.assign(value=orders["value"].clip(lo, hi)).groupby("customer_id").head(cap)
    quantile = totals.groupby("customer_id")["value"].sum().quantile(0.98)
    bound = table["per_person_max"]["value"]
    assert quantile <= bound <= quantile * 1.1
    assert bound < cap * max(abs(lo), abs(hi))
    policy = parse_policy(brand_draft())
    conversions = policy.table("brand", "conversions")
    assert conversions is not None
    assert conversions.person_bound("value") == bound


def test_the_draft_says_where_its_per_person_bound_comes_from():
    draft = draft_policy(
        "brand", DATA.brand_users, "customer_id", {"email": "email"}, {"conversions": DATA.brand_conversions}
    )
    assert any("per_person_max.value" in n and "98th percentile" in n for n in draft.notes), draft.notes
