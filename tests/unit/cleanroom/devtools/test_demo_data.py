"""`cleanroom demo-data` practice files for the README walkthrough: a refresh's new customers, a three-member room."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from cleanroom.cli import app
from cleanroom.devtools import synthetic, synthetic_platforms
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


def test_each_members_match_arguments_name_columns_of_its_own_files():
    """Both synthetic worlds: the key, identifier and attribute columns each member passes to `match()` are columns
    of the users it passes, and its events are non-empty tables (what `match()` would refuse otherwise)."""
    worlds = [
        synthetic.match_arguments(
            synthetic.generate(synthetic.SyntheticConfig(brand_users=300, platform_users=400, shared=100))
        ),
        synthetic_platforms.match_arguments(synthetic_platforms.generate(brand_users=300)),
    ]
    for arguments in worlds:
        for member, kw in arguments.items():
            users = kw["users"]
            assert isinstance(users, pd.DataFrame)
            wanted = {kw["key"], *kw["identifiers"].values(), *kw["attributes"]}
            assert wanted <= set(users.columns), (member, wanted - set(users.columns))
            assert set(kw["identifiers"]) == {"email", "phone"}, member
            assert kw["events"], member
            assert all(isinstance(t, pd.DataFrame) and len(t) for t in kw["events"].values()), member
