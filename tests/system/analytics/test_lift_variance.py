"""Lift's incremental revenue bar on small money: the holdout's variance must survive the squares' rounding.

Red team (issue 31's last row): lift sums each person's squared distance from a centre in whole currency units
squared. About the range's exact midpoint (2.50 for values within [0, 5]), a non-converter's term (6.25) rounded
to 6 and a 0.99 buyer's (2.2801) to 2, so the mean square fell below (mean - midpoint)^2 and the holdout's variance
came out 0: the bar had no sampling term, with a true sampling error of +-4. Run at an enormous epsilon (OpenDP's
integer noise is then zero, as in test_attribution.py) so the bar is the sampling term alone.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import pandas as pd
import pytest

POLICY = """\
name: lift-small-money
members:
  brand:    {abilities: [contribute, query, receive_results]}
  platform: {abilities: [contribute]}
identifiers: [email]
tables:
  brand.users:        {}
  brand.conversions:  {time: ts, measures: {value: [0, 5]}, max_per_person: 1}
  platform.users:     {}
  platform.exposures: {time: ts, dimensions: {campaign: [c1], channel: [feed], kind: [impression]}}
  platform.test_groups: {dimensions: {campaign: [c1], test_group: [exposed, holdout]}}
queries: [lift]
min_group_size: 1
epsilon: {per_member_total: 1.0e+15, per_query_max: 1.0e+10}
"""
EPS = 1e10
#: Twenty people per group; in-app purchases of 0.99: three holdout buyers, eight exposed.
EXPOSED = [f"e{i}" for i in range(20)]
HOLDOUT = [f"h{i}" for i in range(20)]
BUYERS = {**{p: 0.99 for p in EXPOSED[:8]}, **{p: 0.99 for p in HOLDOUT[:3]}}


@pytest.fixture(scope="module")
def collab(room) -> str:
    people = EXPOSED + HOLDOUT
    users = pd.DataFrame({"key": people, "email": [f"{p}@example.com" for p in people]})
    conversions = pd.DataFrame({"key": list(BUYERS), "ts": pd.Timestamp("2026-11-02"), "value": list(BUYERS.values())})
    groups = pd.DataFrame(
        {"key": people, "campaign": "c1", "test_group": ["exposed"] * len(EXPOSED) + ["holdout"] * len(HOLDOUT)}
    )
    exposures = pd.DataFrame(
        {"key": EXPOSED, "ts": pd.Timestamp("2026-11-01"), "campaign": "c1", "channel": "feed", "kind": "impression"}
    )
    return room.match_frames(
        "lift-small-money",
        POLICY,
        brand={"users": users, "key": "key", "identifiers": {"email": "email"}, "events": {"conversions": conversions}},
        platform={
            "users": users,
            "key": "key",
            "identifiers": {"email": "email"},
            "events": {"exposures": exposures, "test_groups": groups},
        },
    )


def test_the_holdouts_variance_survives_the_squares_rounding_on_small_money(room, collab):
    """Values within [0, 5]: incremental revenue's bar is 1.96 x exposed x sigma_h x sqrt(1/exposed + 1/holdout),
    sigma_h^2 = 0.3 x 0.7 x 0.99^2 (within the one-cent rounding of each person's square), not 0."""
    cells = room.client("brand").lift(collab, "c1", epsilon=EPS).set_index(["test_group", "measure"])
    holdout = [BUYERS.get(p, 0.0) for p in HOLDOUT]
    n_t, n_h = len(EXPOSED), len(HOLDOUT)
    mean_h = sum(holdout) / n_h
    var_h = sum((x - mean_h) ** 2 for x in holdout) / n_h
    assert cells.loc[("lift", "incremental_revenue"), "value"] == pytest.approx(
        sum(BUYERS.get(p, 0.0) for p in EXPOSED) - n_t * mean_h
    )
    bar = NormalDist().inv_cdf(0.975) * n_t * math.sqrt(var_h * (1 / n_t + 1 / n_h))
    assert cells.loc[("lift", "incremental_revenue"), "error_95"] == pytest.approx(bar, rel=0.1)
    assert cells.loc[("lift", "minimum_detectable_revenue"), "value"] == pytest.approx(bar, rel=0.1)


def test_the_cli_preview_says_lifts_revenue_vector_is_centred(room, collab, tmp_path):
    """Lift's `revenue` vector is a sum about a centre the policy fixes (here 1.25 per person: the typical vector
    is negative), so the preview's line of typical vectors may not show it bare as revenue."""
    from typer.testing import CliRunner

    from cleanroom_client.cli import app

    env = room.cli_env("brand", tmp_path / "state")
    r = CliRunner().invoke(app, ["--preview", "lift", collab, "--campaign", "c1", "--epsilon", "1"], env=env)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())  # the terminal wraps the line
    line = text[text.index("typical value per cell assumed") :]
    assert "revenue (the group's revenue less the policy's centre per person) -1,000" in line, line
    assert "revenue_sq (squared distances from the policy's square centre, summed)" in line, line
