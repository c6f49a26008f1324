"""`cleanroom demo-data` practice files for the README walkthrough: a refresh's new customers, a three-member room."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from cleanroom.cli import app
from cleanroom_client.policy import parse_policy


def test_refresh_users_are_held_back_from_the_match_with_their_orders(tmp_path):
    r = CliRunner().invoke(
        app, ["demo-data", str(tmp_path), "--brand-users", "400", "--platform-users", "500", "--shared", "200",
              "--refresh-users", "40"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    crm, new = pd.read_csv(tmp_path / "crm.csv"), pd.read_csv(tmp_path / "crm_new.csv")
    assert (len(crm), len(new)) == (360, 40)
    assert not set(crm["customer_id"]) & set(new["customer_id"])
    orders, new_orders = pd.read_csv(tmp_path / "orders.csv"), pd.read_csv(tmp_path / "orders_new.csv")
    assert set(orders["customer_id"]) <= set(crm["customer_id"])
    assert set(new_orders["customer_id"]) <= set(new["customer_id"])
    assert len(new_orders) > 0
    policy = parse_policy((tmp_path / "policy.yaml").read_text())
    assert policy.refresh is not None
    assert policy.refresh.tables == frozenset({"brand.users", "brand.conversions"})


def test_two_platforms_write_each_members_files_and_no_policy(tmp_path):
    r = CliRunner().invoke(app, ["demo-data", str(tmp_path), "--platforms", "2", "--brand-users", "300"])
    assert r.exit_code == 0, r.output
    for name in ("crm.csv", "orders.csv", "jd_users.csv", "jd_exposures.csv", "tencent_users.csv",
                 "tencent_exposures.csv"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0, name
    assert len(pd.read_csv(tmp_path / "crm.csv")) == 300
    assert not (tmp_path / "policy.yaml").exists()  # each member drafts its side: policy init, then merge
    r = CliRunner().invoke(app, ["demo-data", str(tmp_path / "x"), "--platforms", "2", "--shared", "10"])
    assert r.exit_code == 2
    assert "--shared" in r.output
