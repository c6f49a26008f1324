"""The annotated example of docs/policy.md is a policy the server accepts, with every query type enabled."""

from __future__ import annotations

import re
from pathlib import Path

from cleanroom_client.policy import parse_policy

PAGE = Path(__file__).resolve().parents[3] / "docs" / "policy.md"


def test_the_example_validates_and_enables_every_query():
    text = PAGE.read_text()
    block = re.search(r"<!-- policy-example -->\n```yaml\n(.*?)```", text, re.S)
    assert block is not None, "docs/policy.md lost its marked example"
    policy = parse_policy(block.group(1))
    assert policy.queries == {
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
    }
    names = {spec.table for spec in policy.tables.values()}
    assert {"users", "conversions", "stage_history", "exposures", "test_groups"} <= names
    # every table named in the page's "which table each query reads" exists in the example
    for name in re.findall(r"`<member>\.(\w+)`", text):
        assert name in names, name


def test_the_readme_points_to_the_policy_page():
    readme = (PAGE.parents[1] / "README.md").read_text()
    assert "docs/policy.md" in readme
